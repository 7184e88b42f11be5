"""Registered backbones for notebooks and fine-tuning.

    from radimagenet.models import registry as backbones
    model, record = backbones.load("radimagenet-resnet50@champion", num_classes=2)
    x = radimagenet.data.transforms.preprocess(grey_uint8_images, record)  # what the backbone expects
    backbones.list()                                # every registered version: backbones and fine-tuned models
    backbones.describe("radimagenet-ft-lesions-classification@candidate")["card"]   # its model card

References: ``NAME@alias``, ``NAME/VERSION`` or ``NAME`` (the latest version), with or without
``models:/``. The weights are safetensors (no pickle); the architecture and preprocessing come from the
version's ``backbone.json``. A version registered by :func:`register` is also an MLflow pyfunc model
(``mlflow.pyfunc.load_model("models:/NAME@alias")``, :mod:`radimagenet.models.serving`): its files
then sit under ``artifacts/backbone/``, and :func:`load_dir` reads both layouts.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from radimagenet.errors import ConfigError
from radimagenet.io import tracking
from radimagenet.models.bundle import PYFUNC_ARTIFACT, load_dir
from radimagenet.models.record import BackboneRecord, attach_record

__all__ = ["describe", "list", "load", "load_dir", "register"]


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
        if record.task != "classification":
            raise ConfigError(f"{ref} is a {record.task} model: it has no classifier head to replace")
        model.reset_classifier(num_classes)
    return attach_record(model, record), record


def register(uri: str, run_id: str, local_dir: str, name: str, alias: str = "candidate",
             tags: dict[str, str] | None = None, description: str = "", kind: str = "backbone") -> str:
    """Register ``local_dir`` (``model.safetensors``, ``backbone.json``, ``MODEL_CARD.md``, anything else
    to keep) as a new version of ``name`` (a registered model of ``kind``: ``backbone`` or ``finetuned``)
    with ``alias``, packaged as an MLflow pyfunc model (signature, input example): what ``registry.load``,
    ``predict``, ``export`` and ``mlflow models serve`` all read. Returns the version (see
    :func:`radimagenet.io.tracking.register_backbone`, which it calls: a version already registered from
    this run at the same ``step`` tag is returned, without packaging it again)."""
    import shutil

    from radimagenet.models.serving import package

    if tracking.registered_version(uri, name, run_id, (tags or {}).get("step")) is not None:
        return tracking.register_backbone(uri, run_id, local_dir, name, alias, tags, description, kind)
    tmp = tempfile.mkdtemp(prefix="radimagenet-pyfunc-")
    try:
        out = os.path.join(tmp, "model")
        package(local_dir, out)
        return tracking.register_backbone(uri, run_id, out, name, alias, tags, description, kind)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list(name: str | None = None, *, tracking_uri: str = "",  # noqa: A001
         kinds: tuple[str, ...] = tracking.KINDS) -> list[dict[str, Any]]:
    """Every registered version as dicts (name, version, kind, task, aliases, arch, digest, backbone,
    accuracy, auc, dice): backbones and fine-tuned models (``kinds`` picks)."""
    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    return tracking.list_backbones(uri, name, kinds)


def describe(ref: str, *, tracking_uri: str = "") -> dict[str, Any]:
    """What ``radimagenet registry show`` prints: ``name``, ``version``, ``aliases``, ``kind``, ``tags``
    (lineage, metrics), ``run_id``, ``source``, ``record`` (a :class:`BackboneRecord`) and ``card`` (the
    version's ``MODEL_CARD.md``, None for versions registered before cards existed)."""
    from radimagenet.models.card import CARD_FILE

    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    mv = tracking.resolve_backbone(uri, ref)
    inner = f"artifacts/{PYFUNC_ARTIFACT}/"  # the pyfunc layout first, then a plain folder
    texts = {name: tracking.version_text(uri, mv, (inner + name, name)) for name in (tracking.RECORD_FILE, CARD_FILE)}
    if texts[tracking.RECORD_FILE] is None:
        raise tracking.TrackingError(f"{mv.name}/{mv.version} holds no {tracking.RECORD_FILE}: not a radimagenet model")
    row = next(r for r in tracking.list_backbones(uri, mv.name) if r["version"] == str(mv.version))
    return {"name": mv.name, "version": str(mv.version), "aliases": row["aliases"], "kind": row["kind"],
            "tags": dict(mv.tags), "run_id": mv.run_id, "source": mv.source,
            "record": BackboneRecord.from_dict(json.loads(texts[tracking.RECORD_FILE])), "card": texts[CARD_FILE]}
