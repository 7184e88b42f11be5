"""The fine-tuning leakage check: does the test split hold images or patients the backbone was pretrained on?

    tags = check_overlap(cfg, manifest, tags)   # {"radimagenet.overlap": "images_exact=0 images_near=2 patients=1"}

A registered backbone names its pretraining dataset (the version's ``dataset_uri`` tag, else its source
run's dataset). Its ``train`` and ``val`` splits (what pretraining reads) are compared with the
fine-tuning ``test`` split by :func:`radimagenet.dataset.overlap.overlap`. ``data.overlap=warn`` (the
default) prints a warning and tags the run; ``error`` refuses to start; ``off`` skips the check.
"""

from __future__ import annotations

import sys
from typing import Any

from radimagenet.dataset.format import load_manifest
from radimagenet.dataset.overlap import overlap, overlap_tag
from radimagenet.errors import ConfigError, StorageError
from radimagenet.io import tracking

OVERLAP_TAG = "radimagenet.overlap"
DATASET_TAG = "radimagenet.backbone_dataset_uri"
PRETRAIN_SPLITS = ("train", "val")  # train: gradients; val: the choice of epoch
TEST_SPLIT = "test"


def pretraining_dataset(uri: str, model_version: Any) -> str:
    """The pretraining dataset of a registered backbone version ("" when nothing records it): the
    version's ``dataset_uri`` tag, else the ``radimagenet.dataset_uri`` tag or ``data.manifest`` param of
    the run that registered it (versions registered before the tag existed)."""
    if model_version.tags.get("dataset_uri"):
        return str(model_version.tags["dataset_uri"])
    try:
        run = tracking.get_run(uri, model_version.run_id)
    except Exception:  # noqa: BLE001 - a deleted run: nothing records the dataset
        return ""
    return str(run.data.tags.get("radimagenet.dataset_uri") or run.data.params.get("data.manifest") or "")


def check_overlap(cfg: Any, manifest: dict, tags: dict[str, str]) -> dict[str, str]:
    """Compare the backbone's pretraining data with ``manifest``'s test split (``tags`` are the run's
    tags so far: the backbone and its dataset); returns the tag to add, warns, or raises ConfigError."""
    mode = cfg.data.overlap
    if cfg.init != "backbone" or mode == "off":
        return {}
    backbone, source = tags.get("radimagenet.backbone", cfg.backbone), tags.get(DATASET_TAG, "")
    try:
        if not source:
            raise ConfigError("the backbone records no pretraining dataset (no dataset_uri tag, no source run)")
        pretrain = load_manifest(source)
        splits = [s for s in PRETRAIN_SPLITS if pretrain["splits"].get(s, {}).get("shards")]
        n = sum(pretrain["splits"][s].get("samples", 0) for s in splits or pretrain["splits"])
        print(f"[radimagenet] comparing the test split with the {n} pretraining images of backbone {backbone} "
              f"(fingerprints are cached beside each dataset; data.overlap=off skips this)", file=sys.stderr,
              flush=True)
        report = overlap(pretrain, manifest, splits_a=splits or None, splits_b=[TEST_SPLIT], examples=3)
    except (ConfigError, StorageError) as exc:
        if mode == "error":
            raise ConfigError(f"data.overlap=error: cannot compare backbone {backbone}'s pretraining data with the "
                              f"test split of {cfg.data.manifest}: {exc}; set data.overlap=warn (or off) to go on "
                              "without the check") from exc
        _warn(f"backbone {backbone}'s pretraining data was not compared with the test split: {exc}")
        return {OVERLAP_TAG: f"not checked: {exc}"[:5000]}
    line = overlap_tag(report)
    if report["images_exact"] or report["images_near"] or report["patients"]:
        what = (f"the test split of {cfg.data.manifest} shares data with backbone {backbone}'s pretraining dataset "
                f"{source} ({'+'.join(report['a']['splits'])}): {line} "
                f"(`radimagenet dataset overlap {source} {cfg.data.manifest} --split-b test` lists them)")
        if mode == "error":
            raise ConfigError(f"data.overlap=error: {what}; fine-tune on a test split without them, or set "
                              "data.overlap=warn to run anyway")
        _warn(what)
    return {OVERLAP_TAG: line}


def _warn(text: str) -> None:
    print(f"[radimagenet] warning: {text}", file=sys.stderr, flush=True)
