"""Grad-CAM: localises a learnt "bright square", leaves no hooks, keeps modes; localisation measures."""

import numpy as np
import pytest
import torch
from torch import nn

from radimagenet.errors import ConfigError
from radimagenet.eval.explain import gradcam, localisation_score, overlay_png, pointing_game

SIZE, SQUARE = 32, 8


def _batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; class 1 has a bright square at a random place; masks mark the square (also for class 0)."""
    x = torch.randn(n, 1, SIZE, SIZE, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g)
    masks = torch.zeros(n, SIZE, SIZE)
    for i in range(n):
        r, c = torch.randint(0, SIZE - SQUARE + 1, (2,), generator=g).tolist()
        masks[i, r : r + SQUARE, c : c + SQUARE] = 1
        x[i, 0, r : r + SQUARE, c : c + SQUARE] += 1.5 * y[i]
    return x, y, masks


class Tiny(nn.Module):
    """A timm-like CNN: forward = forward_head(forward_features(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(16, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(f.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Plain(nn.Module):
    """No forward_features: needs layer= (or the last-Conv2d default)."""

    def __init__(self, tiny: Tiny) -> None:
        super().__init__()
        self.body, self.head = tiny.features, tiny.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained() -> Tiny:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        x, y, _ = _batch(32, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_gradcam_localises_the_square(trained: Tiny) -> None:
    x, y, masks = _batch(64, torch.Generator().manual_seed(1))
    pos = y == 1
    cams = gradcam(trained, x[pos], target=1)
    assert cams.shape == (int(pos.sum()), SIZE, SIZE)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1
    scores = [localisation_score(c, m) for c, m in zip(cams, masks[pos], strict=True)]
    hits = [pointing_game(c, m) for c, m in zip(cams, masks[pos], strict=True)]
    chance = SQUARE**2 / SIZE**2  # 0.0625: a uniform map's score
    assert np.mean(scores) > 5 * chance
    assert np.mean(hits) > 0.8


def test_gradcam_modes_hooks_grads_preserved(trained: Tiny) -> None:
    x, _, _ = _batch(4, torch.Generator().manual_seed(2))
    trained.train()
    trained.features[1].eval()  # a mixed state must come back exactly
    before = [m.training for m in trained.modules()]
    for p in trained.parameters():
        p.grad = None
    cam1 = gradcam(trained, x)
    cam2 = gradcam(trained, x)
    assert torch.equal(cam1, cam2)  # eval inside: dropout off, BN running stats
    assert [m.training for m in trained.modules()] == before
    assert _hooks(trained) == 0 and all(p.grad is None for p in trained.parameters())
    trained.eval()


def test_gradcam_layer_routes_agree(trained: Tiny) -> None:
    x, _, _ = _batch(6, torch.Generator().manual_seed(3))
    ref = gradcam(trained, x, target=[0, 1, 0, 1, 0, 1])
    plain = Plain(trained)
    by_name = gradcam(plain, x, target=[0, 1, 0, 1, 0, 1], layer="body")
    by_module = gradcam(plain, x, target=[0, 1, 0, 1, 0, 1], layer=plain.body)
    torch.testing.assert_close(ref, by_name)
    torch.testing.assert_close(ref, by_module)
    default = gradcam(plain, x)  # last Conv2d: before ReLU and pooling, still a valid map
    assert default.shape == (6, SIZE, SIZE) and _hooks(plain) == 0


def test_gradcam_frozen_and_no_grad(trained: Tiny) -> None:
    x, _, _ = _batch(2, torch.Generator().manual_seed(4))
    ref = gradcam(trained, x)
    for p in trained.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            torch.testing.assert_close(gradcam(trained, x), ref)
            torch.testing.assert_close(gradcam(Plain(trained), x, layer="body"), ref)
    finally:
        for p in trained.parameters():
            p.requires_grad_(True)


def test_gradcam_on_timm_resnet() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).train()
    cams = gradcam(model, torch.randn(2, 3, 64, 48), target=2)
    assert cams.shape == (2, 64, 48) and model.training and _hooks(model) == 0


def test_gradcam_input_errors(trained: Tiny) -> None:
    x = torch.randn(2, 1, SIZE, SIZE)
    with pytest.raises(ConfigError, match="one per image"):
        gradcam(trained, x, target=[0, 1, 1])
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        gradcam(trained, x, target=5)
    with pytest.raises(ConfigError, match="no submodule"):
        gradcam(trained, x, layer="nope")
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
        gradcam(trained, x[0])


def test_localisation_measures() -> None:
    mask = np.zeros((10, 10))
    mask[:5] = 1
    assert localisation_score(mask, mask) == 1.0
    assert localisation_score(1 - mask, mask) == 0.0
    assert localisation_score(np.ones((10, 10)), mask) == pytest.approx(0.5)  # uniform = area fraction
    assert np.isnan(localisation_score(np.zeros((10, 10)), mask))
    peak = np.zeros((10, 10))
    peak[2, 3] = 1
    assert pointing_game(peak, mask) and not pointing_game(peak[::-1], mask)
    assert not pointing_game(np.ones((10, 10)), mask)  # a flat map points nowhere
    with pytest.raises(ConfigError, match="differ in shape"):
        localisation_score(np.ones((4, 4)), mask)


def test_overlay_png(tmp_path, trained: Tiny) -> None:
    x, _, masks = _batch(1, torch.Generator().manual_seed(5))
    cam = gradcam(trained, x)[0]
    data = overlay_png(x[0], cam, tmp_path / "cam.png", mask=masks[0], scale=4)
    assert data.startswith(b"\x89PNG") and (tmp_path / "cam.png").read_bytes() == data
    from PIL import Image

    assert Image.open(tmp_path / "cam.png").size == (SIZE * 4, SIZE * 4)
    small = cam[::2, ::2]  # a map of another size is resized to the image
    assert overlay_png(np.zeros((SIZE, SIZE), np.uint8), small).startswith(b"\x89PNG")
