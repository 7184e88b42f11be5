"""The pixel text check: which inputs it applies to, and a CPU text detector that finds text regions
(burned-in names, dates, record numbers) in a decoded image. Ingest rejects images with any
(reason ``burned_in_text``) when ``--text-check`` asks for it.

    boxes = detect_text(image)                   # uint8 HxW -> [(x0, y0, x1, y1), ...] in image pixels
    checks("sc-us", "dicom", "1.2.840.10008.5.1.4.1.1.7", "OT")   # True: a secondary capture

The detector is the PP-OCRv4 text *detection* model that ships inside the ``rapidocr-onnxruntime``
wheel (extra ``textcheck``; nothing is downloaded, ever). Recognition is never run: no text in the
pixels is ever read into memory as a string, only where it is. One detector per process, made on first
use; the image is scaled so its longer side is :data:`DETECTOR_SIDE` pixels (bounded time and memory
whatever the input size; small images are enlarged, which finds small text).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from radimagenet.errors import ConfigError

TEXT_CHECK_MODES = ("off", "sc-us", "all")
EXTRA = "textcheck"
#: Secondary Capture Image Storage; its multi-frame variants are 1.2.840.10008.5.1.4.1.1.7.1 to .7.4.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Ultrasound (multi-frame) image storage, current and retired, and Enhanced US Volume.
ULTRASOUND_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.6.2",
})
#: The detector sees the image scaled so its longer side is this many pixels (a multiple of 32).
DETECTOR_SIDE = 736
#: DB post-processing thresholds: pixel text probability, mean box score, box growth.
DETECTOR_SETTINGS = {"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6, "use_dilation": True,
                     "score_mode": "fast", "max_candidates": 1000}

#: A detection counts as text only when it is shaped like a line of text: its long side at least this
#: many times its short side (3 characters or more), its short side (the line height) at most this
#: fraction of the image's longer side. The detector also marks round or blocky anatomy (a vertebra,
#: a cyst, a body outline) at aspect 1.3 to 2; planted text lines measure 3.7 or more.
MIN_ASPECT = 2.5
MAX_LINE_FRACTION = 0.1

Box = tuple[int, int, int, int]


def checks(mode: str, source_format: str, sop_class: str, modality: str) -> bool:
    """Whether an input is text-checked under ``mode``: ``off`` none; ``all`` every image; ``sc-us``
    DICOM secondary captures (SOP class 1.2.840.10008.5.1.4.1.1.7 and .7.x), ultrasound (Modality US
    or an ultrasound SOP class), and every PNG/JPEG input (exports and screenshots: no header says
    what they are, and nothing else guards them against burned-in text)."""
    if mode == "off":
        return False
    if mode == "all" or source_format != "dicom":
        return True
    uid = sop_class.strip()
    return (uid == SECONDARY_CAPTURE or uid.startswith(SECONDARY_CAPTURE + ".") or uid in ULTRASOUND_CLASSES
            or modality.strip().upper() == "US")


def require_detector(mode: str) -> None:
    """ConfigError unless ``mode`` is known and, when it checks anything, the detector is installed."""
    if mode not in TEXT_CHECK_MODES:
        raise ConfigError(f"--text-check must be one of {', '.join(TEXT_CHECK_MODES)}, got {mode!r}")
    if mode == "off":
        return
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--text-check {mode} needs the text detector, which is not installed or cannot be "
                          f"loaded ({exc}); install the extra: pip install 'radimagenet[{EXTRA}]'") from None


@functools.cache
def _detector() -> Any:
    """This process's detector (made once: ~0.3 s). Threads: $OMP_NUM_THREADS (Ray sets it to a task's
    CPUs), else onnxruntime's default (all cores)."""
    from pathlib import Path

    import rapidocr_onnxruntime
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

    model = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    threads = os.environ.get("OMP_NUM_THREADS", "")
    n = int(threads) if threads.isdigit() and int(threads) > 0 else -1
    config = {"model_path": str(model), "limit_side_len": 4096, "limit_type": "max",  # we size the input
              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "intra_op_num_threads": n,
              "inter_op_num_threads": n, "use_cuda": False, "use_dml": False, **DETECTOR_SETTINGS}
    return TextDetector(config)


def _detector_input(image: np.ndarray, side: int) -> tuple[np.ndarray, float, float]:
    """The image as the detector's BGR input (longer side ``side``, both sides multiples of 32) and the
    factors that map its coordinates back to the image's."""
    import cv2

    h, w = image.shape[:2]
    scale = side / max(h, w)
    dh, dw = (max(32, round(n * scale / 32) * 32) for n in (h, w))
    grey = np.ascontiguousarray(image, dtype=np.uint8)
    interpolation = cv2.INTER_AREA if dh < h else cv2.INTER_LINEAR
    resized = cv2.resize(grey, (dw, dh), interpolation=interpolation)
    return cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR), w / dw, h / dh


def detect_text(image: np.ndarray, side: int = DETECTOR_SIDE) -> list[Box]:
    """The text regions of a uint8 2-D image, as (x0, y0, x1, y1) pixel boxes of the image (empty: none),
    found on the image scaled to ``side`` pixels on its longer side. Only where text is, never what it
    says (no recognition model is loaded)."""
    if image.ndim != 2:
        raise ValueError(f"detect_text takes a 2-D grey image, got shape {image.shape}")
    bgr, sx, sy = _detector_input(image, side)
    quads, _ = _detector()(bgr)
    if quads is None or len(quads) == 0:
        return []
    boxes = []
    for quad in np.asarray(quads, dtype=np.float64):
        x0, y0 = quad.min(axis=0)
        x1, y1 = quad.max(axis=0)
        box = (int(x0 * sx), int(y0 * sy), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
        if _line_shaped(box, max(image.shape)):
            boxes.append(box)
    return boxes


def _line_shaped(box: Box, longer_side: int) -> bool:
    """Whether a box is shaped like a line of text (:data:`MIN_ASPECT`, :data:`MAX_LINE_FRACTION`);
    vertical lines count too."""
    w, h = box[2] - box[0], box[3] - box[1]
    short, long = max(min(w, h), 1), max(w, h)
    return long >= MIN_ASPECT * short and short <= MAX_LINE_FRACTION * longer_side


def describe(boxes: list[Box], shape: tuple[int, ...]) -> str:
    """A reject detail: how many text regions, how much of the image, the largest box (never text)."""
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    x0, y0, x1, y1 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return (f"{len(boxes)} text region(s) in the pixels covering {100 * area / (shape[0] * shape[1]):.1f}% "
            f"of the image (largest {x1 - x0} x {y1 - y0} px); --text-check off keeps such images")
