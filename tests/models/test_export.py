"""``radimagenet export``: ONNX (onnxruntime), TorchScript and the timm folder compute what the model
computes on real inputs (synthetic DICOMs decoded and preprocessed as predict does), and each folder
carries the record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_models import CLASSES, mixed_inputs, model_dir
from radimagenet.cli import main
from radimagenet.errors import ConfigError
from radimagenet.models.export import export
from radimagenet.models.inference import load_predictor
from radimagenet.models.record import BackboneRecord


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(predictor, model folder, a batch of 5 real preprocessed inputs, torch's logits for them)."""
    root = tmp_path_factory.mktemp("export")
    folder, kinds = mixed_inputs(root, dicoms=5)
    directory = model_dir(root / "model", seed=1)
    predictor = load_predictor(str(directory), device="cpu")
    x = predictor.batch([predictor.decode(str(folder / n)) for n in sorted(kinds) if kinds[n] == "dicom"])
    with torch.no_grad():
        logits = predictor.model(x)
    assert x.shape == (5, 3, 48, 48) and logits.shape == (5, len(CLASSES))
    return predictor, directory, x, logits.numpy()


def _record(out) -> BackboneRecord:
    return BackboneRecord.from_dict(json.loads((out / "backbone.json").read_text()))


def test_onnx_matches_torch(real, tmp_path):
    import onnxruntime as ort

    predictor, directory, x, logits = real
    out = tmp_path / "onnx"
    assert main(["export", str(directory), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.type == "tensor(float)" and isinstance(inp.shape[0], str)  # dynamic batch
    assert inp.shape[1:] == [3, 48, 48]
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - logits).max() <= 1e-4
    one = session.run(None, {"input": x[:1].numpy()})[0]  # another batch size
    assert np.abs(one - logits[:1]).max() <= 1e-4
    assert _record(out) == predictor.record


def test_torchscript_matches_torch(real, tmp_path):
    predictor, directory, x, logits = real
    out = tmp_path / "ts"
    assert main(["export", str(directory), "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        assert np.abs(loaded(x).numpy() - logits).max() <= 1e-5
        assert loaded(x[:3]).shape == (3, len(CLASSES))
    assert _record(out).classes == CLASSES


def test_timm_folder_loads_in_timm(real, tmp_path):
    import timm
    from timm.data import resolve_data_config

    predictor, directory, x, logits = real
    out = tmp_path / "timm"
    assert main(["export", str(directory), "--format", "timm", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "backbone.json"}
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert np.abs(model(x).numpy() - logits).max() <= 1e-5
    assert model.pretrained_cfg["label_names"] == CLASSES
    data = resolve_data_config({}, model=model)  # what other people's timm code will feed it
    assert data["input_size"] == (3, 48, 48) and data["crop_pct"] == 1.0 and data["crop_mode"] == "squash"
    assert tuple(data["mean"]) == predictor.record.mean and tuple(data["std"]) == predictor.record.std


def test_segmentation_exports_onnx_not_timm(tmp_path):
    import onnxruntime as ort

    predictor = load_predictor(str(model_dir(tmp_path / "unet", task="segmentation")), device="cpu")
    x = torch.rand(3, 3, 48, 48)
    export(predictor.model, predictor.record, "onnx", str(tmp_path / "onnx"))
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = predictor.model(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - want).max() <= 1e-4
    with pytest.raises(ConfigError, match="timm"):
        export(predictor.model, predictor.record, "timm", str(tmp_path / "timm"))
