"""Weights on disk are safetensors, whatever wraps the model."""

from __future__ import annotations

import torch

from radimagenet.models.factory import create_model
from radimagenet.models.weights import load_weights, save_weights, unwrap


def test_weights_are_safetensors_and_round_trip(tmp_path):
    a, b = create_model("resnet18", 4), create_model("resnet18", 4)
    path = tmp_path / "model.safetensors"
    save_weights(str(path), torch.nn.Sequential(a)[0])
    assert path.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    load_weights(str(path), b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_unwrap_sees_through_ddp_and_compile_wrappers():
    inner = torch.nn.Linear(2, 2)
    wrapped = type("DDP", (), {"module": type("Compiled", (), {"_orig_mod": inner})()})()
    assert unwrap(wrapped) is inner and unwrap(inner) is inner
