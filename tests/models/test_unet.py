"""U-Net on timm encoders: shapes, pretrained encoder weights really arrive, Dice and losses, overlay."""

import numpy as np
import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.models.unet import (
    bce_dice_loss,
    create_unet,
    dice_loss,
    dice_per_image,
    dice_score,
    load_encoder_weights,
    prediction_overlay_png,
)

timm = pytest.importorskip("timm")
pytest.importorskip("segmentation_models_pytorch")


def _classifier(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=4)
    with torch.no_grad():  # make buffers distinctive too, so a copy is unmistakable
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    ("name", "src_key", "enc_key"),
    [
        ("resnet18", "layer4.1.conv2.weight", "layer4.1.conv2.weight"),
        ("resnet50", "layer3.5.bn3.running_var", "layer3.5.bn3.running_var"),
        (
            "densenet121",
            "features.denseblock4.denselayer16.conv2.weight",
            "features_denseblock4.denselayer16.conv2.weight",
        ),
    ],
)
def test_encoder_weights_arrive(name: str, src_key: str, enc_key: str) -> None:
    cls = _classifier(name)
    unet = create_unet(name, num_classes=1)
    enc = unet.encoder.model.state_dict()
    assert not torch.equal(enc[enc_key], cls.state_dict()[src_key])
    report = load_encoder_weights(unet, cls.state_dict())
    assert report["matched"] == report["total"] > 100 and not report["missing"]
    assert len(report["unused"]) == 2  # the classifier head's weight and bias
    torch.testing.assert_close(
        unet.encoder.model.state_dict()[enc_key], cls.state_dict()[src_key], rtol=0, atol=0
    )


def test_create_unet_from_model_and_wrapped_keys() -> None:
    cls = _classifier("resnet18", seed=1)
    unet = create_unet(cls, num_classes=2)
    assert unet.encoder_load_report["matched"] == unet.encoder_load_report["total"]
    torch.testing.assert_close(unet.encoder.model.conv1.weight, cls.conv1.weight, rtol=0, atol=0)
    wrapped = {f"module.{k}": v for k, v in cls.state_dict().items()}  # DDP-saved
    assert load_encoder_weights(create_unet("resnet18"), wrapped)["matched"] == 120


def test_create_unet_from_registered_backbone() -> None:
    from types import SimpleNamespace

    grey = timm.create_model("resnet18", pretrained=False, num_classes=4, in_chans=1)
    grey.radimagenet_cfg = SimpleNamespace(arch="resnet18", in_chans=1)  # what backbones.load attaches
    unet = create_unet(grey)
    assert unet.encoder_load_report["adapted"] == []
    torch.testing.assert_close(unet.encoder.model.conv1.weight, grey.conv1.weight, rtol=0, atol=0)


def test_single_channel_input_adapts_first_conv() -> None:
    cls = _classifier("resnet18")
    unet = create_unet("resnet18", in_chans=1)
    report = load_encoder_weights(unet, cls.state_dict())
    assert report["adapted"] == ["conv1.weight"]
    torch.testing.assert_close(unet.encoder.model.conv1.weight, cls.conv1.weight.sum(dim=1, keepdim=True))
    assert unet(torch.randn(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_wrong_architecture_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no encoder tensor matched"):
        load_encoder_weights(create_unet("resnet18"), _classifier("densenet121").state_dict())
    with pytest.raises(ConfigError, match="different architecture"):  # partial match: resnet18 into resnet34
        load_encoder_weights(create_unet("resnet34"), _classifier("resnet18").state_dict())
    with pytest.raises(ConfigError, match="cannot build"):
        create_unet("not_a_timm_model")


def test_forward_shapes() -> None:
    unet = create_unet("resnet18", num_classes=3).eval()
    with torch.no_grad():
        assert unet(torch.randn(2, 3, 64, 96)).shape == (2, 3, 64, 96)


def test_dice() -> None:
    a = torch.zeros(2, 1, 8, 8)
    a[:, :, :4] = 1
    assert dice_score(a, a) == 1.0 and dice_score(a, a, reduction="global") == 1.0
    assert dice_score(a, 1 - a) == 0.0
    half = torch.zeros_like(a)
    half[:, :, :2] = 1  # |P| = 16, |T| = 32, overlap 16 -> 2*16/48
    assert dice_score(half, a) == pytest.approx(2 / 3)
    empty = torch.zeros_like(a)
    assert dice_per_image(empty, empty).tolist() == [1.0, 1.0]  # nothing to find, nothing found
    mixed_t = torch.stack([a[0], empty[0]])
    mixed_p = torch.stack([half[0], empty[0]])
    assert dice_score(mixed_p, mixed_t) == pytest.approx((2 / 3 + 1) / 2)
    assert dice_score(mixed_p, mixed_t, reduction="global") == pytest.approx(2 / 3)
    logits = (a * 2 - 1) * 5  # logits: >0 inside
    assert dice_score(logits, a) == 1.0 and dice_score(logits, a, from_logits=True) == 1.0
    assert dice_score(a.bool(), a) == 1.0
    assert dice_score(a * 0.3 + 0.6, a) == pytest.approx(2 / 3)  # probabilities 0.9/0.6: all >= 0.5
    with pytest.raises(ConfigError, match="differ in shape"):
        dice_score(a, a[0])


def test_losses_and_training_reduces_loss() -> None:
    torch.manual_seed(0)
    a = torch.zeros(2, 1, 8, 8)
    a[:, :, :4] = 1
    assert float(dice_loss(a * 40 - 20, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(20 - a * 40, a)) > 0.9
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


def test_prediction_overlay(tmp_path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    true = np.zeros((16, 16))
    true[4:12, 4:12] = 1
    pred = torch.zeros(1, 16, 16)
    pred[0, 6:14, 6:14] = 1
    data = prediction_overlay_png(img, pred, true, tmp_path / "seg.png", scale=2)
    assert data.startswith(b"\x89PNG") and (tmp_path / "seg.png").read_bytes() == data
    from PIL import Image

    rgb = np.asarray(Image.open(tmp_path / "seg.png"))
    assert tuple(rgb[8, 8]) == (0, 255, 0)  # true outline at (4, 4) -> pixel (8, 8) at scale 2
    with pytest.raises(ConfigError, match="differ in shape"):
        prediction_overlay_png(img, pred[:, :8], true)
