"""The record that travels with every model (our timm ``pretrained_cfg``): architecture, channels,
input size, normalisation, interpolation, class names, dataset digest, the task (classification or
segmentation) and how the dataset's files were decoded (``ingest``), so nobody re-types preprocessing
constants. The preprocessing itself is :func:`radimagenet.data.transforms.preprocess`; ``predict``
decodes a file as the ingest did (:func:`decode_settings`), then preprocesses it.

    record = make_record("resnet50", manifest, image_size=224)
    BackboneRecord.from_dict(json.loads(record.to_json())) == record
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from radimagenet.errors import ConfigError

RECORD_FORMAT = "radimagenet-backbone/1"
TASKS = ("classification", "segmentation")
# what of the dataset's ingest settings a new file needs to be decoded as the training images were
DECODE_KEYS = ("image_size", "multiframe", "windows")


@dataclass
class BackboneRecord:
    """How to feed a backbone: everything needed to use the weights correctly.

    Pixel convention: grey uint8 -> float in [0, 1] -> resize (``interpolation``) to
    ``input_size[1:]`` -> replicate to ``in_chans`` channels -> ``(x - mean) / std`` per channel.
    ``task``: ``classification`` (a timm classifier over ``classes``) or ``segmentation`` (a U-Net on
    the ``arch`` encoder, one lesion-logit channel). ``multi_label``: a classifier whose outputs are
    independent labels (a sigmoid each), not one softmax over ``classes``. ``ingest``: the dataset's decode settings
    (``image_size``, ``multiframe``, ``windows``; empty in records made before they were kept).
    """

    arch: str
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    dataset_digest: str
    interpolation: str = "bilinear"
    grey_to_channels: str = "replicate"
    pixel_scale: str = "0-1"
    num_classes: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # run id, registry name/version
    versions: dict[str, str] = field(default_factory=dict)
    task: str = "classification"
    ingest: dict[str, Any] = field(default_factory=dict)
    multi_label: bool = False
    objective: str = "supervised"  # how the backbone was pretrained: supervised | dino | mae (no head: num_classes 0)
    global_pool: str = ""  # timm pooling the backbone was built with ("": the architecture's default)
    format: str = RECORD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneRecord:
        if data.get("format") != RECORD_FORMAT:
            raise ConfigError(f"not a backbone record (format {data.get('format')!r}, expected {RECORD_FORMAT})")
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in data.items() if k in names}
        d["input_size"] = tuple(d["input_size"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        if d.get("task", "classification") not in TASKS:
            raise ConfigError(f"record task {d['task']!r} is not one of {TASKS}")
        return cls(**d)


def _versions() -> dict[str, str]:
    import timm
    import torch

    from radimagenet import __version__

    return {"radimagenet": __version__, "timm": timm.__version__, "torch": torch.__version__}


def channel_stats(values: tuple[float, ...] | list[float], in_chans: int, what: str) -> tuple[float, ...]:
    """Broadcast a one-value mean/std to ``in_chans`` channels (grey replicated)."""
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ConfigError(f"{what} has {len(values)} values, expected 1 or in_chans={in_chans}")
    return values


def decode_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The dataset's decode settings from its manifest (``image_size``, ``multiframe``, ``windows``)."""
    ingest = dict(manifest.get("ingest") or {})
    ingest.setdefault("image_size", manifest.get("image_size"))
    return {k: ingest[k] for k in DECODE_KEYS if ingest.get(k) is not None}


def make_record(
    arch: str,
    manifest: dict[str, Any],
    *,
    in_chans: int = 3,
    image_size: int | None = None,
    mean: tuple[float, ...] = (0.5,),
    std: tuple[float, ...] = (0.25,),
    interpolation: str = "bilinear",
) -> BackboneRecord:
    """The preprocessing record of a backbone trained on ``manifest``'s dataset."""
    size = int(image_size or manifest["image_size"])
    classes = list(manifest["classes"])
    return BackboneRecord(
        arch=arch,
        in_chans=in_chans,
        input_size=(in_chans, size, size),
        mean=channel_stats(mean, in_chans, "mean"),
        std=channel_stats(std, in_chans, "std"),
        classes=classes,
        num_classes=len(classes),
        dataset_digest=str(manifest.get("digest", "")),
        interpolation=interpolation,
        versions=_versions(),
        ingest=decode_settings(manifest),
    )


def attach_record(model: Any, record: BackboneRecord) -> Any:
    """Attach the record as ``model.radimagenet_cfg`` (and return the model)."""
    model.radimagenet_cfg = record
    return model
