"""``radimagenet predict``: a registered model on local files, one CSV row per input.

    summary = predict_files(load_predictor("radimagenet-demo@champion"), ["scans/", "x.png"], "predictions.csv")

Inputs are DICOM, PNG or JPEG files, or folders (walked recursively, sorted; hidden files skipped).
Each is decoded as the ingest decodes (:class:`~radimagenet.models.inference.Predictor`), batched and
run on the GPU when there is one. Classification rows: ``path``, ``p_<class>`` per class (softmax,
written with ``repr``; a multi-label model: each label's sigmoid), ``predicted`` (multi-label: the labels at
p >= 0.5 joined by ``|``), ``error`` (``reason: detail`` when the file cannot be read; its
other cells empty) and, with ``gradcam_dir``, ``gradcam`` (the overlay PNG). Segmentation rows:
``path``, ``lesion_fraction``, ``mask`` (a 0/255 PNG at the file's own size), ``error``.

It runs on the site machine and reads the registry only: the CSV names local paths and stays here;
nothing is logged to MLflow.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError
from radimagenet.ingest.decode import Rejected
from radimagenet.models.inference import Predictor
from radimagenet.models.serving import prob_column


@dataclass
class Summary:
    """What a predict run did."""

    inputs: int = 0
    predicted: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # reason -> count
    out: str = ""
    images_dir: str = ""  # Grad-CAM overlays or masks


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given; folders as their files (recursive, sorted, hidden names and folder links
    skipped). A path that does not exist stays in the list (its row says ``missing_file``)."""
    if not inputs:
        raise ConfigError("predict needs at least one INPUT (a file or a folder)")
    out: list[str] = []
    for given in inputs:
        if not os.path.isdir(given):
            out.append(given)
            continue
        for root, dirs, files in os.walk(given):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return out


def columns(predictor: Predictor, gradcam: bool) -> list[str]:
    """The CSV header for this model's task."""
    if predictor.task == "segmentation":
        return ["path", "lesion_fraction", "mask", "error"]
    return ["path", *(prob_column(c) for c in predictor.classes), "predicted", "error"] + (["gradcam"] if gradcam else [])


def image_name(index: int, path: str) -> str:
    """``<row>-<file name>.png``: unique per run, and findable from the CSV row."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).name)[:80]
    return f"{index:06d}-{stem}.png"


def predict_files(predictor: Predictor, inputs: list[str], out: str, *, batch_size: int = 32,
                  gradcam_dir: str = "", masks_dir: str = "", progress: bool = True) -> Summary:
    """Predict every input into the CSV ``out`` (see the module docstring); returns a :class:`Summary`.

    Files are decoded one after the other in this thread: the ingest's decoder turns pydicom's
    end-of-file warning into an error with ``warnings.catch_warnings``, which threads would race on.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if gradcam_dir and predictor.task != "classification":
        raise ConfigError("--gradcam explains classifiers; a segmentation model writes masks (--masks DIR)")
    if masks_dir and predictor.task != "segmentation":
        raise ConfigError("--masks is for segmentation models; a classifier's saliency is --gradcam DIR")
    paths = expand_inputs(inputs)
    images_dir = gradcam_dir or (masks_dir or f"{os.path.splitext(out)[0]}-masks"
                                 if predictor.task == "segmentation" else "")
    if images_dir:
        os.makedirs(images_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    summary = Summary(inputs=len(paths), out=out, images_dir=images_dir)
    header = columns(predictor, bool(gradcam_dir))
    with open(out, "w", newline="") as f, \
            tqdm(total=len(paths), unit="image", desc="predict", disable=not progress) as bar:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for start in range(0, len(paths), batch_size):
            chunk = list(enumerate(paths[start : start + batch_size], start))
            decoded = [_read(predictor, path) for _, path in chunk]
            for row in _rows(predictor, chunk, decoded, images_dir, bool(gradcam_dir)):
                if row["error"]:
                    reason = row["error"].split(":", 1)[0]
                    summary.errors[reason] = summary.errors.get(reason, 0) + 1
                else:
                    summary.predicted += 1
                writer.writerow(row)
            bar.update(len(chunk))
    return summary


def _read(predictor: Predictor, path: str) -> np.ndarray | str:
    """The decoded full-size image, or the ``reason: detail`` of why it cannot be read."""
    try:
        return predictor.read(path)
    except Rejected as exc:
        return f"{exc.reason}: {exc.detail}"


def _rows(predictor: Predictor, chunk: list[tuple[int, str]], decoded: list[np.ndarray | str],
          images_dir: str, gradcam: bool) -> Iterator[dict[str, Any]]:
    """The CSV rows of one batch, in input order."""
    ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    stored = [predictor.stored(decoded[i]) for i in ok]
    answers = dict(zip(ok, predictor.run(stored), strict=True)) if ok else {}
    cams = dict(zip(ok, _gradcams(predictor, stored), strict=True)) if gradcam and ok else {}
    for i, (index, path) in enumerate(chunk):
        if i not in answers:
            yield {"path": path, "error": decoded[i]}
            continue
        image_path = os.path.join(images_dir, image_name(index, path)) if images_dir else ""
        if predictor.task == "segmentation":
            fraction = _write_mask(answers[i], decoded[i].shape, image_path)
            yield {"path": path, "lesion_fraction": repr(fraction), "mask": image_path, "error": ""}
            continue
        p = answers[i]
        row = {"path": path, **{prob_column(c): repr(float(v)) for c, v in zip(predictor.classes, p, strict=True)},
               "predicted": predictor.predicted(p), "error": ""}
        if gradcam:
            from radimagenet.eval.explain import overlay_png

            overlay_png(stored[ok.index(i)], cams[i], image_path)
            row["gradcam"] = image_path
        yield row


def _gradcams(predictor: Predictor, stored: list[np.ndarray]) -> list[Any]:
    """Grad-CAM maps of the predicted class, one per image (CPU numpy)."""
    from radimagenet.eval.explain import gradcam

    return list(gradcam(predictor.model, predictor.batch(stored)).cpu().numpy())


def _write_mask(lesion: np.ndarray, shape: tuple[int, ...], path: str) -> float:
    """Threshold the lesion probability at 0.5, write it at the file's own size (nearest), and return
    the lesion's share of the image."""
    from PIL import Image

    mask = Image.fromarray((lesion >= 0.5).astype(np.uint8) * 255).resize(shape[::-1], Image.Resampling.NEAREST)
    mask.save(path, format="PNG")
    return float((np.asarray(mask) > 0).mean())
