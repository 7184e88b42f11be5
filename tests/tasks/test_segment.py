"""The segmentation task's loss: BCE + soft Dice, per image and for a batch."""

from __future__ import annotations

import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.models.unet import create_unet
from radimagenet.tasks.segment import bce_dice_loss, bce_dice_per_image


def test_losses_and_training_reduces_loss() -> None:
    torch.manual_seed(0)
    a = torch.zeros(2, 1, 8, 8)
    a[:, :, :4] = 1
    assert float(bce_dice_per_image(a * 40 - 20, a, bce_weight=0.0).mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(bce_dice_per_image(20 - a * 40, a, bce_weight=0.0).mean()) > 0.9
    x = torch.randn(4, 3, 32, 32)
    y = torch.zeros(4, 1, 32, 32)
    y[:, :, 8:24, 8:24] = 1
    x[:, :, 8:24, 8:24] += 2
    unet = create_unet("resnet18", decoder_channels=(64, 32, 16, 16, 8)).train()
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = bce_dice_loss(unet(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8
    with pytest.raises(ConfigError, match="bce_weight"):
        bce_dice_loss(x[:, :1], y, bce_weight=2)
    per_image = bce_dice_per_image(x[:, :1], y)
    assert per_image.shape == (4,) and torch.isclose(per_image.mean(), bce_dice_loss(x[:, :1], y))
