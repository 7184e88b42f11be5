"""A model on disk: a folder with ``backbone.json`` (the record) and ``model.safetensors``, either as is
or inside a pyfunc model folder (``artifacts/backbone/``, how :func:`radimagenet.models.registry.register`
registers it).

    record, model = load_dir("downloaded-version/")          # either layout
    model = build_model(record)                              # untrained: a timm classifier or a U-Net
"""

from __future__ import annotations

import json
import os
from typing import Any

from radimagenet.io import tracking
from radimagenet.models.factory import create_model
from radimagenet.models.record import BackboneRecord, attach_record

PYFUNC_ARTIFACT = "backbone"  # the weights and record inside a pyfunc model folder: artifacts/backbone/


def model_files(directory: str) -> str:
    """The folder holding ``backbone.json`` and ``model.safetensors`` in ``directory``: itself, or its
    ``artifacts/backbone/`` when it is a pyfunc model folder."""
    for candidate in (directory, os.path.join(directory, "artifacts", PYFUNC_ARTIFACT)):
        if os.path.isfile(os.path.join(candidate, tracking.RECORD_FILE)):
            return candidate
    raise tracking.TrackingError(f"{directory} holds no {tracking.RECORD_FILE}: not a registered model")


def read_record(directory: str) -> BackboneRecord:
    """The record of the model in ``directory`` (either layout)."""
    with open(os.path.join(model_files(directory), tracking.RECORD_FILE)) as f:
        return BackboneRecord.from_dict(json.load(f))


def build_model(record: BackboneRecord, drop_rate: float = 0.0) -> Any:
    """The untrained network a record describes: a timm classifier, or a U-Net (one output channel)."""
    if record.task == "segmentation":
        from radimagenet.models.unet import create_unet

        return create_unet(record.arch, num_classes=1, in_chans=record.in_chans)
    return create_model(record.arch, record.num_classes, record.in_chans, drop_rate, img_size=int(record.input_size[1]),
                        global_pool=record.global_pool)


def load_dir(directory: str, drop_rate: float = 0.0) -> tuple[BackboneRecord, Any]:
    """``(record, model)`` from a local folder in either layout; ``model.radimagenet_cfg`` is the record."""
    from radimagenet.models.weights import MODEL_FILE, load_weights

    record = read_record(directory)
    model = build_model(record, drop_rate)
    load_weights(os.path.join(model_files(directory), MODEL_FILE), model)
    return record, attach_record(model, record)
