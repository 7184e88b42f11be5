"""The training engine without servers: a tiny task over in-memory batches, checkpoints in tmp_path."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from radimagenet.data.loader import Batch
from radimagenet.errors import ConfigError
from radimagenet.models.record import make_record
from radimagenet.train.config import CheckpointSection, ScalingSection, TrackingSection, TrainSection
from radimagenet.train.context import local_context
from radimagenet.train.engine import Outputs, fit, predict
from radimagenet.train.optim import build_optimizer, lr_factor, optimizer_steps

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "radimagenet"
MANIFEST = {"classes": ["a", "b"], "image_size": 8, "digest": "sha256:test"}


def batches(n: int, size: int, seed: int) -> list[Batch]:
    """Linearly separable 2-class batches: class 1 images are brighter."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n):
        labels = torch.randint(0, 2, (size,), generator=g)
        images = torch.randn(size, 1, 8, 8, generator=g) * 0.1 + labels.float().view(-1, 1, 1, 1)
        out.append(Batch(images, labels, [f"s{seed}-{b}-{i}" for i in range(size)]))
    return out


@dataclass
class TinyTask:
    """A linear classifier on 8x8 grey images: the five things a task says, nothing else."""

    select_metric: str | None = "val/loss"
    patience: int = 0
    name: str = "tiny"
    data: dict = field(default_factory=lambda: {"train": batches(6, 4, 0), "val": batches(2, 4, 1)})
    finished: list = field(default_factory=list)

    def build_model(self):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        return model, make_record("tiny", MANIFEST, in_chans=1, image_size=8)

    def loader(self, split, ctx, *, epoch=0, train=False, start=0):
        out, seen = [], 0
        for b in self.data[split]:  # from global position start (one rank: a position counts samples)
            if seen >= start:
                out.append(b)
            seen += len(b)
        return out

    def data_metrics(self):
        return {"train/n_images": 24.0}

    def train_mode(self, model):
        model.train()

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs, batch.labels)

    def outputs(self, outputs, batch):
        loss = torch.nn.functional.cross_entropy(outputs, batch.labels, reduction="none")
        return {"loss": loss.numpy(), "label": batch.labels.numpy()}

    def metrics(self, split, out):
        return {f"{split}/loss": float(out.arrays["loss"].mean()), f"{split}/n_images": float(len(out))}

    def finish(self, model, record, ctx, selected):
        self.finished.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"test/done": 1.0} | selected


@dataclass
class Cfg:
    train: TrainSection
    tracking: TrackingSection = field(default_factory=lambda: TrackingSection(run_name="t"))
    scaling: ScalingSection = field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = field(default_factory=lambda: CheckpointSection(num_to_keep=5))


def train_cfg(**kw) -> TrainSection:
    base = {"epochs": 3, "batch_size": 4, "lr": 0.5, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
            "warmup_epochs": 0.0, "schedule": "constant", "label_smoothing": 0.0, "log_every": 1}
    return TrainSection(**(base | kw))


def test_fit_trains_checkpoints_and_keeps_the_best_epoch(tmp_path):
    task, cfg = TinyTask(), Cfg(train_cfg())
    ctx = local_context(cfg, str(tmp_path / "ckpt"))
    final = fit(task, cfg, {"c": 1}, MANIFEST, ctx)
    assert final["test/done"] == 1.0 and 1 <= final["best_epoch"] <= 3 and final["val/best_loss"] < 0.69
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [f"checkpoint_epoch-00000{i}" for i in range(3)]
    last = tmp_path / "ckpt" / "checkpoint_epoch-000002"
    assert {p.name for p in last.iterdir()} == {"model.safetensors", "best.safetensors", "train_state.pt", "state.json"}
    # a re-run with more epochs resumes after the last checkpoint, keeping step count and the best so far
    again = TinyTask()
    resumed = fit(again, Cfg(train_cfg(epochs=4)), {"c": 1}, MANIFEST, ctx)
    assert resumed["best_epoch"] >= final["best_epoch"] and resumed["val/best_loss"] <= final["val/best_loss"]
    assert (tmp_path / "ckpt" / "checkpoint_epoch-000003").is_dir()


@dataclass
class ScriptedTask(TinyTask):
    """TinyTask whose validation reports ``scores[epoch]`` under the selection metric."""

    scores: tuple = ()
    calls: list = field(default_factory=list)

    def metrics(self, split, out):
        self.calls.append(split)
        name = self.select_metric.split("/", 1)[1]
        return {"val/loss": 1.0, f"val/{name}": float(self.scores[len(self.calls) - 1])}


def test_early_stopping_after_patience_epochs_and_a_resume_does_not_train_on(tmp_path):
    scores = (0.5, 0.4, 0.45, 0.6, 0.7, 0.1, 0.1)
    task, cfg = ScriptedTask(scores=scores, patience=2), Cfg(train_cfg(epochs=7))
    ctx = local_context(cfg, str(tmp_path / "ckpt"))
    final = fit(task, cfg, {}, MANIFEST, ctx)
    assert len(task.calls) == 4  # epochs 1-4: no better loss in epochs 3 and 4
    assert final["best_epoch"] == 2 and final["val/best_loss"] == 0.4 and final["early_stop_epoch"] == 4
    again = ScriptedTask(scores=scores, patience=2)
    assert fit(again, cfg, {}, MANIFEST, ctx)["early_stop_epoch"] == 4 and again.calls == []


