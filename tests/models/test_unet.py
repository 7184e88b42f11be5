"""U-Net on timm encoders: shapes, pretrained encoder weights really arrive, the Dice losses."""

import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.models.unet import create_unet, load_encoder_weights

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
