"""Fine-tuning config, task checks, model building, freezing and the comparison plumbing (no stack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radimagenet.config import from_dict, load_config, to_dict
from radimagenet.errors import ConfigError
from radimagenet.models.factory import imagenet_weights_file
from radimagenet.models.freeze import apply_freeze, set_train_mode
from radimagenet.tasks.classify import macro_sensitivity_specificity
from radimagenet.tasks.downstream import build_classifier, patients_of, read_predictions, write_predictions
from radimagenet.tasks.finetune import build_task
from radimagenet.tasks.finetune_config import (
    FinetuneConfig,
    TaskSpec,
    check_task,
    positive_index,
    resolve,
    validate,
)
from radimagenet.train.engine import Outputs

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def manifest(classes=("CT/abd/liver_lesion", "CT/abd/normal"), masks=True, test_classes=None) -> dict:
    counts = {c: 10 for c in classes}
    split = {"samples": 10 * len(classes), "classes": counts,
             "shards": [{"url": "s3://b/x.tar", "samples": 10 * len(classes)}]}
    test = dict(split, classes=test_classes if test_classes is not None else counts)
    return {"uri": "s3://b/ds", "classes": list(classes), "image_size": 64, "has_masks": masks, "digest": "sha256:x",
            "splits": {"train": split, "val": split, "test": test}}


def cfg(*overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, ["data.manifest=s3://b/ds", "backbone=bb@champion", *overrides])


def test_defaults_follow_the_paper():
    c = FinetuneConfig()
    assert (c.train.optimizer, c.train.lr, c.model.drop_rate, c.train.freeze) == ("adam", 1e-4, 0.5, "none")
    assert (c.train.schedule, c.train.warmup_epochs, c.train.label_smoothing) == ("constant", 0.0, 0.0)
    assert c.task == "classification" and c.init == "backbone" and c.data.image_size is None
    assert from_dict(FinetuneConfig, to_dict(c)) == c


@pytest.mark.parametrize("name", ["finetune-classification", "finetune-segmentation", "demo-finetune"])
def test_presets_load(name):
    c = validate(load_config(FinetuneConfig, PIPELINES / f"{name}.yaml"))
    assert c.backbone and c.train.lr > 0
    if name == "demo-finetune":
        assert c.scaling.use_gpu is False and c.model.arch == "resnet10t"


def test_grid_overrides_and_resolve():
    c = resolve(cfg("train.freeze=top10", "train.lr=1e-3"), manifest())
    assert c.train.freeze == "top10" and c.train.lr == pytest.approx(1e-3)
    assert c.data.manifest == "s3://b/ds/manifest.json" and c.data.image_size == 64
    assert c.tracking.run_name.startswith("finetune-classification-bb-champion-")
    assert resolve(cfg("data.image_size=256"), manifest()).data.image_size == 256
    # every fine-tuning registers its model: by default one registered model per dataset and task
    assert c.registry.name == "radimagenet-ft-ds-classification" and c.registry.alias == "candidate"
    assert c.registry.register and c.tracking.system_metrics_interval == 10
    seg = resolve(cfg("task=segmentation", "data.manifest=s3://b/data sets/lesions v2/"), manifest())
    assert seg.registry.name == "radimagenet-ft-lesions-v2-segmentation"
    assert resolve(cfg("registry.name=my-model"), manifest()).registry.name == "my-model"


@pytest.mark.parametrize("overrides, message", [
    (["backbone="], "backbone is required"),
    (["init=scratch"], "exclude each other"),
    (["train.lr=0"], "train.lr must be > 0"),
    (["model.drop_rate=1.0"], "drop_rate"),
    (["eval.threshold_rule=median"], "threshold_rule"),
    (["data.mean=[0.1, 0.2]"], "data.mean"),
    (["tracking.run_name=bad name"], "run_name"),
    (["registry.name=a/b"], "registry.name 'a/b' must be letters"),
    (["registry.alias="], "registry.alias '' must be letters"),
    (["tracking.system_metrics_interval=-1"], "system_metrics_interval must be >= 0"),
])
def test_invalid_configs_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(cfg(*overrides))


def test_unknown_keys_and_bad_choices():
    with pytest.raises(ConfigError, match="unknown key"):
        cfg("train.frezee=all")
    with pytest.raises(ConfigError, match="not one of"):
        cfg("train.freeze=half")
    validate(cfg("backbone=", "init=scratch", "model.arch=resnet18"))


def test_task_checks():
    spec = check_task(cfg(), manifest())
    assert spec == TaskSpec("classification", "binary", ("CT/abd/liver_lesion", "CT/abd/normal"), 0)
    assert check_task(cfg(), manifest(("a", "b", "c"))).mode == "multiclass"
    assert check_task(cfg("task=segmentation"), manifest()).mode == "segmentation"
    with pytest.raises(ConfigError, match="needs lesion masks"):
        check_task(cfg("task=segmentation"), manifest(masks=False))
    with pytest.raises(ConfigError, match="exactly 2 classes"):
        check_task(cfg("eval.metrics=binary"), manifest(("a", "b", "c")))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        check_task(cfg(), manifest(("CT/only",)))
    with pytest.raises(ConfigError, match="test split .* holds only"):
        check_task(cfg(), manifest(test_classes={"CT/abd/normal": 5, "CT/abd/liver_lesion": 0}))
    m = manifest()
    m["splits"]["test"] = {"samples": 0, "classes": {}, "shards": []}
    with pytest.raises(ConfigError, match="train, val and test"):
        check_task(cfg(), m)


def test_an_unlabeled_dataset_is_refused_naming_it():
    m = manifest(classes=())
    m.update(unlabeled=True, uri="s3://b/archive")
    for task in ("classification", "segmentation"):
        with pytest.raises(ConfigError, match=r"dataset s3://b/archive is unlabeled \(ingest --unlabeled\)"):
            check_task(cfg(f"task={task}"), m)


def test_positive_class():
    assert positive_index(["CT/abd/liver_lesion", "CT/abd/normal"]) == 0
    assert positive_index(["normal", "pneumonia"]) == 1
    assert positive_index(["benign", "malignant"]) == 1
    assert positive_index(["benign", "malignant"], "benign") == 0
    with pytest.raises(ConfigError, match="not a class"):
        positive_index(["a", "b"], "c")


def test_scratch_classifier_and_freezing():
    c = resolve(cfg("backbone=", "init=scratch", "model.arch=resnet10t"), manifest())
    model, record = build_classifier(c, manifest(), 2)
    assert model.get_classifier().out_features == 2 and model.drop_rate == 0.5
    assert record.input_size == (3, 64, 64) and model.radimagenet_cfg is record
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert apply_freeze(model, "none")["trainable"] == total
    assert apply_freeze(model, "all")["trainable"] == head
    top10 = apply_freeze(model, "top10")["trainable"]
    assert head < top10 < total
    set_train_mode(model)
    import torch

    frozen_bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.requires_grad]
    assert frozen_bn and all(not m.training for m in frozen_bn) and model.get_classifier().training


def test_segmentation_model_from_scratch():
    import torch

    c = resolve(cfg("backbone=", "init=scratch", "model.arch=resnet10t", "task=segmentation"), manifest())
    task = build_task(c, manifest())
    unet, record = task.build_model()
    assert task.name == "segmentation" and task.select_metric == "val/loss"
    assert unet(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    counts = apply_freeze(unet, "all")
    loss = task.loss(unet(torch.zeros(2, 3, 64, 64)), type("B", (), {"masks": torch.zeros(2, 1, 64, 64)})())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert counts["trainable"] == sum(p.numel() for p in list(unet.decoder.parameters())
                                      + list(unet.segmentation_head.parameters()))


def test_imagenet_weights_come_from_a_local_file_only(tmp_path, monkeypatch):
    import timm
    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="never downloaded"):
        imagenet_weights_file("resnet10t")
    with pytest.raises(ConfigError, match="does not exist"):
        imagenet_weights_file("resnet10t", str(tmp_path / "missing.safetensors"))
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    c = resolve(cfg("backbone=", "init=imagenet", "model.arch=resnet10t", f"model.weights_file={path}"), manifest())
    model, record = build_classifier(c, manifest(), 2)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert model.get_classifier().out_features == 2
    assert record.mean == pytest.approx((0.485, 0.456, 0.406))


def test_macro_sensitivity_specificity():
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # class 2 absent
    out = macro_sensitivity_specificity(cm)
    assert out["test/sensitivity"] == pytest.approx((0.8 + 0.9) / 2)
    assert out["test/specificity"] == pytest.approx((9 / 10 + 8 / 10) / 2)


def test_predictions_round_trip(tmp_path):
    out = Outputs(["a", "b", "c"], {"label": np.array([0, 1, 1]), "patient": np.array(["p1", "", "p1"]),
                                    "probs": np.array([[0.25, 0.75], [0.1, 0.9], [1 / 3, 2 / 3]])})
    spec = TaskSpec("classification", "binary", ("CT/liver/normal", "CT/liver/lesion, focal"), 1)
    path = tmp_path / "p.csv"
    write_predictions(out, spec, str(path))
    head = path.read_text().splitlines()[0]
    assert head == 'key,patient,label,p_CT/liver/normal,"p_CT/liver/lesion, focal"'
    pred = read_predictions(path.read_text())
    assert pred.keys == ["a", "b", "c"] and pred.labels.tolist() == [0, 1, 1]
    assert pred.patients.tolist() == ["p1", "b", "p1"]  # no pseudonym: the image is its own patient
    assert pred.classes == list(spec.classes) and np.array_equal(pred.probs, out.arrays["probs"])  # exact floats
    patients, missing = patients_of(out)
    assert patients.tolist() == ["p1", "b", "p1"] and missing == 1
    with pytest.raises(ConfigError, match="key, patient, label"):
        read_predictions("key,label_id,prob_0\na,0,0.5\n")
    with pytest.raises(ConfigError, match="not among"):
        read_predictions("key,patient,label,p_x\na,p1,y,0.5\n")


def test_compare_is_a_sweep_of_inits_by_seeds():
    from radimagenet.tasks.compare import compare_overrides, seed_list
    from radimagenet.tasks.sweep_config import load_sweep

    with pytest.raises(ValueError, match="bad backbone reference"):
        compare_overrides(["a@", "scratch"], "s3://b/ds", [0], None, "cmp", True)
    with pytest.raises(ConfigError, match="seeds"):
        seed_list(0)
    with pytest.raises(ConfigError, match="at least 2 distinct"):
        compare_overrides(["scratch", "scratch"], "s3://b/ds", [0], None, "cmp", True)
    spec = load_sweep(None, ["model.arch=resnet10t", *compare_overrides(["bb@champion", "scratch"], "s3://b/ds",
                                                                         seed_list(2), None, "cmp", True)])
    configs = {(t.config.init, t.config.backbone, t.config.train.seed): t.config for t in spec.trials}
    assert sorted(configs) == [("backbone", "bb@champion", 0), ("backbone", "bb@champion", 1),
                               ("scratch", "", 0), ("scratch", "", 1)]
    assert configs[("scratch", "", 1)].tracking.run_name == "cmp-init_scratch-seed_1"
    assert spec.sweep.reference == "bb@champion" and spec.sweep.in_process

    # --protocols and --label-fractions add the grid axes the label-efficiency curve needs
    spec = load_sweep(None, ["model.arch=resnet10t", *compare_overrides(
        ["bb@champion", "scratch"], "s3://b/ds", seed_list(1), "scratch", "cmp", True, ["linear", "knn"], [1, 0.1])])
    cells = {(t.config.init, t.config.protocol, t.config.data.label_fraction) for t in spec.trials}
    assert len(spec.trials) == 8 and cells == {(i, p, f) for i in ("backbone", "scratch")
                                               for p in ("linear", "knn") for f in (0.1, 1.0)}
    assert spec.sweep.reference == "scratch"
    with pytest.raises(ConfigError, match="--protocols"):
        compare_overrides(["a@b", "scratch"], "s3://b/ds", [0], None, "cmp", True, ["lora"])
    with pytest.raises(ConfigError, match="--label-fractions"):
        compare_overrides(["a@b", "scratch"], "s3://b/ds", [0], None, "cmp", True, None, [0.1, 0])


def test_multi_label_predictions_file_round_trip(tmp_path):
    import numpy as np

    from radimagenet.tasks.downstream import read_predictions, write_predictions
    from radimagenet.tasks.finetune_config import TaskSpec

    spec = TaskSpec("classification", "multilabel", ("effusion", "nodule", "mass"), -1)
    labels = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], np.int8)
    probs = np.array([[.9, .1, .7], [.2, .8, .3], [.1, .2, .3]])
    class Out:  # what the engine's Outputs hold
        keys = ["k0", "k1", "k2"]
        arrays = {"label": labels, "probs": probs, "patient": np.array(["p0", "p1", "p1"])}

        def __len__(self) -> int:
            return 3

    out = Out()
    path = tmp_path / "test.csv"
    write_predictions(out, spec, str(path))
    text = path.read_text()
    assert text.splitlines()[1].split(",")[:3] == ["k0", "p0", "effusion|mass"]
    pred = read_predictions(text, multi_label=True)
    assert (pred.labels == labels).all() and np.allclose(pred.probs, probs) and pred.classes == list(spec.classes)


def test_protocols_imply_their_settings_and_refuse_what_does_not_fit():
    from radimagenet.tasks.finetune_config import protocol_settings

    linear = resolve(cfg("protocol=linear"))
    assert linear.train.freeze == "all" and linear.eval.log_model
    knn = resolve(cfg("protocol=knn", "eval.knn_k=5"))
    assert (knn.eval.log_model, knn.registry.register, knn.eval.gradcam_samples) == (False, False, 0)
    assert protocol_settings(knn) == knn and resolve(cfg()).protocol == "finetune"
    with pytest.raises(ConfigError, match="protocol=linear trains only the head"):
        validate(cfg("protocol=linear", "train.freeze=top10"))
    with pytest.raises(ConfigError, match="protocol=knn applies to task=classification"):
        validate(cfg("protocol=knn", "task=segmentation", "train.monitor=val/dice"))
    with pytest.raises(ConfigError, match="eval.knn_k"):
        validate(cfg("protocol=knn", "eval.knn_k=0"))