def test_a_higher_is_better_monitor_keeps_its_highest_epoch(tmp_path):
    task, cfg = ScriptedTask(select_metric="val/auc", scores=(0.6, 0.8, 0.7)), Cfg(train_cfg(epochs=3))
    final = fit(task, cfg, {}, MANIFEST, local_context(cfg, str(tmp_path / "c")))
    assert final["best_epoch"] == 2 and final["val/best_auc"] == 0.8 and "early_stop_epoch" not in final


def test_a_monitor_the_task_does_not_report_is_a_clear_error(tmp_path):
    task, cfg = TinyTask(select_metric="val/auc"), Cfg(train_cfg(epochs=1))
    with pytest.raises(ConfigError, match=r"train.monitor=val/auc .* val/loss"):
        fit(task, cfg, {}, MANIFEST, local_context(cfg, str(tmp_path / "c")))


def test_no_selection_returns_the_last_epoch_and_gradient_accumulation_matches(tmp_path):
    """accum_steps=2 over batches of 4 takes the same SGD steps as batches of 8 (mean losses)."""
    big = [Batch(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.keys + b.keys)
           for a, b in zip(batches(6, 4, 0)[::2], batches(6, 4, 0)[1::2], strict=True)]
    results = []
    for accum, train in ((2, batches(6, 4, 0)), (1, big)):
        task = TinyTask(select_metric=None, data={"train": train, "val": batches(2, 4, 1)})
        task.finish = lambda model, record, ctx, selected, t=task: t.finished.append(model.state_dict()) or {}
        cfg = Cfg(train_cfg(epochs=1, accum_steps=accum))
        torch.manual_seed(0)
        metrics = fit(task, cfg, {}, MANIFEST, local_context(cfg, str(tmp_path / f"a{accum}")))
        assert metrics["epoch"] == 1 and metrics["step"] == 3 and "best_epoch" not in metrics
        results.append(task.finished[0])
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], atol=1e-6), key


def test_predict_gathers_every_sample_once_sorted_by_key(tmp_path):
    task = TinyTask()
    model, _ = task.build_model()
    out = predict(model, task, "val", local_context(Cfg(train_cfg()), str(tmp_path)))
    assert isinstance(out, Outputs) and len(out) == 8 and out.keys == sorted(out.keys)
    assert set(out.arrays) == {"loss", "label"} and out.arrays["loss"].shape == (8,)


def test_schedule_warmup_cosine_constant_and_steps():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert lr_factor(55, 10, 100, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(90, 10, 100, schedule="constant") == 1.0 and lr_factor(4, 10, 100, schedule="constant") == 0.5
    assert optimizer_steps(7, 2) == 4 and optimizer_steps(8, 1) == 8


def test_one_backward_call_site_in_the_package():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
                calls.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert len(calls) == 1 and calls[0].startswith("train/engine.py"), calls


def test_accumulation_weighs_a_short_last_step_like_a_full_one(tmp_path):
    """5 batches with accum_steps=2: the epoch's last optimizer step has one batch, and it must move the
    weights as that batch alone does (its loss divided by 1, not by 2)."""
    from radimagenet.train.engine import train_one_epoch
    from radimagenet.train.optim import build_scheduler

    train, task = batches(5, 4, 0), TinyTask(select_metric=None)
    cfg2, cfg1 = Cfg(train_cfg(epochs=1, accum_steps=2)), Cfg(train_cfg(epochs=1, accum_steps=1))
    ctx = local_context(cfg2, str(tmp_path))

    def run(cfg, model, data):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # no momentum: steps are stateless
        scheduler = build_scheduler(optimizer, cfg.train, optimizer_steps(len(data), cfg.train.accum_steps))
        return train_one_epoch(model, task, data, optimizer, scheduler, ctx, cfg.train, 0, 0, lambda m, s: None)[0]

    torch.manual_seed(0)
    one_epoch, _ = task.build_model()
    torch.manual_seed(0)
    in_parts, _ = task.build_model()
    assert run(cfg2, one_epoch, train) == 3
    run(cfg2, in_parts, train[:4])
    run(cfg1, in_parts, train[4:])
    for key, value in one_epoch.state_dict().items():
        assert torch.allclose(value, in_parts.state_dict()[key], atol=1e-6), key


def test_optimizer_groups_follow_the_config():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    pre = build_optimizer(model, TrainSection())
    assert [g["weight_decay"] for g in pre.param_groups] == [1e-4, 0.0] and pre.defaults["nesterov"]
    fine = build_optimizer(model, TrainSection(optimizer="adam", weight_decay=0.0, decay_norm_bias=True))
    assert len(fine.param_groups) == 1 and isinstance(fine, torch.optim.Adam)
    plain = build_optimizer(model, TrainSection(nesterov=False, momentum=0.0))
    assert not plain.defaults["nesterov"]


def test_state_json_is_strict_json_and_old_finetune_checkpoints_resume(tmp_path):
    task, cfg = TinyTask(select_metric=None), Cfg(train_cfg(epochs=1))
    ctx = local_context(cfg, str(tmp_path / "ckpt"))
    fit(task, cfg, {}, MANIFEST, ctx)
    state_file = tmp_path / "ckpt" / "checkpoint_epoch-000000" / "state.json"
    state = json.loads(state_file.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert state["best"] is None and all(isinstance(v, float) for v in state["metrics"].values())
    # a fine-tuning checkpoint written before the engine kept its best epoch among the metrics
    state.pop("best")
    state["metrics"] |= {"best_epoch": 1.0, "val/best_loss": 0.25}
    state_file.write_text(json.dumps(state))
    resumed = fit(TinyTask(), Cfg(train_cfg(epochs=2)), {}, MANIFEST, ctx)
    assert resumed["best_epoch"] in (1, 2) and resumed["val/best_loss"] <= 0.25
