"""Downstream classification: the RadImageNet head (global average pooling, dropout, softmax) on a
backbone, cross-entropy, the epoch with the lowest validation loss kept; after training, the test
report: AUC with patient- and image-level bootstrap 95% CIs, the operating point chosen on validation
(binary), accuracy, sensitivity/specificity, calibration (ECE), ROC, confusion-matrix and reliability
figures, Grad-CAM overlays and localisation scores.

Multi-label datasets (``ingest --multi-label``: several findings per image) train the same head with a
sigmoid per label and binary cross-entropy (``train.class_weights=balanced``: each label's positives
weighted negatives / positives); the report is :mod:`radimagenet.eval.multilabel` (macro and per-label
AUC, a threshold per label chosen on validation)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from radimagenet.tasks import downstream
from radimagenet.tasks.finetune_config import FinetuneConfig, TaskSpec


@dataclass
class ClassifyTask(downstream.DownstreamTask):
    name: str = "classification"
    _class_weight: Any = None  # train.class_weights=balanced: computed on first use

    def build_model(self) -> tuple[Any, Any]:
        from radimagenet.models.freeze import apply_freeze

        model, self.record = downstream.build_classifier(self.cfg, self.manifest, len(self.spec.classes))
        apply_freeze(model, self.cfg.train.freeze)
        return model, self.record

    @property
    def multi_label(self) -> bool:
        return self.spec.mode == "multilabel"

    def loss(self, outputs: Any, batch: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if self.multi_label:
            return F.binary_cross_entropy_with_logits(outputs.float(), batch.labels.to(outputs.device, non_blocking=True),
                                                      pos_weight=self._pos_weight(outputs.device))
        weight = None
        if self.cfg.train.class_weights == "balanced":  # n / (k * n_c) over the training images; 0 for absent classes
            if self._class_weight is None:
                counts = torch.tensor(self.train_class_counts(), dtype=torch.float32)
                self._class_weight = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), 0.0)
            weight = self._class_weight.to(outputs.device)
        return F.cross_entropy(outputs.float(), batch.labels.to(outputs.device, non_blocking=True), weight=weight,
                               label_smoothing=self.cfg.train.label_smoothing)

    def _pos_weight(self, device: Any) -> Any:
        """Multi-label ``train.class_weights=balanced``: negatives / positives per label (None: unweighted)."""
        import torch

        if self.cfg.train.class_weights != "balanced":
            return None
        if self._class_weight is None:
            pos = torch.tensor(self.train_class_counts(), dtype=torch.float32)
            n = self.data_metrics()["train/n_images"]
            self._class_weight = torch.where(pos > 0, (n - pos).clamp(min=0) / pos.clamp(min=1), 1.0)
        return self._class_weight.to(device)

    def outputs(self, outputs: Any, batch: Any) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        logits = outputs.float().cpu()
        meta = batch.meta or [{}] * len(batch.keys)  # evaluation batches carry each sample's .json
        patient = np.asarray([str(m.get("patient") or "") for m in meta], dtype=str)
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").mean(1)
            return {"probs": torch.sigmoid(logits).numpy(), "label": batch.labels.numpy().astype(np.int8),
                    "loss": loss.numpy(), "patient": patient}
        return {"probs": torch.softmax(logits, 1).numpy(), "label": batch.labels.numpy(),
                "loss": F.cross_entropy(logits, batch.labels, reduction="none").numpy(), "patient": patient}

    def metrics(self, split: str, out: Any) -> dict[str, float]:
        from radimagenet.eval import multilabel
        from radimagenet.eval.metrics import macro_auc

        n = len(out)
        metrics = {f"{split}/loss": float(out.arrays["loss"].mean()) if n else float("nan"),
                   f"{split}/n_images": float(n)}
        if n:
            metrics[f"{split}/n_patients"] = float(np.unique(downstream.patients_of(out)[0]).size)
            probs, labels = out.arrays["probs"], out.arrays["label"].astype(np.int64)
            if self.multi_label:  # label-wise accuracy at 0.5 during training (the report uses val thresholds)
                metrics |= {f"{split}/accuracy": float(((probs >= 0.5) == labels.astype(bool)).mean()),
                            f"{split}/auc": multilabel.macro_auc(probs, labels)}
            else:
                metrics |= {f"{split}/accuracy": float((probs.argmax(1) == labels).mean()),
                            f"{split}/auc": macro_auc(probs, labels)}
        return metrics

    def finish(self, model: Any, record: Any, ctx: Any, selected: dict[str, float]) -> dict[str, float]:
        """The best weights on test (and on val again, for the threshold); rank 0 writes the report."""
        from radimagenet.train.engine import evaluate, predict

        test = predict(model, self, "test", ctx)
        val, val_metrics = evaluate(model, self, "val", ctx)
        with downstream.report_dir(ctx) as out_dir:
            metrics = report(val, test, self.spec, self.cfg, out_dir)
            metrics |= selected | {"val/loss_best_weights": val_metrics["val/loss"]}
            gradcam_images = self.cfg.eval.gradcam_samples + (
                self.cfg.eval.gradcam_max_images if self.manifest.get("has_masks") else 0)
            if out_dir and gradcam_images:
                metrics |= write_gradcam(model, record, self.cfg, self.spec, self.manifest, out_dir)
            if out_dir:
                downstream.save_report(self.cfg, self.manifest, model, record, self.spec, test, metrics, out_dir)
        return metrics


def report(val: Any, test: Any, spec: TaskSpec, cfg: FinetuneConfig, out_dir: str | None) -> dict[str, float]:
    """Binary: AUC + bootstrap CIs (patient- and image-level) and the operating point chosen on validation;
    multiclass: macro AUC, balanced accuracy and macro sensitivity/specificity; both: the ECE. Figures go
    to ``out_dir`` when given. Test images without a patient pseudonym count as their own patients (warned)."""
    from radimagenet.eval import figures, metrics

    val_p, val_y = val.arrays["probs"], val.arrays["label"]
    test_p, test_y = test.arrays["probs"], test.arrays["label"]
    patients, missing = downstream.patients_of(test)
    if missing and out_dir:
        print(f"[radimagenet] warning: {missing} of {len(test)} test images have no patient pseudonym in their "
              "metadata: each counts as its own patient, so the patient-level CI is image-level for them",
              file=sys.stderr, flush=True)
    if spec.mode == "multilabel":
        return multilabel_report(val_p, val_y, test_p, test_y, patients, spec, cfg, out_dir)
    if spec.mode == "binary":
        pos = spec.positive
        threshold = metrics.choose_threshold(val_y == pos, val_p[:, pos], cfg.eval.threshold_rule)
        result = metrics.binary_report(test_y == pos, test_p[:, pos], threshold, patients=patients,
                                       n_boot=cfg.eval.n_boot, seed=cfg.train.seed)
        names = [f"not {spec.classes[pos]}", spec.classes[pos]]
        if out_dir:
            figures.roc_curve_png(test_y == pos, test_p[:, pos], os.path.join(out_dir, "plots", "roc.png"),
                                  threshold=threshold, title=f"test ROC ({spec.classes[pos]} vs rest)")
    else:
        result = metrics.multiclass_report(test_y, test_p, patients=patients, n_boot=cfg.eval.n_boot,
                                           seed=cfg.train.seed)
        result |= macro_sensitivity_specificity(np.asarray(result["confusion_matrix"]))
        names = list(spec.classes)
        if out_dir:
            for k in np.unique(test_y):
                figures.roc_curve_png(test_y == k, test_p[:, k], os.path.join(out_dir, "plots", f"roc_class_{k}.png"),
                                      title=f"test ROC: {spec.classes[k]} vs rest")
    if out_dir:
        figures.confusion_matrix_png(result["confusion_matrix"], names,
                                     os.path.join(out_dir, "plots", "confusion_matrix.png"))
        figures.reliability_diagram_png(test_p, test_y, os.path.join(out_dir, "plots", "reliability.png"),
                                        title="test reliability")
    return metrics.scalar_metrics(result)


def multilabel_report(val_p: np.ndarray, val_y: np.ndarray, test_p: np.ndarray, test_y: np.ndarray,
                      patients: np.ndarray, spec: TaskSpec, cfg: FinetuneConfig, out_dir: str | None) -> dict[str, float]:
    """Multi-label: thresholds per label on validation, the :mod:`radimagenet.eval.multilabel` report,
    a ROC figure per scored label and the reliability diagram of every (image, label) probability."""
    from radimagenet.eval import figures, metrics, multilabel

    thresholds = multilabel.choose_thresholds(val_y, val_p, cfg.eval.threshold_rule)
    result = multilabel.multilabel_report(test_y, test_p, thresholds, patients=patients, n_boot=cfg.eval.n_boot,
                                          seed=cfg.train.seed)
    if out_dir:
        for k in multilabel.scored_labels(test_y):
            figures.roc_curve_png(test_y[:, k], test_p[:, k], os.path.join(out_dir, "plots", f"roc_class_{k}.png"),
                                  threshold=float(thresholds[k]), title=f"test ROC: {spec.classes[k]}")
        figures.reliability_diagram_png(*multilabel.flat_binary(test_y, test_p),
                                        os.path.join(out_dir, "plots", "reliability.png"),
                                        title="test reliability (every image x label)")
    return metrics.scalar_metrics(result)


def macro_sensitivity_specificity(cm: np.ndarray, prefix: str = "test") -> dict[str, float]:
    """One-vs-rest sensitivity and specificity averaged over the classes present (argmax predictions)."""
    total, tp = cm.sum(), np.diag(cm)
    pos, pred = cm.sum(1), cm.sum(0)
    present = pos > 0
    sens = tp[present] / pos[present]
    spec = (total - pos - pred + tp)[present] / np.maximum(total - pos[present], 1)
    return {f"{prefix}/sensitivity": float(sens.mean()), f"{prefix}/specificity": float(spec.mean())}


def write_gradcam(model: Any, record: Any, cfg: FinetuneConfig, spec: TaskSpec, manifest: dict,
                  out_dir: str) -> dict[str, float]:
    """Grad-CAM overlays for a sample of test images; with lesion masks, the localisation scores over
    (up to ``eval.gradcam_max_images``) lesion images: energy on the lesion, pointing-game hit rate."""
    from radimagenet.eval import explain

    energy, hits, area, saved, seen = [], [], [], 0, 0
    limit = max(cfg.eval.gradcam_samples, cfg.eval.gradcam_max_images if manifest.get("has_masks") else 0)
    device = next(model.parameters()).device
    for batch in downstream.test_batches(record, cfg, manifest):
        if seen >= limit:
            break
        target = spec.positive if spec.mode == "binary" else None
        cams = explain.gradcam(model, batch.images.to(device), target=target).cpu()
        for i in range(len(cams)):
            seen += 1
            mask = None if batch.masks is None else batch.masks[i, 0].numpy()
            if mask is not None and mask.any():
                energy.append(explain.localisation_score(cams[i], mask))
                hits.append(explain.pointing_game(cams[i], mask))
                area.append(float(mask.mean()))
            if saved < cfg.eval.gradcam_samples:
                explain.overlay_png(batch.images[i], cams[i], os.path.join(
                    out_dir, "gradcam", f"gradcam_{saved:03d}_{batch.keys[i]}_y{_label_tag(batch.labels[i])}.png"),
                    mask=mask if mask is not None and mask.any() else None, scale=max(1, 256 // batch.images.shape[-1]))
                saved += 1
    out = {"test/gradcam_images": float(saved)}
    if energy:
        out |= {"test/gradcam_energy_on_lesion": float(np.nanmean(energy)),
                "test/gradcam_pointing_game": float(np.mean(hits)),
                "test/gradcam_lesion_area_fraction": float(np.mean(area)),  # chance level of the energy score
                "test/gradcam_lesion_images": float(len(energy))}
    return out


def _label_tag(label: Any) -> str:
    """A Grad-CAM file's label part: the label id, or a multi-label image's ids joined by ``-``."""
    ids = [int(label)] if label.ndim == 0 else [int(k) for k in label.nonzero().flatten()]
    return "-".join(map(str, ids))
