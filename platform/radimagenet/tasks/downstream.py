"""What the downstream tasks (classification, segmentation) share: the initial model (a registered
backbone, scratch or ImageNet), batches preprocessed as the model's record says, and the files of the
final report (per-sample predictions, the report JSON, the fine-tuned weights) logged to the run."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from radimagenet.dataset.format import LABEL_SEP, label_names
from radimagenet.errors import ConfigError
from radimagenet.io import tracking
from radimagenet.tasks.finetune_config import FinetuneConfig, TaskSpec

PREDICTIONS_FILE = "predictions/test.csv"
REPORT_FILE = "report/test_report.json"
MODEL_DIR = "model"  # the fine-tuned weights and record among the run's artifacts (eval.log_model)


@dataclass
class DownstreamTask:
    """What the classification and segmentation tasks share: their config, dataset, task spec, the
    preprocessing record of the model they build, epoch selection by validation loss, batches
    preprocessed as that record says, and frozen normalisation layers kept in inference mode."""

    cfg: FinetuneConfig
    manifest: dict
    spec: TaskSpec
    record: Any = None  # set by build_model

    @property
    def select_metric(self) -> str:
        """The validation metric that picks the kept epoch (``train.monitor``)."""
        return self.cfg.train.monitor

    @property
    def patience(self) -> int:
        """Epochs without a better ``train.monitor`` before stopping (``train.patience``; 0: never)."""
        return self.cfg.train.patience
    masks: ClassVar[bool] = False  # batches carry the lesion masks
    _subset: Any = None  # the label_fraction share, computed on first use

    def loader(self, split: str, ctx: Any, *, epoch: int = 0, train: bool = False, start: int = 0) -> Any:
        keep = self.train_subset().keys if split == "train" and self.train_subset() else None
        return loader(self.record, self.cfg, self.manifest, split, ctx, train=train, epoch=epoch, masks=self.masks,
                      keep=keep, start=start)

    def train_subset(self) -> Any:
        """The ``data.label_fraction`` share of the training split (None: all of it), chosen once."""
        from radimagenet.data.subset import label_subset

        if self.cfg.data.label_fraction >= 1:
            return None
        if self._subset is None:
            self._subset = label_subset(self.manifest, "train", self.cfg.data.label_fraction, self.cfg.train.seed)
        return self._subset

    def data_metrics(self) -> dict[str, float]:
        """The training data actually used: ``train/n_images``, ``train/n_patients`` (after ``label_fraction``)."""
        sub = self.train_subset()
        if sub is not None:
            return {"train/n_images": float(sub.images), "train/n_patients": float(sub.patients)}
        train = self.manifest["splits"].get("train", {})
        return {"train/n_images": float(train.get("samples", 0)), "train/n_patients": float(train.get("patients", 0))}

    def train_class_counts(self) -> list[int]:
        """Training images per label id (after ``label_fraction``), for ``train.class_weights``."""
        sub = self.train_subset()
        if sub is not None:
            return list(sub.class_counts)
        counts = self.manifest["splits"].get("train", {}).get("classes", {})
        return [int(counts.get(c, 0)) for c in self.manifest["classes"]]

    def train_mode(self, model: Any) -> None:
        from radimagenet.models.freeze import set_train_mode

        set_train_mode(model)


def build_classifier(cfg: FinetuneConfig, manifest: dict, num_classes: int) -> tuple[Any, Any]:
    """``(model, record)`` with a fresh ``num_classes`` head (dropout ``model.drop_rate``, global avg pool)."""
    from radimagenet.models import registry
    from radimagenet.models.factory import create_imagenet_model, create_model, imagenet_weights_file
    from radimagenet.models.record import attach_record, make_record

    if cfg.init == "backbone":
        return registry.load(cfg.resolved_backbone or cfg.backbone, num_classes, tracking_uri=cfg.tracking.uri,
                             drop_rate=cfg.model.drop_rate)
    if cfg.init == "scratch":
        model = create_model(cfg.model.arch, num_classes, cfg.model.in_chans, cfg.model.drop_rate,
                             img_size=cfg.data.image_size or int(manifest["image_size"]))
        record = make_record(cfg.model.arch, manifest, in_chans=cfg.model.in_chans, image_size=cfg.data.image_size,
                             mean=cfg.data.mean or (0.5,), std=cfg.data.std or (0.25,))
        return attach_record(model, record), record
    path = imagenet_weights_file(cfg.model.arch, cfg.model.weights_file)
    model = create_imagenet_model(cfg.model.arch, num_classes, cfg.model.drop_rate, path)
    record = make_record(cfg.model.arch, manifest, in_chans=3, image_size=cfg.data.image_size,
                         mean=cfg.data.mean or tuple(model.pretrained_cfg["mean"]),
                         std=cfg.data.std or tuple(model.pretrained_cfg["std"]))
    record.source = {"init": "imagenet", "weights_file": cfg.model.weights_file or path}  # s3://: not our copy
    return attach_record(model, record), record


def loader(model_record: Any, cfg: FinetuneConfig, manifest: dict, split: str, ctx: Any, *, train: bool,
           epoch: int = 0, num_workers: int | None = None, masks: bool = False, keep: Any = None,
           start: int = 0) -> Any:
    """The split's batches, preprocessed as the model's record says (channels, mean, std); training from
    global position ``start``, every sample once (the last batch may be short)."""
    from radimagenet.data.loader import make_loader

    return make_loader(manifest, split, batch_size=cfg.train.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                       epoch=epoch, seed=cfg.train.seed, train=train,
                       num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                       image_size=cfg.data.image_size, channels=model_record.in_chans, mean=tuple(model_record.mean),
                       std=tuple(model_record.std), shuffle_buffer=cfg.data.shuffle_buffer, with_meta=not train,
                       with_masks=masks, keep=keep, start=start, drop_last=False)


def test_batches(record: Any, cfg: FinetuneConfig, manifest: dict) -> Iterator[Any]:
    """The whole test split in this process (rank 0's artifacts), with masks when the dataset has them."""
    from radimagenet.train.context import Context

    yield from loader(record, cfg, manifest, "test", Context(), train=False, num_workers=0,
                      masks=bool(manifest.get("has_masks")))


def patients_of(out: Any) -> tuple[np.ndarray, int]:
    """``(patient [N], missing)``: each sample's patient pseudonym (the ``patient`` of its ``.json``, which
    the ingest always writes); a sample without one counts as its own patient (its key), ``missing`` of them."""
    patients = np.asarray(out.arrays.get("patient", np.full(len(out), "")), dtype=object)
    lost = patients == ""
    patients[lost] = np.asarray(out.keys, dtype=object)[lost]
    return patients.astype(str), int(lost.sum())


def write_predictions(out: Any, spec: TaskSpec, path: str) -> None:
    """Per-sample test outputs sorted by key (an engine ``Outputs``), enough to recompute every test
    statistic: classification ``key, patient, label`` (class name; multi-label: the image's class names
    joined by ``|``), ``p_<class>`` per class (softmax; multi-label: each label's sigmoid) (the input
    of ``radimagenet sweep``'s tests); segmentation ``key, label_id, dice, has_lesion``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = out.arrays
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if spec.task == "segmentation":
            w.writerow(["key", "label_id", "dice", "has_lesion"])
            w.writerows([k, int(y), repr(float(d)), int(les > 0)]
                        for k, y, d, les in zip(out.keys, a["label"], a["dice"], a["lesion"], strict=True))
            return
        w.writerow(["key", "patient", "label"] + [f"p_{c}" for c in spec.classes])
        w.writerows([k, pt, _label_cell(y, spec.classes), *(repr(float(p)) for p in row)]
                    for k, pt, y, row in zip(out.keys, patients_of(out)[0], a["label"], a["probs"], strict=True))


def _label_cell(y: Any, classes: tuple[str, ...]) -> str:
    """A test image's ``label`` cell: its class name, or (multi-hot ``y``) its class names joined by ``|``."""
    if np.ndim(y) == 0:
        return classes[int(y)]
    return LABEL_SEP.join(classes[k] for k in np.flatnonzero(np.asarray(y) > 0.5))


@dataclass
class Predictions:
    """A classification run's ``predictions/test.csv``: one row per test image, sorted by key."""

    keys: list[str]
    patients: np.ndarray  # [N] pseudonyms
    labels: np.ndarray  # [N] class ids (index into classes); multi-label: multi-hot [N, K]
    probs: np.ndarray  # [N, K]
    classes: list[str]


def read_predictions(text: str, multi_label: bool = False) -> Predictions:
    """The :class:`Predictions` of a classification ``predictions/test.csv`` text (``multi_label``: a
    ``label`` cell names several classes joined by ``|``, read as a multi-hot row)."""
    rows = list(csv.reader(io.StringIO(text)))
    head, body = rows[0] if rows else [], rows[1:]
    if head[:3] != ["key", "patient", "label"] or not all(h.startswith("p_") for h in head[3:]):
        raise ConfigError(f"{PREDICTIONS_FILE}: expected columns key, patient, label, p_<class>...; got {head[:4]}")
    classes = [h[2:] for h in head[3:]]
    ids = {c: i for i, c in enumerate(classes)}
    names = [label_names(r[2], multi_label) if r[2] else [] for r in body]
    unknown = sorted({n for row in names for n in row} - set(ids))
    if unknown or (not multi_label and any(not row for row in names)):
        raise ConfigError(f"{PREDICTIONS_FILE}: labels {unknown[:5] or ['']} are not among the p_<class> columns")
    if multi_label:
        labels = np.zeros((len(body), len(classes)), np.int64)
        for i, row in enumerate(names):
            labels[i, [ids[n] for n in row]] = 1
    else:
        labels = np.asarray([ids[row[0]] for row in names], np.int64)
    return Predictions([r[0] for r in body], np.asarray([r[1] for r in body], dtype=str), labels,
                       np.asarray([[float(x) for x in r[3:]] for r in body], np.float64).reshape(len(body), -1),
                       classes)


def write_model(model: Any, record: Any, spec: TaskSpec, manifest: dict, image_size: int, directory: str) -> None:
    """The fine-tuned weights (safetensors) and their record: the downstream classes, the task, the
    fine-tuning dataset's digest and decode settings (what ``predict`` decodes new files with), and
    where the weights started (``source.init_record``: the initial record's source)."""
    from radimagenet.models.record import decode_settings
    from radimagenet.models.weights import MODEL_FILE, save_weights

    os.makedirs(directory, exist_ok=True)
    save_weights(os.path.join(directory, MODEL_FILE), model)
    rec = dataclasses.replace(record, classes=list(spec.classes), num_classes=len(spec.classes),
                              input_size=(record.in_chans, image_size, image_size), task=spec.task,
                              multi_label=spec.mode == "multilabel",
                              dataset_digest=str(manifest.get("digest", "")), ingest=decode_settings(manifest),
                              metrics={})
    rec.source = {"finetuned_for": spec.task, "init_record": dict(record.source)}
    with open(os.path.join(directory, tracking.RECORD_FILE), "w") as f:
        f.write(rec.to_json())


@contextlib.contextmanager
def report_dir(ctx: Any) -> Iterator[str | None]:
    """A temporary folder for rank 0's report files (None on other ranks), deleted afterwards."""
    out_dir = tempfile.mkdtemp(prefix="radimagenet-ft-report-") if ctx.is_main else None
    try:
        yield out_dir
    finally:
        if out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)


def save_report(cfg: FinetuneConfig, manifest: dict, model: Any, record: Any, spec: TaskSpec, test: Any,
                metrics: dict[str, float], out_dir: str) -> None:
    """Predictions, the report JSON and (``eval.log_model``) the weights into ``out_dir``, then all of
    ``out_dir`` as the run's artifacts."""
    write_predictions(test, spec, os.path.join(out_dir, PREDICTIONS_FILE))
    os.makedirs(os.path.dirname(os.path.join(out_dir, REPORT_FILE)), exist_ok=True)
    with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    if cfg.eval.log_model:
        write_model(model, record, spec, manifest, int(cfg.data.image_size or manifest["image_size"]),
                    os.path.join(out_dir, MODEL_DIR))
    if cfg.tracking.run_id:
        tracking.log_artifacts(tracking.tracking_uri(cfg.tracking.uri), cfg.tracking.run_id, out_dir)
