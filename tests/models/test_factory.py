"""Backbones by name (timm): the uniform interface, no downloads."""

from __future__ import annotations

import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.models.factory import ARCHITECTURES, create_model


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
        create_model("resnet18", -1)
    assert create_model("resnet18", 0)(torch.zeros(2, 3, 32, 32)).shape == (2, 512)  # no head: pooled features
    vit = create_model("vit_small_patch16_224", 0, img_size=64, dynamic=True)
    assert vit(torch.zeros(1, 3, 64, 64)).shape == vit(torch.zeros(1, 3, 40, 40)).shape == (1, 384)
    assert create_model("resnet18", 3, in_chans=1).conv1.in_channels == 1
