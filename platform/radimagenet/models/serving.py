"""The MLflow pyfunc face of a registered model: a DataFrame whose column ``image`` holds encoded files
(DICOM, PNG, JPEG) as bytes, or as base64 text (HTTP ``dataframe_split`` JSON), in; one ``p_<class>``
probability column per class, ``predicted`` (the class name) and ``error`` (why a row could not be read,
else empty) out. Segmentation models answer ``lesion_fraction`` and ``mask`` (a base64 PNG, 0/255).

    package("weights-and-record/", "pyfunc-model/")       # what registry.register logs and registers
    model = mlflow.pyfunc.load_model("models:/radimagenet-demo@champion")
    model.predict(pd.DataFrame({"image": [open("scan.dcm", "rb").read()]}))

``mlflow models serve -m models:/NAME@alias --env-manager local`` answers ``POST /invocations`` with the
same numbers as ``radimagenet predict`` (:mod:`.inference` is the one path of both).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import shutil
import tempfile
import threading
from typing import Any

import numpy as np

from radimagenet.io import pyfunc
from radimagenet.models.bundle import PYFUNC_ARTIFACT, load_dir, model_files, read_record
from radimagenet.models.inference import Predictor, pick_device
from radimagenet.models.record import BackboneRecord

IMAGE_COLUMN = "image"
CODE_FILE = os.path.join(os.path.dirname(__file__), "pyfunc_code.py")
BATCH = 32
_ONE_AT_A_TIME = threading.Lock()


def prob_column(name: str) -> str:
    """The ``p_<class>`` column of a class (predictions/test.csv and predict use the same names)."""
    return f"p_{name}"


def output_columns(record: BackboneRecord) -> list[tuple[str, str]]:
    """``(column, mlflow type)`` of the answer for this record's task."""
    if record.task == "segmentation":
        return [("lesion_fraction", "double"), ("mask", "string"), ("error", "string")]
    return [(prob_column(c), "double") for c in record.classes] + [("predicted", "string"), ("error", "string")]


def example_png(size: int) -> bytes:
    """A small grey gradient PNG (the logged input example; a flat image would be rejected as blank)."""
    from PIL import Image

    ramp = np.linspace(0, 255, size * size).reshape(size, size)
    buf = io.BytesIO()
    Image.fromarray((ramp * 0.5 + ramp.T * 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def package(local_dir: str, dst: str) -> str:
    """Write the pyfunc model folder ``dst`` for the model in ``local_dir`` (its files are copied under
    ``artifacts/backbone/``); returns ``dst``."""
    import pandas as pd

    from radimagenet import __version__

    record = read_record(local_dir)
    versions = record.versions or {}
    requirements = [f"radimagenet=={__version__}"] + [  # torch's local tag (+cu130) is no pip requirement
        f"{pkg}=={versions[pkg].split('+')[0]}" if versions.get(pkg) else pkg for pkg in ("torch", "timm")
    ]
    if record.task == "segmentation":
        requirements.append("segmentation-models-pytorch")
    example = pd.DataFrame({IMAGE_COLUMN: [example_png(int(record.input_size[1]))]})
    with tempfile.TemporaryDirectory(prefix="radimagenet-package-") as tmp:
        staged = os.path.join(tmp, PYFUNC_ARTIFACT)  # MLflow names the copy after the folder
        shutil.copytree(model_files(local_dir), staged)
        pyfunc.save_model(dst, CODE_FILE, {PYFUNC_ARTIFACT: staged}, inputs=[(IMAGE_COLUMN, "binary")],
                          outputs=output_columns(record), input_example=example, pip_requirements=requirements,
                          metadata={"radimagenet_task": record.task, "classes": list(record.classes)})
    return dst


def load_artifacts(artifacts: dict[str, str]) -> Predictor:
    """The pyfunc model's state: a :class:`Predictor` from ``artifacts/backbone/`` (GPU when present)."""
    record, model = load_dir(artifacts[PYFUNC_ARTIFACT])
    device = pick_device()
    return Predictor(model.to(device).eval(), record, device)


def as_bytes(value: Any) -> bytes:
    """One cell of the ``image`` column: bytes as they are, text as base64 (HTTP JSON)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode("".join(value.split()), validate=True)  # MLflow's base64 has line breaks
        except (binascii.Error, ValueError):
            raise ValueError("not base64 text") from None
    raise ValueError(f"expected encoded file bytes or base64 text, got {type(value).__name__}")


def predict_frame(predictor: Predictor, frame: Any) -> Any:
    """The answer for ``frame[IMAGE_COLUMN]``, one row per input (errors per row; the rest go on)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or IMAGE_COLUMN not in frame.columns:
        raise ValueError(f"expected a DataFrame with an {IMAGE_COLUMN!r} column of encoded images")
    with _ONE_AT_A_TIME:  # MLflow's server runs requests in threads; the decoder's warning filters are global
        return _answer(predictor, frame)


def _answer(predictor: Predictor, frame: Any) -> Any:
    """:func:`predict_frame` under its lock. A cell that is neither bytes nor base64 text is ``bad_input``."""
    import pandas as pd

    from radimagenet.ingest.decode import Rejected

    images: dict[int, np.ndarray] = {}
    errors = [""] * len(frame)
    for i, value in enumerate(frame[IMAGE_COLUMN].tolist()):
        try:
            images[i] = predictor.decode(as_bytes(value))
        except Rejected as exc:
            errors[i] = f"{exc.reason}: {exc.detail}"
        except ValueError as exc:
            errors[i] = f"bad_input: {exc}"
    answers = run_all(predictor, images)
    if predictor.task == "segmentation":
        rows = [mask_answer(answers.get(i)) for i in range(len(frame))]
        return pd.DataFrame({"lesion_fraction": [r[0] for r in rows], "mask": [r[1] for r in rows], "error": errors})
    probs = np.full((len(frame), len(predictor.classes)), np.nan)
    for i, p in answers.items():
        probs[i] = p
    out = pd.DataFrame({prob_column(c): probs[:, k].astype(np.float64) for k, c in enumerate(predictor.classes)})
    out["predicted"] = [predictor.predicted(probs[i]) if i in answers else "" for i in range(len(frame))]
    out["error"] = errors
    return out


def run_all(predictor: Predictor, images: dict[int, np.ndarray], batch: int = BATCH) -> dict[int, np.ndarray]:
    """``predictor.run`` over ``images`` (row -> stored image) in batches; row -> answer."""
    rows, out = sorted(images), {}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out.update(zip(chunk, predictor.run([images[i] for i in chunk]), strict=True))
    return out


def mask_answer(lesion: np.ndarray | None) -> tuple[float, str]:
    """``(lesion_fraction, base64 PNG of the 0/255 mask)`` of one lesion-probability map."""
    from PIL import Image

    if lesion is None:
        return float("nan"), ""
    mask = lesion >= 0.5
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return float(mask.mean()), base64.b64encode(buf.getvalue()).decode("ascii")
