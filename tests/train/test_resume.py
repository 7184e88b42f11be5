"""Mid-epoch checkpoints and exact resume, in-process (no servers): the same weights as an uninterrupted run,
every sample of an epoch once (its count and key digest), short last batches and the checkpoint order."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from tests.train.test_engine import MANIFEST, Cfg, TinyTask, batches, train_cfg

from radimagenet.data.loader import Batch
from radimagenet.train import checkpoint
from radimagenet.train.context import local_context
from radimagenet.train.engine import fit
from radimagenet.train.resume import EpochProgress, combine, digest_text, key_digest


class Interrupted(RuntimeError):
    pass


@dataclass
class DropoutTask(TinyTask):
    """TinyTask with dropout (its draws must repeat on resume) that can fail at the n-th training batch."""

    fail_at: int = -1
    calls: int = 0

    def build_model(self):
        model, record = super().build_model()
        return torch.nn.Sequential(torch.nn.Dropout(0.5), *model), record

    def loss(self, outputs, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted(f"stopped at training batch {self.calls}")
        return super().loss(outputs, batch)


def data(sizes: list[int]) -> dict:
    train = [b for i, n in enumerate(sizes) for b in batches(1, n, 100 + i)]
    return {"train": train, "val": batches(2, 4, 1)}


def final_weights(tmp_path, name: str, fail_at: list[int], every: int = 2, epochs: int = 3) -> tuple[dict, str]:
    """Train (restarting after each interruption), returning the final weights and the checkpoint root."""
    root = str(tmp_path / name)
    cfg = Cfg(train_cfg(epochs=epochs, momentum=0.9))
    cfg.checkpoint.every_steps = every
    for n in [*fail_at, -1]:
        task = DropoutTask(select_metric=None, data=data([4, 4, 4, 4, 4, 3]), fail_at=n)
        try:
            fit(task, cfg, {"c": 1}, MANIFEST, local_context(cfg, root))
        except Interrupted:
            continue
        return task.finished[-1], root
    raise AssertionError("unreachable")


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_weights(tmp_path):
    whole, _ = final_weights(tmp_path, "whole", [])
    # interrupted in epoch 1 (after the step-4 checkpoint), then in epoch 2 and again right after a resume
    resumed, root = final_weights(tmp_path, "resumed", [5, 10, 2])
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    names = [p.rsplit("/", 1)[-1] for p in checkpoint.list_checkpoints(*_fs(root))]
    assert names[-1] == checkpoint.name(2)
    state = json.loads(open(f"{root}/{checkpoint.name(2)}/state.json").read())
    keys = [k for b in data([4, 4, 4, 4, 4, 3])["train"] for k in b.keys]
    assert state["metrics"]["data/epoch_samples"] == 23.0 and not state["mid_epoch"]
    assert state["progress"]["digest"] == digest_text(key_digest(keys)) and state["progress"]["samples"] == 23


def test_mid_epoch_checkpoints_record_the_position_and_sort_before_their_epoch_end(tmp_path):
    root = str(tmp_path / "ck")
    cfg = Cfg(train_cfg(epochs=1))
    cfg.checkpoint.every_steps = 2
    task = TinyTask(select_metric=None, data=data([4, 4, 4, 4, 4, 3]))
    fit(task, cfg, {}, MANIFEST, local_context(cfg, root))
    names = [p.rsplit("/", 1)[-1] for p in checkpoint.list_checkpoints(*_fs(root))]
    assert names == [checkpoint.mid_name(0, 2), checkpoint.mid_name(0, 4), checkpoint.name(0)]
    mid = json.loads(open(f"{root}/{names[1]}/state.json").read())
    assert mid["mid_epoch"] and mid["progress"]["position"] == 16 and mid["progress"]["samples"] == 16
    assert mid["progress"]["digest"] == digest_text(key_digest(k for b in task.data["train"][:4] for k in b.keys))
    assert sorted(["checkpoint_epoch-000001", "checkpoint_epoch-000001-step-000000012", "checkpoint_epoch-000000"],
                  key=checkpoint.order_key)[-1] == "checkpoint_epoch-000001"


def test_a_one_sample_or_empty_last_batch_trains_and_counts_only_its_samples(tmp_path):
    cfg = Cfg(train_cfg(epochs=1))
    task = TinyTask(select_metric=None, data={"train": batches(2, 4, 0) + batches(1, 1, 5) + [
        Batch(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), [])], "val": batches(1, 4, 1)})
    fit(task, cfg, {}, MANIFEST, local_context(cfg, str(tmp_path)))
    state = json.loads(open(f"{tmp_path}/{checkpoint.name(0)}/state.json").read())
    assert state["metrics"]["data/epoch_samples"] == 9.0 and state["progress"]["batches"] == 3


def test_digests_are_order_independent_and_see_repeats():
    keys = [f"k{i}" for i in range(100)]
    assert key_digest(keys) == key_digest(reversed(keys))
    assert key_digest(keys + ["k3"]) != key_digest(keys) and key_digest(keys[:-1]) != key_digest(keys)
    parts = [EpochProgress(0, 0, 50, key_digest(keys[:50]), 1.0, 2), EpochProgress(0, 0, 50, key_digest(keys[50:]), 2.0, 2)]
    total = combine(parts, 100)
    assert (total.samples, total.digest, total.loss_sum, total.batches) == (100, key_digest(keys), 3.0, 4)
    assert EpochProgress.from_dict(total.to_dict()) == total


def test_every_steps_must_not_be_negative():
    from radimagenet.config import load_config
    from radimagenet.errors import ConfigError
    from radimagenet.tasks.pretrain import PretrainConfig, validate

    cfg = load_config(PretrainConfig, None, ["checkpoint.every_steps=-1", "data.manifest=s3://b/d"])
    with pytest.raises(ConfigError, match="checkpoint.every_steps"):
        validate(cfg, need_data=False)


def _fs(root: str):
    from radimagenet.io.storage import arrow_filesystem

    return arrow_filesystem(root)


def test_a_short_accumulated_step_weighs_every_sample_the_same(tmp_path):
    """accum_steps=2 over batches of 4 and 2 (the epoch's short last step) moves the weights as one batch of
    the 6 samples does: each sample weighs 1/6, not 1/8 and 1/4."""
    from radimagenet.train.engine import train_one_epoch
    from radimagenet.train.optim import build_scheduler, optimizer_steps

    a, b = batches(1, 4, 3)[0], batches(1, 2, 4)[0]
    joined = Batch(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.keys + b.keys)
    task = TinyTask(select_metric=None)

    def run(accum, data):
        cfg = Cfg(train_cfg(epochs=1, accum_steps=accum))
        torch.manual_seed(0)
        model, _ = task.build_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        scheduler = build_scheduler(optimizer, cfg.train, optimizer_steps(len(data), accum))
        train_one_epoch(model, task, data, optimizer, scheduler, local_context(cfg, str(tmp_path)), cfg.train, 0, 0,
                        lambda m, s: None)
        return model.state_dict()

    accumulated, whole = run(2, [a, b]), run(1, [joined])
    for key, value in whole.items():
        assert torch.allclose(value, accumulated[key], atol=1e-6), key


@dataclass
class ProgressTask(DropoutTask):
    """DropoutTask recording the ``progress`` its ``after_step`` gets (a DINO teacher's momentum follows it)."""

    seen: list | None = None

    def after_step(self, progress: float) -> None:
        self.seen.append(progress)


def test_after_step_progress_continues_across_a_mid_epoch_resume(tmp_path):
    cfg = Cfg(train_cfg(epochs=2, momentum=0.9))
    cfg.checkpoint.every_steps = 2

    def run(name: str, fail_at: list[int]) -> list[list[float]]:
        runs = []
        for n in [*fail_at, -1]:
            runs.append([])
            task = ProgressTask(select_metric=None, data=data([4, 4, 4, 4, 4, 3]), fail_at=n, seen=runs[-1])
            try:
                fit(task, cfg, {"c": 1}, MANIFEST, local_context(cfg, str(tmp_path / name)))
            except Interrupted:
                continue
        return runs

    [whole] = run("whole", [])
    assert whole == pytest.approx([(i + 1) / 12 for i in range(12)])  # 2 epochs of 6 steps
    first, resumed = run("resumed", [5])  # stopped in the 5th step of epoch 1: resumes after the step-4 checkpoint
    assert first == whole[:4] and resumed == pytest.approx(whole[4:])
