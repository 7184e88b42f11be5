"""``radimagenet export``: a registered model as files other people's code can run, each folder with
the record (``backbone.json``: architecture, input size, mean/std, classes, task and how files were
decoded), so the weights travel with their preprocessing.

    export(model, record, "onnx", "out/")         # out/model.onnx: input "input" float32 [N, C, S, S], dynamic N
    export(model, record, "torchscript", "out/")  # out/model.pt: torch.jit.trace of the model in eval mode
    export(model, record, "timm", "out/")         # out/config.json + out/model.safetensors
    timm.create_model("local-dir:out/", pretrained=True)

Every format computes what the model computes: logits (``[N, classes]``; softmax gives the
probabilities ``predict`` writes) or, for segmentation, lesion logits ``[N, 1, S, S]`` (sigmoid).
Inputs are preprocessed as :func:`radimagenet.data.transforms.preprocess` does: grey in [0, 1],
replicated to ``in_chans`` channels, ``(x - mean) / std``; the whole image squashed to S x S.
"""

from __future__ import annotations

import json
import os
from typing import Any

from radimagenet.errors import ConfigError
from radimagenet.io import tracking
from radimagenet.models.record import BackboneRecord

FORMATS = ("onnx", "torchscript", "timm")
FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "timm": "model.safetensors"}
INPUT_NAME = "input"


def example_input(record: BackboneRecord, batch: int = 2) -> Any:
    """A float32 ``[batch, C, S, S]`` tensor of the record's shape (for tracing and exporting)."""
    import torch

    return torch.zeros((batch, *(int(v) for v in record.input_size)), dtype=torch.float32)


def export(model: Any, record: BackboneRecord, fmt: str, out: str) -> list[str]:
    """Write ``model`` (with its ``record``) in format ``fmt`` into the folder ``out``; returns the files."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "timm" and record.task != "classification":
        raise ConfigError(f"the timm format holds timm classifiers; this is a {record.task} model "
                          "(export it as onnx or torchscript)")
    os.makedirs(out, exist_ok=True)
    model = model.float().cpu().eval()
    files = {"onnx": export_onnx, "torchscript": export_torchscript, "timm": export_timm}[fmt](model, record, out)
    record_path = os.path.join(out, tracking.RECORD_FILE)
    with open(record_path, "w") as f:
        f.write(record.to_json())
    return [*files, record_path]


def export_onnx(model: Any, record: BackboneRecord, out: str) -> list[str]:
    """``model.onnx`` by torch's dynamo exporter (onnxscript), opset 18, one input with a dynamic batch."""
    import torch

    path = os.path.join(out, FILES["onnx"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    output = "lesion_logits" if record.task == "segmentation" else "logits"
    try:
        torch.onnx.export(model, (example_input(record),), path, dynamo=True, opset_version=18, verbose=False,
                          input_names=[INPUT_NAME], output_names=[output], dynamic_shapes=({0: batch},),
                          external_data=False)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs onnx and onnxscript: pip install 'radimagenet[all]' ({exc})") from exc
    return [path]


def export_torchscript(model: Any, record: BackboneRecord, out: str) -> list[str]:
    """``model.pt``: ``torch.jit.trace`` (timm models are not all scriptable; trace follows the eval-mode
    graph, which has no data-dependent control flow in these CNNs)."""
    import warnings

    import torch

    path = os.path.join(out, FILES["torchscript"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated; it still works
        traced = torch.jit.trace(model, example_input(record), check_trace=True)
    traced.save(path)
    return [path]


def timm_config(model: Any, record: BackboneRecord) -> dict[str, Any]:
    """timm's ``config.json`` for the model: architecture, classes and our preprocessing as its
    ``pretrained_cfg`` (``crop_mode: squash``: the whole image resized, as ingest stores it)."""
    return {
        "architecture": record.arch,
        "num_classes": record.num_classes,
        "num_features": int(getattr(model, "num_features", 0)) or None,
        "label_names": list(record.classes),
        "model_args": {"num_classes": record.num_classes, "in_chans": record.in_chans},
        "pretrained_cfg": {
            "input_size": list(record.input_size), "fixed_input_size": False,
            "interpolation": record.interpolation, "crop_pct": 1.0, "crop_mode": "squash",
            "mean": list(record.mean), "std": list(record.std), "num_classes": record.num_classes,
            "first_conv": model.pretrained_cfg.get("first_conv"), "classifier": model.pretrained_cfg.get("classifier"),
            "tag": "radimagenet", "description": f"RadImageNet-style {record.arch} trained on dataset "
            f"{record.dataset_digest}; grey images replicated to {record.in_chans} channels (backbone.json)",
        },
    }


def export_timm(model: Any, record: BackboneRecord, out: str) -> list[str]:
    """``config.json`` + ``model.safetensors``: ``timm.create_model("local-dir:OUT", pretrained=True)``."""
    from radimagenet.models.weights import save_weights

    config = os.path.join(out, "config.json")
    with open(config, "w") as f:
        json.dump({k: v for k, v in timm_config(model, record).items() if v is not None}, f, indent=2)
    weights = os.path.join(out, FILES["timm"])
    save_weights(weights, model)
    return [config, weights]


def export_ref(ref: str, fmt: str, out: str, *, tracking_uri: str = "") -> list[str]:
    """:func:`export` the model ``ref`` names (``models:/NAME@alias``, ``NAME@alias``, ``NAME/VERSION``
    or a local model folder)."""
    from radimagenet.models.inference import load_predictor

    predictor = load_predictor(ref, device="cpu", tracking_uri=tracking_uri)
    return export(predictor.model, predictor.record, fmt, out)
