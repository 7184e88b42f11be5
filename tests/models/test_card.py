"""The model card from a hand-made record, config, manifest and metrics (no stack): every section the
issue asks for, and the limitations that apply (and only those)."""

from __future__ import annotations

import copy

import pytest

from radimagenet.models.card import model_card
from radimagenet.models.record import make_record

CLASSES = ["CT/liver/normal", "CT/liver/lesion"]
MANIFEST = {
    "uri": "s3://radimagenet/datasets/lesions", "digest": "sha256:" + "ab" * 32, "image_size": 64,
    "classes": CLASSES, "split_unit": "patient",
    "ingest": {"image_size": 64, "multiframe": "middle", "windows": {"CT": [40.0, 400.0]}},
    "splits": {"train": {"samples": 250, "patients": 60, "classes": {"CT/liver/normal": 200, "CT/liver/lesion": 50}},
               "val": {"samples": 40, "patients": 12, "classes": {"CT/liver/normal": 30, "CT/liver/lesion": 10}},
               "test": {"samples": 45, "patients": 14, "classes": {"CT/liver/normal": 33, "CT/liver/lesion": 12}}},
}
CONFIG = {"task": "classification", "init": "backbone", "backbone": "demo@champion", "resolved_backbone": "demo/3",
          "data": {"manifest": "s3://radimagenet/datasets/lesions/manifest.json", "label_fraction": 1.0},
          "train": {"epochs": 5, "lr": 0.0001, "optimizer": "adam", "freeze": "none", "seed": 0},
          "eval": {"n_boot": 1000}, "tracking": {"run_name": "ft-lesions"}}
METRICS = {"test/auc": 0.912, "test/auc_ci_low": 0.85, "test/auc_ci_high": 0.96, "test/auc_image_ci_low": 0.87,
           "test/auc_image_ci_high": 0.95, "test/accuracy": 0.88, "test/n_images": 45.0, "test/n_patients": 14.0,
           "best_epoch": 3.0, "train/n_images": 250.0}
TAGS = {"radimagenet.backbone": "demo/3", "radimagenet.backbone_dataset_digest": "sha256:" + "cd" * 32,
        "radimagenet.overlap": "images_exact=0 images_near=0 patients=0"}
GRADCAM = ["runs:/abc/gradcam/gradcam_000_k1_y1.png", "runs:/abc/gradcam/gradcam_001_k2_y0.png"]


def finetuned_card(manifest=MANIFEST, config=CONFIG, metrics=METRICS, tags=TAGS, examples=GRADCAM) -> str:
    record = make_record("resnet10t", manifest, image_size=64)
    return model_card(record, name="radimagenet-ft-lesions-classification", kind="finetuned", config=config,
                      manifest=manifest, metrics=metrics, tags=tags, examples=examples, run_id="abc")


def test_finetuned_card_has_every_section():
    card = finetuned_card()
    for heading in ("# Model card: radimagenet-ft-lesions-classification", "## Intended use", "## Data",
                    "## Preprocessing", "## Training", "## Metrics", "## Grad-CAM examples", "## Known limitations"):
        assert heading in card, heading
    assert "Research only: not a medical device" in card and "diagnosis" in card
    # data: both digests, the split unit, counts per split, modality and class
    assert MANIFEST["digest"] in card and TAGS["radimagenet.backbone_dataset_digest"] in card
    assert "split unit: **patient**" in card
    assert "| `CT/liver/lesion` | CT | 50 | 10 | 12 |" in card and "| **patients** |  | 60 | 12 | 14 |" in card
    assert "registered backbone `demo/3`" in card and "pretraining data: `images_exact=0 images_near=0 patients=0`" in card
    # training config, test metrics with both intervals, Grad-CAM links
    assert "| `train.lr` | `0.0001` |" in card and "| kept epoch | 3 (best `val/loss`) |" in card
    assert "**test AUC 0.9120** (95% CI 0.8500-0.9600" in card and "image-level 0.8700-0.9500" in card
    assert "| `test/accuracy` | 0.8800 |" in card
    assert "- [gradcam_000_k1_y1.png](runs:/abc/gradcam/gradcam_000_k1_y1.png)" in card
    # preprocessing from the record, decode settings from the dataset
    assert "resize (bilinear) to 64x64" in card and "windows {'CT': [40.0, 400.0]}" in card


