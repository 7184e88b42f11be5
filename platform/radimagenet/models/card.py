"""The model card of a registered version (``MODEL_CARD.md`` beside its weights): generated from the
record, the resolved config, the training dataset's manifest and the metrics, never written by hand.

    text = model_card(record, name="radimagenet-ft-lesions-classification", kind="finetuned",
                      config=resolved_config_dict, manifest=manifest, metrics=test_metrics, tags=run_tags)

Sections: intended use (research, not diagnosis), data (digests, images per split, modality and class,
the split unit), preprocessing, training config, metrics (test AUC with its CIs; a backbone's validation
metrics), Grad-CAM examples (links to the run's artifacts) and known limitations (class imbalance,
overlap with the backbone's pretraining data, label fraction, image-level splits, small test sets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from radimagenet.dataset.format import modality_of, split_unit
from radimagenet.dataset.inspect import class_warnings, split_unit_warnings
from radimagenet.models.record import BackboneRecord

CARD_FILE = "MODEL_CARD.md"
SPLITS = ("train", "val", "test")
IMBALANCE_RATIO = 3.0  # most / fewest training images per class at or above which the card warns
SMALL_TEST_PATIENTS = 100  # fewer test patients than this: the card says the interval is wide
OVERLAP_TAG = "radimagenet.overlap"
# the config keys the card lists (the whole config is config.yaml beside the card)
TRAINING_KEYS = ("task", "init", "resolved_backbone", "model.arch", "data.image_size", "data.label_fraction",
                 "train.epochs", "train.batch_size", "scaling.num_workers", "train.optimizer", "train.lr",
                 "train.schedule", "train.warmup_epochs", "train.weight_decay", "train.label_smoothing",
                 "train.freeze", "train.class_weights", "train.monitor", "train.patience", "model.drop_rate",
                 "train.seed", "eval.threshold_rule", "eval.n_boot")


def model_card(record: BackboneRecord, *, name: str, kind: str, config: dict[str, Any], manifest: dict | None,
               metrics: dict[str, float], tags: dict[str, str] | None = None, examples: Sequence[str] = (),
               run_id: str = "") -> str:
    """The Markdown card of a ``kind`` (``backbone`` or ``finetuned``) model named ``name``. ``tags``: the
    training run's (backbone lineage, ``radimagenet.overlap``); ``examples``: links to the run's Grad-CAM
    overlays (segmentation: prediction overlays)."""
    tags, m = tags or {}, {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    flat = _flatten(config)
    parts = [_header(record, name, kind, flat, tags, run_id), _intended_use(record, kind, name),
             _data(record, manifest, m, flat, tags), _preprocessing(record), _training(flat, m),
             _metrics(record, kind, m, flat), _examples(record, kind, examples),
             _limitations(record, kind, manifest, m, flat, tags), _files(name)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _what(record: BackboneRecord, kind: str) -> str:
    if kind == "backbone":
        return "pretrained backbone (a classifier of its pretraining classes, for fine-tuning)"
    mode = "multi-label (a sigmoid per label)" if record.multi_label else \
        "binary" if record.num_classes == 2 else "multiclass"
    return "fine-tuned segmentation model (U-Net)" if record.task == "segmentation" else \
        f"fine-tuned {mode} classification model"


def _origin(flat: dict[str, Any], tags: dict[str, str]) -> str:
    init = flat.get("init", "")
    if init == "backbone":
        digest = tags.get("radimagenet.backbone_dataset_digest", "")
        pinned = flat.get("resolved_backbone") or tags.get("radimagenet.backbone", "")
        return f"registered backbone `{pinned}`" + (f" (pretrained on dataset `{digest}`)" if digest else "")
    return {"scratch": "random initialisation (scratch)", "imagenet": "timm's ImageNet weights"}.get(init, "")


def _header(record: BackboneRecord, name: str, kind: str, flat: dict, tags: dict, run_id: str) -> str:
    rows = [("kind", _what(record, kind)),
            ("architecture", f"`{record.arch}`, input {'x'.join(map(str, record.input_size))}"),
            ("classes", ", ".join(f"`{c}`" for c in record.classes) + f" ({len(record.classes)})")]
    if kind != "backbone":
        rows.append(("trained from", _origin(flat, tags)))
    rows.append(("training dataset", f"`{record.dataset_digest}`"))
    if run_id:
        rows.append(("MLflow run", f"`{run_id}`" + (f" ({flat['tracking.run_name']})" if flat.get("tracking.run_name")
                                                  else "")))
    versions = ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items()))
    rows.append(("software", versions or "-"))
    return (f"# Model card: {name}\n\n*Generated by radimagenet from the training run's record, config, dataset "
            "manifest and metrics; never edited by hand.*\n\n" + _table(("", ""), rows))


def _intended_use(record: BackboneRecord, kind: str, name: str) -> str:
    if kind == "backbone":
        use = (f"A starting point for fine-tuning on radiology tasks (`radimagenet finetune backbone={name}@<alias>`) "
               "and for image features; its own head predicts its pretraining classes only.")
    elif record.task == "segmentation":
        use = "Research on lesion segmentation in images like those of its training dataset (below)."
    elif record.multi_label:
        use = (f"Research on finding {', '.join(f'`{c}`' for c in record.classes)} (any number per image) in images "
               "like those of its training dataset (below).")
    else:
        use = (f"Research on telling {', '.join(f'`{c}`' for c in record.classes)} apart in images like those of its "
               "training dataset (below).")
    return ("## Intended use\n\n" + use + "\n\n**Research only: not a medical device.** It has not been validated "
            "for clinical use and must not be used for diagnosis, triage or any decision about a patient. Check it "
            "on your own data before drawing conclusions from it.")


def _data(record: BackboneRecord, manifest: dict | None, m: dict, flat: dict, tags: dict) -> str:
    lines = ["## Data", ""]
    if manifest is None:
        return "\n".join(lines + [f"Dataset digest `{record.dataset_digest}` (its manifest was not available)."])
    unit = split_unit(manifest)
    where = manifest.get("uri", flat.get("data.manifest", ""))
    lines += [f"- dataset: `{where}`, digest `{manifest.get('digest', '')}`",
              f"- split unit: **{unit}**" + {"patient": " (every patient's images in one split)",
                                              "image": " (each image its own unit: see the limitations)",
                                              "unknown": " (not recorded by the ingest)"}.get(unit, "")]
    if tags.get("radimagenet.backbone_dataset_digest"):
        lines.append(f"- the backbone's pretraining dataset: digest `{tags['radimagenet.backbone_dataset_digest']}`")
    if tags.get(OVERLAP_TAG):
        lines.append(f"- test images and patients also in the backbone's pretraining data: `{tags[OVERLAP_TAG]}`")
    if float(flat.get("data.label_fraction", 1.0) or 1.0) < 1:
        lines.append(f"- trained on a stratified, patient-level {float(flat['data.label_fraction']):.0%} share of the "
                     f"training split: {m.get('train/n_images', math.nan):.0f} images, "
                     f"{m.get('train/n_patients', math.nan):.0f} patients")
    splits = [s for s in (*SPLITS, *sorted(set(manifest.get("splits", {})) - set(SPLITS))) if s in manifest["splits"]]
    counts = {s: manifest["splits"][s].get("classes", {}) for s in splits}
    rows = [(f"`{c}`", modality_of(c), *(str(counts[s].get(c, 0)) for s in splits)) for c in manifest["classes"]]
    mods = sorted({modality_of(c) for c in manifest["classes"]})
    if len(mods) > 1:
        rows += [(f"all {mod}", mod, *(str(sum(n for c, n in counts[s].items() if modality_of(c) == mod))
                                       for s in splits)) for mod in mods]
    rows.append(("**images**", "", *(str(manifest["splits"][s].get("samples", 0)) for s in splits)))
    rows.append(("**patients**", "", *(str(manifest["splits"][s].get("patients", "-")) for s in splits)))
    table = _table(("class", "modality", *splits), rows)
    return "\n".join(lines) + "\n\nImages per split, modality and class:\n\n" + table


def _preprocessing(record: BackboneRecord) -> str:
    decode = ", ".join(f"{k} {v}" for k, v in sorted(record.ingest.items())) or "as its dataset's ingest"
    return ("## Preprocessing\n\n"
            f"Files are decoded as the dataset's ingest decoded them ({decode}) into grey uint8 images; then "
            f"pixels / 255 -> resize ({record.interpolation}) to {record.input_size[1]}x{record.input_size[2]} -> "
            f"{record.grey_to_channels} to {record.in_chans} channel(s) -> (x - mean) / std with mean "
            f"{list(record.mean)}, std {list(record.std)}. `backbone.json` holds this record; `radimagenet predict`, "
            "the pyfunc model and the exports apply it.")


def _training(flat: dict, m: dict) -> str:
    rows = [(f"`{k}`", f"`{flat[k]}`") for k in TRAINING_KEYS if flat.get(k) not in (None, "")]
    if "best_epoch" in m:
        rows.append(("kept epoch", f"{m['best_epoch']:.0f} (best `{flat.get('train.monitor', 'val/loss')}`)"))
    if "early_stop_epoch" in m:
        rows.append(("stopped early", f"after epoch {m['early_stop_epoch']:.0f}"))
    return "## Training\n\n" + _table(("setting", "value"), rows) + "\n\nThe whole resolved config: `config.yaml`."


def _metrics(record: BackboneRecord, kind: str, m: dict, flat: dict) -> str:
    split = "val" if kind == "backbone" else "test"
    lines = ["## Metrics", ""]
    if f"{split}/auc_ci_low" in m:
        g = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{split}/")}
        lines.append(f"**{split} AUC {g['auc']:.4f}** (95% CI {g['auc_ci_low']:.4f}-{g['auc_ci_high']:.4f}: a "
                     f"patient-level bootstrap of {flat.get('eval.n_boot', '?')} resamples; image-level "
                     f"{g.get('auc_image_ci_low', math.nan):.4f}-{g.get('auc_image_ci_high', math.nan):.4f}) on "
                     f"{g.get('n_images', math.nan):.0f} images of {g.get('n_patients', math.nan):.0f} patients.")
    elif f"{split}/dice" in m:
        lines.append(f"**{split} Dice {m[f'{split}/dice']:.4f}** over {m.get(f'{split}/n_images', math.nan):.0f} "
                     f"images ({m.get(f'{split}/dice_lesion', math.nan):.4f} over the "
                     f"{m.get(f'{split}/n_lesion', math.nan):.0f} with a lesion).")
    elif kind == "backbone":
        lines.append("Validation metrics of the last epoch (pretraining keeps no test split).")
    rows = [(f"`{k}`", _number(v)) for k, v in sorted(m.items()) if k.startswith(f"{split}/")]
    return "\n".join(lines) + ("\n\n" + _table(("metric", "value"), rows) if rows else "\n\nNo metrics were recorded.")


def _examples(record: BackboneRecord, kind: str, examples: Sequence[str]) -> str:
    if kind == "backbone":
        return ""
    title = "Prediction overlays" if record.task == "segmentation" else "Grad-CAM examples"
    if not examples:
        return f"## {title}\n\nNone were logged (`eval.gradcam_samples` / `eval.overlay_samples` was 0)."
    return (f"## {title}\n\nTest images from the training run (`mlflow artifacts download -u URI`):\n\n"
            + "\n".join(f"- [{uri.rsplit('/', 1)[-1]}]({uri})" for uri in examples))


def _limitations(record: BackboneRecord, kind: str, manifest: dict | None, m: dict, flat: dict, tags: dict) -> str:
    out = []
    if manifest is not None:
        train = manifest["splits"].get("train", {}).get("classes", {})
        present = {c: int(train.get(c, 0)) for c in manifest["classes"] if train.get(c, 0) > 0}
        if present and max(present.values()) >= IMBALANCE_RATIO * min(present.values()):
            most, least = max(present, key=present.get), min(present, key=present.get)
            out.append(f"**Class imbalance**: the training split holds {present[most]} `{most}` and {present[least]} "
                       f"`{least}` images ({present[most] / present[least]:.1f}:1); accuracy favours the larger class "
                       "(the AUC does not depend on it).")
        out += [f"**Split**: {w}." for w in split_unit_warnings(manifest)]
        out += [f"**Empty class**: {w}." for w in class_warnings(manifest)]
    overlap = tags.get(OVERLAP_TAG, "")
    if overlap.startswith("not checked"):
        out.append(f"**Overlap with the backbone's pretraining data**: {overlap}.")
    elif overlap and any(part.split("=")[-1] not in ("0", "n/a") for part in overlap.split()):
        out.append(f"**Overlap with the backbone's pretraining data**: the test split shares data with it ({overlap}):"
                   " the test metrics may be optimistic.")
    elif kind != "backbone" and flat.get("init") == "backbone" and not overlap:
        out.append("**Overlap with the backbone's pretraining data**: not checked (`data.overlap=off`).")
    if float(flat.get("data.label_fraction", 1.0) or 1.0) < 1:
        out.append(f"**Label fraction**: trained on {float(flat['data.label_fraction']):.0%} of the labelled training "
                   "images on purpose (a label-efficiency run); a model trained on all of them may do better.")
    patients = m.get("test/n_patients")
    if kind != "backbone" and patients is not None and patients < SMALL_TEST_PATIENTS:
        out.append(f"**Small test set**: {patients:.0f} patients; the confidence interval (Metrics) shows how "
                   "uncertain the figures are.")
    out.append(f"**One dataset**: trained and evaluated on one dataset (`{record.dataset_digest}`) split "
               "once; how it does on other sites, scanners, protocols and populations is unknown.")
    return "## Known limitations\n\n" + "\n".join(f"- {line}" for line in out)


def _files(name: str) -> str:
    return ("## Files and use\n\n`model.safetensors` (weights), `backbone.json` (the record above), `config.yaml`, "
            f"this card.\n\n```bash\nradimagenet predict {name}@<alias> scans/ --out predictions.csv\n"
            f"radimagenet registry show {name}@<alias>\n```")


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cells(row: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)])
