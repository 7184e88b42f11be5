"""Backbones by name (timm): every timm model has ``forward_features``/``forward_head``/
``reset_classifier``; we keep that uniform interface and never download weights (pretrained weights
come from our registry, :mod:`radimagenet.models.registry`, or for ``init=imagenet`` from a local file).

    model = create_model("resnet50", num_classes=len(manifest["classes"]))
"""

from __future__ import annotations

import os
from typing import Any

from radimagenet.errors import ConfigError

# The four RadImageNet architectures; any other timm model name is accepted too.
ARCHITECTURES = ("resnet50", "densenet121", "inception_v3", "inception_resnet_v2")


def check_arch(arch: str) -> str:
    """The timm name of ``arch``; a clear error for an unknown one."""
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown architecture {arch!r} (not a timm model); similar: {close}")
    return arch


def create_model(
    arch: str, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0, pretrained: bool = False,
    img_size: int | None = None, dynamic: bool = False, global_pool: str = "",
) -> Any:
    """A freshly initialised timm model. Weights are never downloaded: load ours with ``backbones.load``.

    ``num_classes=0``: no head (pooled features; a self-supervised backbone). ``img_size``: the input
    size of models built for one (ViTs: their position embeddings); ``dynamic``: such a model also
    takes other sizes (DINO's small crops). Both are ignored by models that take any size.
    ``global_pool``: timm's pooling (e.g. ``avg`` for a ViT's patch tokens instead of its class token);
    empty: the architecture's default."""
    import timm

    if pretrained:
        raise ConfigError(
            "create_model never downloads weights; use radimagenet.models.registry.load('NAME@alias') for ours"
        )
    if num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0 (0: no head), got {num_classes}")
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
    kw = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if global_pool:
        kw["global_pool"] = global_pool
    if img_size is not None and takes_img_size(arch):
        kw |= {"img_size": img_size} | ({"dynamic_img_size": True, "dynamic_img_pad": True} if dynamic else {})
    return timm.create_model(check_arch(arch), **kw)


def takes_img_size(arch: str) -> bool:
    """Whether the timm model ``arch`` is built for one input size (its pretrained config says
    ``fixed_input_size``: ViTs, Swin), so it must be told ``img_size``."""
    import timm

    return bool(getattr(timm.models.get_pretrained_cfg(arch), "fixed_input_size", False))


def imagenet_weights_file(arch: str, weights_file: str = "") -> str:
    """A local file with timm's ImageNet weights for ``arch``: ``weights_file`` (a local path, or an
    ``s3://`` object copied once into this node's temp folder), else the HF cache.

    Never downloads from a hub; a clear ConfigError says how to provide the file when there is none.
    """
    if weights_file.startswith("s3://"):
        return _s3_weights(weights_file)
    if weights_file:
        if not os.path.isfile(weights_file):
            raise ConfigError(f"model.weights_file {weights_file} does not exist")
        return os.path.abspath(weights_file)
    import timm

    hub_id = getattr(timm.models.get_pretrained_cfg(arch), "hf_hub_id", None) if timm.is_model(arch) else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    raise ConfigError(
        f"init=imagenet: no local ImageNet weights for {arch!r} (HF cache: {hub_id or 'no hub id'}); weights are "
        "never downloaded at run time: put timm's weights file on this machine and pass model.weights_file=PATH"
    )


def _s3_weights(uri: str) -> str:
    """The local copy of the weights object ``uri`` (one per node, reused: the name holds the URI's hash)."""
    import hashlib
    import tempfile

    from radimagenet.errors import StorageError
    from radimagenet.io import storage

    folder = os.path.join(tempfile.gettempdir(), "radimagenet-weights")
    path = os.path.join(folder, f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{uri.rsplit('/', 1)[-1]}")
    if not os.path.isfile(path):
        try:
            data = storage.read_bytes(uri)
        except StorageError as exc:
            raise ConfigError(f"model.weights_file {uri}: {exc}") from exc
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: workers of one node may fetch it at once
    return path


def create_imagenet_model(arch: str, num_classes: int, drop_rate: float, weights_file: str) -> Any:
    """A timm model with its ImageNet weights from the local ``weights_file`` and a fresh head."""
    import timm

    return timm.create_model(check_arch(arch), pretrained=True, num_classes=num_classes, in_chans=3,
                             drop_rate=drop_rate, pretrained_cfg_overlay={"file": weights_file})
