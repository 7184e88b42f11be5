"""Shared downstream assets for the fine-tuning and notebook tests: two ingested synthetic corpora and a
tiny backbone pretrained and registered on the first, built once per stack."""

from __future__ import annotations

import uuid
from pathlib import Path

import helpers_shards

EXPERIMENT = "test-finetune"
ARCH = "resnet10t"
SIZE = 64
SECRET = b"test-secret-finetune-0123456789"


_ASSETS: dict[str, dict[str, str]] = {}


def assets(endpoint: str, workdir: str) -> dict[str, str]:
    """Datasets and a registered backbone, built once per stack (keyed by its S3 endpoint; the notebook
    test reuses them)."""
    if endpoint not in _ASSETS:
        _ASSETS[endpoint] = build_assets(workdir)
    return _ASSETS[endpoint]


def build_assets(workdir: str) -> dict[str, str]:
    """synthesize -> ingest (64 px) both corpora; pretrain + register a tiny backbone on the pretrain one."""
    from radimagenet.config import load_config
    from radimagenet.ingest import IngestConfig, ingest
    from radimagenet.ops.synth import synthesize
    from radimagenet.tasks.pretrain import PretrainConfig, pretrain

    root, prefix = Path(workdir), f"s3://radimagenet/tests/finetune/{uuid.uuid4().hex[:8]}"
    helpers_shards.ensure_bucket(prefix)
    uris = {}
    for name, images, seed, task, split in (("pretrain", 400, 0, "pretrain", (0.8, 0.1, 0.1)),
                                            ("downstream", 360, 1, "downstream", (0.6, 0.2, 0.2))):
        synthesize(root / name, images=images, seed=seed, task=task)
        cfg = IngestConfig(source=str(root / name), labels=str(root / name / "labels.csv"), out=f"{prefix}/{name}",
                           image_size=SIZE, shard_size=48 * 1024, workers=1, split_fractions=split)
        ingest(cfg, SECRET, progress=False)
        uris[name] = f"{prefix}/{name}"
    name = f"test-ft-{uuid.uuid4().hex[:6]}"
    result = pretrain(load_config(PretrainConfig, None, [
        f"data.manifest={uris['pretrain']}", f"model.arch={ARCH}", "data.num_workers=0", "train.epochs=8",
        "train.batch_size=32", "train.lr=0.003", "train.optimizer=adamw", "train.weight_decay=0.01",
        "train.warmup_epochs=0.5", "train.log_every=5", "scaling.num_workers=1", f"tracking.experiment={EXPERIMENT}-pre",
        f"tracking.run_name={name}", f"registry.name={name}", f"checkpoint.storage_path={root / 'ckpt'}"]),
        in_process=True)
    print(f"\n[assets] pretrained {name}: {result.metrics}")
    return {**uris, "backbone": f"{name}@candidate", "pretrain_val_accuracy": str(result.metrics["val/accuracy"])}


def crash_ingest_at_chunk(monkeypatch, n: int) -> None:
    """Make the ingest driver's ``n``-th chunk raise RuntimeError("simulated crash"): an interrupted
    ingest, for resume tests (undo with ``monkeypatch.undo()`` or let the test end)."""
    import radimagenet.ingest.run as run_mod

    real, calls = run_mod.process_rows, {"n": 0}

    def crashing(rows, ctx):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        return real(rows, ctx)

    monkeypatch.setattr(run_mod, "process_rows", crashing)