def test_limitations_follow_the_data():
    card = finetuned_card()
    limits = card.split("## Known limitations", 1)[1]
    assert "**Class imbalance**: the training split holds 200 `CT/liver/normal` and 50 `CT/liver/lesion`" in limits
    assert "(4.0:1)" in limits and "**Small test set**: 14 patients" in limits
    assert "Overlap" not in limits and "Label fraction" not in limits and "**Split**" not in limits

    leaky = dict(TAGS, **{"radimagenet.overlap": "images_exact=2 images_near=1 patients=0"})
    assert "shares data with it (images_exact=2 images_near=1 patients=0)" in finetuned_card(tags=leaky)
    skipped = dict(TAGS, **{"radimagenet.overlap": "not checked: no dataset_uri"})
    assert "**Overlap with the backbone's pretraining data**: not checked: no dataset_uri." in finetuned_card(tags=skipped)

    image_split = copy.deepcopy(MANIFEST) | {"split_unit": "image"}
    balanced = copy.deepcopy(image_split)
    balanced["splits"]["train"]["classes"] = {"CT/liver/normal": 120, "CT/liver/lesion": 130}
    fraction = copy.deepcopy(CONFIG)
    fraction["data"]["label_fraction"] = 0.1
    card = finetuned_card(manifest=balanced, config=fraction)
    limits = card.split("## Known limitations", 1)[1]
    assert "**Split**: dataset is split image by image" in limits and "Class imbalance" not in limits
    assert "**Label fraction**: trained on 10% of the labelled training images" in limits
    assert "stratified, patient-level 10% share of the training split: 250 images" in card
    assert "split unit: **image**" in card


def test_backbone_card_has_validation_metrics_and_no_gradcam():
    manifest = copy.deepcopy(MANIFEST) | {"classes": ["CT/lung/nodule", "MR/knee/acl", "US/thyroid/normal"]}
    for split in manifest["splits"].values():
        split["classes"] = {"CT/lung/nodule": 10, "MR/knee/acl": 12, "US/thyroid/normal": 9}
    record = make_record("resnet50", manifest)
    card = model_card(record, name="radimagenet-resnet50", kind="backbone", config={"model": {"arch": "resnet50"}},
                      manifest=manifest, metrics={"val/accuracy": 0.8, "val/auc": 0.93, "val/n_images": 31.0,
                                                  "train/loss": 0.4})
    assert "pretrained backbone" in card and "finetune backbone=radimagenet-resnet50@<alias>" in card
    assert "| `val/auc` | 0.9300 |" in card and "train/loss" not in card and "Grad-CAM" not in card
    assert "| all MR | MR | 12 | 12 | 12 |" in card  # totals per modality when there are several
    assert "Research only" in card


@pytest.mark.parametrize("metrics", [{"test/dice": 0.71, "test/dice_lesion": 0.64, "test/n_images": 45.0,
                                      "test/n_lesion": 20.0}])
def test_segmentation_card(metrics):
    record = make_record("resnet10t", MANIFEST, image_size=64)
    record.task = "segmentation"
    card = model_card(record, name="seg", kind="finetuned", config=dict(CONFIG, task="segmentation"),
                      manifest=MANIFEST, metrics=metrics, tags=TAGS, examples=["runs:/abc/overlays/segmentation_000.png"])
    assert "fine-tuned segmentation model (U-Net)" in card and "**test Dice 0.7100** over 45 images" in card
    assert "## Prediction overlays" in card and "segmentation_000.png" in card
