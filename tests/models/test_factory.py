"""Backbones by name, the record that travels with them, weights without pickle, eval metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.eval.classification import classification_metrics, macro_auc, topk_accuracy
from radimagenet.models.factory import (
    ARCHITECTURES,
    BackboneRecord,
    create_model,
    make_record,
    modality_of,
    preprocess,
)
from radimagenet.train import checkpoint
from radimagenet.train.engine import lr_factor

MANIFEST = {"classes": ["CT/lung/nodule", "CT/lung/normal", "MR/knee/acl", "US/thyroid"],
            "image_size": 64, "digest": "sha256:abc"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_radimagenet_architectures_have_the_uniform_interface(arch):
    model = create_model(arch, num_classes=7, in_chans=3).eval()
    size = 75 if arch.startswith("inception") else 64
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
    assert out.shape == (1, 7)
    model.reset_classifier(2)
    with torch.no_grad():
        assert model(x).shape == (1, 2)


def test_create_model_refuses_downloads_and_unknown_names():
    with pytest.raises(ConfigError, match="never downloads"):
        create_model("resnet18", 3, pretrained=True)
    with pytest.raises(ConfigError, match="unknown architecture"):
        create_model("resnet5000", 3)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet18", 0)
    assert create_model("resnet18", 3, in_chans=1).conv1.in_channels == 1


def test_record_round_trip_and_preprocess():
    record = make_record("resnet18", MANIFEST, in_chans=3, image_size=32, mean=(0.5,), std=(0.25,))
    assert record.input_size == (3, 32, 32) and record.mean == (0.5,) * 3 and record.num_classes == 4
    assert record.dataset_digest == "sha256:abc" and record.classes == MANIFEST["classes"]
    again = BackboneRecord.from_dict(record.to_dict())
    assert again == record
    with pytest.raises(ConfigError):
        BackboneRecord.from_dict({"format": "something-else"})

    grey = np.full((2, 64, 64), 255, np.uint8)
    x = preprocess(grey, record)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.5) / 0.25), atol=1e-5)
    assert preprocess(np.zeros((32, 32), np.uint8), record).shape == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match="mean"):
        make_record("resnet18", MANIFEST, in_chans=3, mean=(0.1, 0.2))


def test_weights_are_safetensors_and_round_trip(tmp_path):
    a, b = create_model("resnet18", 4), create_model("resnet18", 4)
    path = tmp_path / "model.safetensors"
    checkpoint.save_weights(str(path), torch.nn.Sequential(a)[0])
    assert path.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    checkpoint.load_weights(str(path), b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_checkpoint_save_load_restores_training_state(tmp_path):
    model = create_model("resnet18", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    sched.step()
    checkpoint.save(str(tmp_path), model=model, optimizer=opt, scheduler=sched, epoch=2, step=30,
                    config={"a": 1}, dataset_digest="sha256:abc", run_id="r1", record={"arch": "resnet18"},
                    metrics={"val/top1": 0.5})
    model2 = create_model("resnet18", 4)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5)
    state = checkpoint.load(str(tmp_path), model=model2, optimizer=opt2, scheduler=sched2,
                            dataset_digest="sha256:abc")
    assert state["epoch"] == 2 and state["step"] == 30 and state["mlflow_run_id"] == "r1"
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(ConfigError, match="trained on dataset"):
        checkpoint.load(str(tmp_path), model=model2, dataset_digest="sha256:other")


def test_metrics_top_k_auc_and_modalities():
    classes = MANIFEST["classes"]
    labels = np.array([0, 1, 2, 2, 0])  # class 3 absent from this "val" set
    logits = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [3, 0, 2, 0], [0, 4, 3, 0]], float)
    m = classification_metrics(logits, labels, classes)
    assert m["val/top1"] == pytest.approx(3 / 5)
    assert m["val/top5"] == 1.0
    assert m["val/acc_CT"] == pytest.approx(2 / 3) and m["val/acc_MR"] == pytest.approx(1 / 2)
    assert 0.5 < m["val/auc_macro"] <= 1.0 and np.isfinite(m["val/auc_macro"])
    assert topk_accuracy(logits, labels, 2) == pytest.approx(4 / 5)
    assert np.isnan(macro_auc(np.ones((3, 2)) / 2, np.zeros(3, int)))  # one class only: undefined
    by_meta = classification_metrics(logits, labels, classes, modalities=["CT", "MR", "CT", "MR", "CT"])
    assert set(k for k in by_meta if k.startswith("val/acc_")) == {"val/acc_CT", "val/acc_MR"}
    with pytest.raises(ValueError, match="no evaluation samples"):
        classification_metrics(np.zeros((0, 4)), np.zeros(0, int), classes)
    assert modality_of("US/thyroid") == "US" and modality_of("flat") == "flat"


def test_warmup_then_cosine():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)
