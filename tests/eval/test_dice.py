"""Dice per image and pooled, from masks, probabilities or logits."""

from __future__ import annotations

import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.eval import dice as ev


def test_dice() -> None:
    a = torch.zeros(2, 1, 8, 8)
    a[:, :, :4] = 1
    assert ev.dice_score(a, a) == 1.0 and ev.dice_score(a, a, reduction="global") == 1.0
    assert ev.dice_score(a, 1 - a) == 0.0
    half = torch.zeros_like(a)
    half[:, :, :2] = 1  # |P| = 16, |T| = 32, overlap 16 -> 2*16/48
    assert ev.dice_score(half, a) == pytest.approx(2 / 3)
    empty = torch.zeros_like(a)
    assert ev.dice_per_image(empty, empty).tolist() == [1.0, 1.0]  # nothing to find, nothing found
    mixed_t = torch.stack([a[0], empty[0]])
    mixed_p = torch.stack([half[0], empty[0]])
    assert ev.dice_score(mixed_p, mixed_t) == pytest.approx((2 / 3 + 1) / 2)
    assert ev.dice_score(mixed_p, mixed_t, reduction="global") == pytest.approx(2 / 3)
    logits = (a * 2 - 1) * 5  # logits: >0 inside
    assert ev.dice_score(logits, a) == 1.0 and ev.dice_score(logits, a, from_logits=True) == 1.0
    assert ev.dice_score(a.bool(), a) == 1.0
    assert ev.dice_score(a * 0.3 + 0.6, a) == pytest.approx(2 / 3)  # probabilities 0.9/0.6: all >= 0.5
    with pytest.raises(ConfigError, match="differ in shape"):
        ev.dice_score(a, a[0])
