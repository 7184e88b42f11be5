"""The self-supervised networks (no servers): each objective trains on CNNs and ViTs, the DINO teacher
follows the student by EMA only, the masked-image mask is exact, views repeat under a seed, the exported
backbone loads as a headless timm model, and the k-NN / spread monitors behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radimagenet.eval.knn import embedding_std, knn_accuracy, knn_predict, knn_probs
from radimagenet.models.factory import create_model
from radimagenet.models.ssl import backbone_state, build_ssl, pooling, view
from radimagenet.models.ssl_config import SSLSection, ssl_problems

SMALL = SSLSection(out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crops=2)


@pytest.mark.parametrize("objective", ["dino", "mae"])
@pytest.mark.parametrize("arch", ["resnet10t", "vit_small_patch16_224"])
def test_each_objective_trains_any_backbone_and_exports_it(objective, arch):
    torch.manual_seed(0)
    net = build_ssl(objective, arch, in_chans=3, image_size=32, settings=SMALL)
    x = torch.randn(4, 3, 32, 32)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    net.train()
    losses = net(x)
    assert losses.shape == (4,) and torch.isfinite(losses).all()
    losses.mean().backward()
    # every trainable parameter gets a gradient (DDP requires it); a mae ViT's fc_norm is frozen for that
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    opt.step()
    net.eval()
    with torch.no_grad():
        feats = net(x)
    headless = create_model(arch, 0, 3, img_size=32, global_pool=pooling(objective, arch))
    headless.load_state_dict(backbone_state(net.state_dict()))  # strict: exactly the backbone's weights
    headless.eval()
    with torch.no_grad():
        assert torch.allclose(headless(x), feats, atol=1e-5)


def test_the_dino_teacher_has_no_gradient_and_follows_the_student_by_ema():
    torch.manual_seed(0)
    net = build_ssl("dino", "resnet10t", in_chans=3, image_size=32, settings=SMALL)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    before = [p.clone() for p in net.backbone.parameters()]
    with torch.no_grad():
        for p in net.student.parameters():
            p.add_(1.0)
    net.after_step(0.0)  # the first step: the configured momentum
    m = SMALL.teacher_momentum
    for b, t, s in zip(before, net.backbone.parameters(), net.student.parameters(), strict=True):
        assert torch.allclose(t, m * b + (1 - m) * s)
    after = [p.clone() for p in net.backbone.parameters()]
    net.after_step(1.0)  # the end of training: momentum 1, the teacher holds still
    assert all(torch.equal(a, t) for a, t in zip(after, net.backbone.parameters(), strict=True))
    from radimagenet.models.ssl import teacher_momentum
    assert teacher_momentum(0.99, 0.5) == pytest.approx(0.995) and teacher_momentum(0.99, 2.0) == 1.0
    net.train()
    net(torch.randn(4, 3, 32, 32))
    assert net.center.abs().sum() > 0  # the teacher's outputs are centred


def test_the_mask_blanks_exactly_the_ratio_and_views_repeat_under_a_seed():
    net = build_ssl("mae", "resnet10t", in_chans=1, image_size=32, settings=SSLSection(mask_ratio=0.75))
    m = net.mask(3, "cpu")
    assert m.shape == (3, 1, 32, 32) and net.patch == 8
    assert torch.equal(m.mean((1, 2, 3)), torch.full((3,), 0.75))  # 12 of 16 patches, each image
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(5)
    a = view(x, 16, (0.05, 0.4), 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, view(x, 16, (0.05, 0.4), 0.5)) and a.shape == (2, 1, 16, 16)


def test_ssl_settings_are_checked():
    assert ssl_problems(SSLSection()) == []
    problems = ssl_problems(SSLSection(mask_ratio=1.0, teacher_temp=0, local_crops=-1))
    assert len(problems) == 3 and any("ssl.mask_ratio" in p for p in problems)


def test_knn_and_spread_monitors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    labels = np.repeat(np.arange(3), 20)
    emb = centres[labels] + rng.normal(size=(60, 16))
    patients = np.arange(60) // 2  # two images per patient
    assert knn_accuracy(emb, labels, patients, k=5) == 1.0
    assert knn_accuracy(rng.normal(size=(60, 16)), labels, patients, k=5) < 0.6
    # images that resemble only their own patient's twin: leave-patient-out removes that shortcut
    twins = rng.normal(size=(30, 16)) * 5
    emb2 = twins[patients] + rng.normal(size=(60, 16)) * 0.01
    labels2 = rng.integers(0, 2, 30)[patients]
    assert (knn_predict(emb2, labels2, emb2, 1) == labels2).all()  # itself as neighbour: trivially right
    assert knn_accuracy(emb2, labels2, patients, k=1) < 0.8
    probs = knn_probs(emb, labels, emb + 0.1, 5, 4)
    assert probs.shape == (60, 4) and np.allclose(probs.sum(1), 1) and (probs[:, 3] == 0).all()
    assert (probs.argmax(1) == labels).all()
    assert embedding_std(np.ones((10, 8))) < 1e-9  # collapsed
    assert embedding_std(rng.normal(size=(2000, 64))) == pytest.approx(1 / 8, rel=0.05)


def test_the_knn_protocol_classifier_votes_with_the_backbone_features():
    from radimagenet.tasks.knn import KNNClassifier, embed

    torch.manual_seed(0)
    model = create_model("resnet10t", 2, 1).eval()
    x = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        bank = embed(model, x).numpy()
        logp = KNNClassifier(model, bank, np.array([0, 0, 0, 1, 1, 1]), 2, k=1)(x)
    assert logp.shape == (6, 2) and (logp.argmax(1) == torch.tensor([0, 0, 0, 1, 1, 1])).all()


def test_a_headless_backbone_loads_from_its_folder_and_predict_refuses_it(tmp_path):
    from radimagenet.errors import ConfigError
    from radimagenet.models.bundle import load_dir
    from radimagenet.models.inference import load_predictor
    from radimagenet.models.record import make_record
    from radimagenet.models.weights import save_state

    net = build_ssl("dino", "resnet10t", in_chans=3, image_size=32, settings=SMALL)
    record = make_record("resnet10t", {"classes": [], "image_size": 32})
    record.classes, record.num_classes, record.objective = [], 0, "dino"
    save_state(str(tmp_path / "model.safetensors"), backbone_state(net.state_dict()))
    (tmp_path / "backbone.json").write_text(record.to_json())
    loaded, model = load_dir(str(tmp_path))
    assert loaded.objective == "dino" and model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    with pytest.raises(ConfigError, match="objective=dino has no head"):
        load_predictor(str(tmp_path), device="cpu")
