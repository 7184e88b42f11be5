"""Backbones by name (timm) and the record that travels with every model.

    model = create_model("resnet50", num_classes=len(manifest["classes"]))
    record = make_record("resnet50", manifest, image_size=224)
    x = preprocess(grey_uint8_batch, record)      # exactly what the model saw in pretraining

Every timm model has ``forward_features``/``forward_head``/``reset_classifier``; we keep that uniform
interface and never download weights (pretrained weights come from our registry, see
:mod:`radimagenet.models.registry`). The :class:`BackboneRecord` is our ``pretrained_cfg``: architecture,
channels, input size, normalisation, interpolation, class names and dataset digest, so nobody re-types
preprocessing constants.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from radimagenet.errors import ConfigError

RECORD_FORMAT = "radimagenet-backbone/1"

# The four RadImageNet architectures; any other timm model name is accepted too.
ARCHITECTURES = ("resnet50", "densenet121", "inception_v3", "inception_resnet_v2")


@dataclass
class BackboneRecord:
    """How to feed a backbone: everything needed to use the weights correctly.

    Pixel convention: grey uint8 -> float in [0, 1] -> resize (``interpolation``) to
    ``input_size[1:]`` -> replicate to ``in_chans`` channels -> ``(x - mean) / std`` per channel.
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
        return cls(**d)


def _versions() -> dict[str, str]:
    import timm
    import torch

    from radimagenet import __version__

    return {"radimagenet": __version__, "timm": timm.__version__, "torch": torch.__version__}


def check_arch(arch: str) -> str:
    """The timm name of ``arch``; a clear error for an unknown one."""
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown architecture {arch!r} (not a timm model); similar: {close}")
    return arch


def create_model(
    arch: str, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0, pretrained: bool = False
) -> Any:
    """A freshly initialised timm model. Weights are never downloaded: load ours with ``backbones.load``."""
    import timm

    if pretrained:
        raise ConfigError(
            "create_model never downloads weights; use radimagenet.models.registry.load('NAME@alias') for ours"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
    return timm.create_model(
        check_arch(arch), pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate
    )


def channel_stats(values: tuple[float, ...] | list[float], in_chans: int, what: str) -> tuple[float, ...]:
    """Broadcast a one-value mean/std to ``in_chans`` channels (grey replicated)."""
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ConfigError(f"{what} has {len(values)} values, expected 1 or in_chans={in_chans}")
    return values


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
    )


def preprocess(images: Any, record: BackboneRecord) -> Any:
    """Grey images (uint8 [B,H,W] or [H,W], or float in [0,1]) -> normalised float32 [B,C,S,S]."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected grey images [B,H,W] or [B,1,H,W], got shape {tuple(x.shape)}")
    size = tuple(record.input_size[1:])
    if tuple(x.shape[-2:]) != size:
        mode = record.interpolation if record.interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
        kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        x = F.interpolate(x, size=size, mode=mode, **kwargs)
    x = x.expand(-1, record.in_chans, -1, -1)
    mean = torch.tensor(record.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(record.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def attach_record(model: Any, record: BackboneRecord) -> Any:
    """Attach the record as ``model.radimagenet_cfg`` (and return the model)."""
    model.radimagenet_cfg = record
    return model


def modality_of(class_name: str) -> str:
    """``"CT/lung/nodule"`` -> ``"CT"`` (the modality is the first path component of a label)."""
    return class_name.split("/", 1)[0] if "/" in class_name else class_name
