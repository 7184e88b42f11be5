"""A model ready to answer on new files: decoded as the ingest decoded its training images, then
preprocessed from its record (:func:`radimagenet.data.transforms.preprocess`), then run.

    p = load_predictor("radimagenet-demo@champion")       # or models:/NAME@alias, NAME/3, a local folder
    image = p.decode("scan.dcm")                          # uint8 [S, S] as in the dataset; raises Rejected
    probs = p.run([image])                                # classification: [B, classes] softmax (multi-label: sigmoid)
    lesion = p.run([image])                               # segmentation: [B, S', S'] lesion probability

One path for every consumer: ``radimagenet predict`` (:mod:`.predict`), the MLflow pyfunc model
(:mod:`.serving`) and the export checks all go through :meth:`Predictor.decode` and :meth:`Predictor.run`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radimagenet.dataset.format import LABEL_SEP
from radimagenet.errors import ConfigError
from radimagenet.ingest import decode
from radimagenet.io import tracking
from radimagenet.models.bundle import load_dir, model_files
from radimagenet.models.record import BackboneRecord


def decode_config(record: BackboneRecord) -> Any:
    """The ingest's decoding for this model's dataset (its windows and multi-frame policy; ingest defaults
    for records made before they were kept). DICOMs that declare burned-in text are read anyway: the
    ingest refuses them to keep text out of shared datasets, and predict shares nothing."""
    settings = record.ingest or {}
    defaults = decode.DecodeConfig()
    windows = {k: (float(v[0]), float(v[1])) for k, v in (settings.get("windows") or defaults.windows).items()}
    return decode.DecodeConfig(windows=windows, multiframe=settings.get("multiframe", defaults.multiframe),
                               allow_burned_in=True)


@dataclass
class Predictor:
    """A loaded model with its record, device and decoding (build it with :func:`load_predictor`)."""

    model: Any
    record: BackboneRecord
    device: Any
    decode_cfg: Any = None
    stored_size: int = 0  # the dataset's image size: ingest resizes every image to it before storing
    ref: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.decode_cfg = self.decode_cfg or decode_config(self.record)
        self.stored_size = int(self.stored_size or (self.record.ingest or {}).get("image_size")
                               or self.record.input_size[1])

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)

    def predicted(self, probs: np.ndarray) -> str:
        """The ``predicted`` cell of one image's probabilities: the most probable class, or (multi-label)
        every label at probability >= 0.5 joined by ``|`` (empty when none is)."""
        if self.record.multi_label:
            return LABEL_SEP.join(c for c, p in zip(self.classes, probs, strict=True) if p >= 0.5)
        return self.classes[int(np.argmax(probs))]

    def read(self, source: str | bytes) -> np.ndarray:
        """A file (path, or its bytes) decoded by ingest's ``decode_file``: uint8 grey, full size.
        Raises :class:`radimagenet.ingest.decode.Rejected` (the ingest's reasons)."""
        if isinstance(source, bytes | bytearray | memoryview):
            with tempfile.NamedTemporaryFile(prefix="radimagenet-predict-") as f:  # decode_file reads a path
                f.write(bytes(source))
                f.flush()
                return self.read(f.name)
        if not os.path.isfile(source):
            raise decode.Rejected("missing_file", "the file does not exist or is not a file")
        try:
            return decode.decode_file(source, self.decode_cfg).image
        except decode.Rejected:
            raise
        except Exception as exc:  # noqa: BLE001 - as ingest: a bug on one file is that file's reason
            raise decode.Rejected("decode_failed", f"{type(exc).__name__}: {exc}") from None

    def stored(self, image: np.ndarray) -> np.ndarray:
        """A decoded image as the dataset stores it: ingest's resize to the dataset's image size."""
        return decode.resize(image, self.stored_size)

    def decode(self, source: str | bytes) -> np.ndarray:
        """:meth:`read` then :meth:`stored`: the image the model's training data would hold for the file."""
        return self.stored(self.read(source))

    def batch(self, images: list[np.ndarray]) -> Any:
        """The model's input ``[B, C, S, S]`` on its device, from stored-size uint8 images."""
        from radimagenet.data.transforms import preprocess

        return preprocess(np.stack(images), self.record).to(self.device)

    def run(self, images: list[np.ndarray]) -> np.ndarray:
        """Classification: softmax probabilities ``[B, classes]`` (float32; a multi-label model: each label's
        sigmoid). Segmentation: the lesion probability per pixel ``[B, S, S]`` at the model's input size."""
        import torch

        with torch.inference_mode():
            out = self.model(self.batch(images)).float()
            if self.task == "segmentation":
                out = out[:, 0].sigmoid()
            else:
                out = out.sigmoid() if self.record.multi_label else out.softmax(dim=1)
        return out.cpu().numpy()


def pick_device(device: str = "") -> Any:
    """``device``, else the GPU when there is one, else the CPU."""
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def is_local(ref: str) -> bool:
    """Whether ``ref`` names a local model folder (rather than a registry reference)."""
    return os.path.isdir(ref)


def load_predictor(ref: str, *, device: str = "", tracking_uri: str = "") -> Predictor:
    """A :class:`Predictor` for ``models:/NAME@alias``, ``NAME@alias``, ``NAME/VERSION``, ``NAME`` (latest)
    or a local model folder (``backbone.json`` + ``model.safetensors``, or a pyfunc model folder).
    Reads the registry only: nothing is logged to MLflow."""
    meta = {"ref": ref}
    if is_local(ref):
        record, model = load_dir(model_files(ref))
    else:
        uri = tracking.tracking_uri(tracking_uri)
        tracking.check_reachable(uri)
        mv = tracking.resolve_backbone(uri, ref)
        with tempfile.TemporaryDirectory(prefix="radimagenet-predict-") as tmp:
            record, model = load_dir(tracking.download_backbone(uri, mv, dst=tmp))
        meta |= {"name": mv.name, "version": str(mv.version)}
    if record.task == "classification" and not record.num_classes:
        raise ConfigError(f"{ref}: a backbone pretrained with objective={record.objective} has no head and no classes "
                          "to predict; fine-tune it first (radimagenet finetune backbone=...), or embed images with "
                          "radimagenet.models.registry.load(ref, num_classes=0) in a notebook")
    if record.task == "classification" and len(record.classes) != record.num_classes:
        raise ConfigError(f"{ref}: the record names {len(record.classes)} classes for {record.num_classes} outputs")
    dev = pick_device(device)
    return Predictor(model.to(dev).eval(), record, dev, ref=ref, meta=meta)


def from_model(model: Any, record: BackboneRecord, device: str = "") -> Predictor:
    """A :class:`Predictor` around an in-memory model (notebooks, tests)."""
    dev = pick_device(device)
    return Predictor(model.to(dev).eval(), record, dev)
