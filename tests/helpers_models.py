"""Model folders and input files for the predict, serving and export tests: a tiny classifier or U-Net
saved as a registry version is (``backbone.json`` + ``model.safetensors``), and a folder mixing DICOM,
PNG and JPEG files with broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

CLASSES = ["CT/lung/nodule", "MR/knee/acl", "US/thyroid/normal"]
MANIFEST = {"classes": CLASSES, "image_size": 64, "digest": "sha256:test",
            "ingest": {"image_size": 64, "multiframe": "middle", "windows": {"CT": [40.0, 400.0]}}}
BROKEN = ("broken.dcm", "truncated.png")


def model_dir(path: Path, task: str = "classification", arch: str = "resnet10t", seed: int = 0) -> Path:
    """A randomly initialised model folder (seeded), as :func:`radimagenet.models.registry.register` takes it."""
    import torch

    from radimagenet.models.bundle import build_model
    from radimagenet.models.record import make_record
    from radimagenet.models.weights import save_weights

    record = make_record(arch, MANIFEST, image_size=48)
    record.task = task
    torch.manual_seed(seed)
    model = build_model(record)
    path.mkdir(parents=True, exist_ok=True)
    save_weights(str(path / "model.safetensors"), model)
    (path / "backbone.json").write_text(record.to_json())
    return path


def mixed_inputs(root: Path, dicoms: int = 6) -> tuple[Path, dict[str, str]]:
    """``root/inputs/``: synthetic DICOMs, PNG and JPEG copies of some, and two broken files.
    Returns the folder and ``{file name: kind}``."""
    from PIL import Image

    from radimagenet.ingest.decode import decode_file
    from radimagenet.ops.synth import synthesize

    synthesize(root / "corpus", dicoms, seed=3, clean=True)
    folder = root / "inputs"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    kinds = {}
    dcms = sorted((root / "corpus" / "images").glob("*.dcm"))
    for src in dcms:
        shutil.copy(src, folder / src.name)
        kinds[src.name] = "dicom"
    for i, src in enumerate(dcms[:3]):
        grey = decode_file(src).image
        name = f"sub/image{i}.png" if i < 2 else f"sub/image{i}.jpg"
        Image.fromarray(grey).save(folder / name, quality=95)
        kinds[name] = "png" if i < 2 else "jpeg"
    (folder / BROKEN[0]).write_bytes(b"DICM? no: just text pretending to be an image")
    png = (folder / "sub/image0.png").read_bytes()
    (folder / BROKEN[1]).write_bytes(png[: len(png) // 3])
    kinds.update(dict.fromkeys(BROKEN, "broken"))
    return folder, kinds


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probabilities(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
