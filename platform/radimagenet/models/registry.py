"""Registered backbones for notebooks and fine-tuning.

    from radimagenet.models import registry as backbones
    model, record = backbones.load("radimagenet-resnet50@champion", num_classes=2)
    x = radimagenet.data.transforms.preprocess(grey_uint8_images, record)  # what the backbone expects
    backbones.list()                                                # every registered version

References: ``NAME@alias``, ``NAME/VERSION`` or ``NAME`` (the latest version). The weights are
safetensors (no pickle); the architecture and preprocessing come from the version's ``backbone.json``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from radimagenet.io import tracking
from radimagenet.models.factory import create_model
from radimagenet.models.record import BackboneRecord, attach_record


def load(ref: str, num_classes: int | None = None, *, tracking_uri: str = "", drop_rate: float = 0.0) -> tuple[Any, BackboneRecord]:
    """``(model, record)``: a trainable ``nn.Module`` with the pretrained weights.

    With ``num_classes`` the pretraining head is replaced by a fresh one of that size (timm
    ``reset_classifier``); ``num_classes=0`` gives a pooled-feature extractor; ``None`` keeps the
    pretraining head (its classes are ``record.classes``). ``model.radimagenet_cfg`` is the record.
    """
    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    mv = tracking.resolve_backbone(uri, ref)
    with tempfile.TemporaryDirectory(prefix="radimagenet-backbone-") as tmp:  # the weights end up in memory
        record, model = load_dir(tracking.download_backbone(uri, mv, dst=tmp), drop_rate=drop_rate)
    record.source = {**record.source, "registry_name": mv.name, "version": str(mv.version), "ref": ref}
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return attach_record(model, record), record


def load_dir(directory: str, drop_rate: float = 0.0) -> tuple[BackboneRecord, Any]:
    """A backbone from a local directory holding ``backbone.json`` and ``model.safetensors``."""
    import json

    from radimagenet.models.weights import MODEL_FILE, load_weights

    record_path = os.path.join(directory, tracking.RECORD_FILE)
    if not os.path.isfile(record_path):
        raise tracking.TrackingError(f"{directory} holds no {tracking.RECORD_FILE}: not a registered backbone")
    with open(record_path) as f:
        record = BackboneRecord.from_dict(json.load(f))
    model = create_model(record.arch, record.num_classes, record.in_chans, drop_rate)
    load_weights(os.path.join(directory, MODEL_FILE), model)
    return record, attach_record(model, record)


def list(name: str | None = None, *, tracking_uri: str = "") -> list[dict[str, Any]]:  # noqa: A001
    """Every registered backbone version as dicts (name, version, aliases, arch, digest, accuracy, auc)."""
    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    return tracking.list_backbones(uri, name)
