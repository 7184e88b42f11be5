"""The ingest configuration: every setting that changes the output (and so the dataset digest)."""

from __future__ import annotations

from dataclasses import dataclass, field

from radimagenet.dataset.format import ENCODINGS
from radimagenet.errors import ConfigError
from radimagenet.ingest.sources import UNLABELED_MULTI_LABEL
from radimagenet.ingest.textcheck import TEXT_CHECK_MODES


@dataclass(frozen=True)
class IngestConfig:
    """Settings of one ``radimagenet ingest`` run."""

    source: str
    out: str
    labels: str | None = None
    image_size: int = 224
    encoding: str = "npy"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    shard_size: int = 256 * 1024 * 1024  # target bytes per shard (a shard closes once it passes this)
    workers: int = 1
    chunk_size: int = 64  # files per task
    take_over: bool = False  # take the output prefix's lease even from a holder that still renews it
    multiframe: str = "middle"
    windows: dict[str, tuple[float, float]] = field(default_factory=lambda: {"CT": (40.0, 400.0)})
    patient_from: str = "auto"  # auto | column | dicom | file (file: an alias of split_unit="image")
    split_unit: str = "patient"  # patient | image (each file its own unit)
    split_csv: dict[str, str] = field(default_factory=dict)  # split -> file listing its paths (filename,label)
    max_megapixels: float = 64.0  # largest decoded frame; larger inputs are rejected 'too_large'
    allow_burned_in: bool = False  # keep DICOMs with BurnedInAnnotation YES
    text_check: str = "off"  # off | sc-us | all: reject images with text in the pixels ('burned_in_text')
    multi_label: bool = False  # labels CSV cells list several |-separated findings per image
    unlabeled: bool = False  # no labels: the folder layout gives no class, a labels CSV's label column is ignored

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size > 4096:
            raise ConfigError(f"--image-size must be between 16 and 4096, got {self.image_size}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"--encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        fr = self.split_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ConfigError(f"--split fractions must be 3 non-negative numbers summing to 1, got {fr}")
        if self.shard_size < 1024:
            raise ConfigError(f"--shard-size must be at least 1 KiB, got {self.shard_size}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.multiframe not in ("middle", "first", "reject"):
            raise ConfigError(f"--multiframe must be middle, first or reject, got {self.multiframe!r}")
        if self.patient_from not in ("auto", "column", "dicom", "file"):
            raise ConfigError(f"--patient-from must be auto, column, dicom or file, got {self.patient_from!r}")
        self._check_split_unit()
        if self.unlabeled and self.multi_label:
            raise ConfigError(UNLABELED_MULTI_LABEL)
        if not 0 < self.max_megapixels < float("inf"):
            raise ConfigError(f"--max-megapixels must be a positive number, got {self.max_megapixels}")
        if self.text_check not in TEXT_CHECK_MODES:
            raise ConfigError(f"--text-check must be one of {', '.join(TEXT_CHECK_MODES)}, got {self.text_check!r}")

    def _check_split_unit(self) -> None:
        """``patient_from="file"`` and ``split_unit="image"`` are one setting: make both say it."""
        if self.split_unit not in ("patient", "image"):
            raise ConfigError(f"--split-unit must be patient or image, got {self.split_unit!r}")
        if self.split_unit == "image" and self.patient_from not in ("auto", "file"):
            raise ConfigError(f"--split-unit image takes each file as its own unit; drop --patient-from "
                              f"{self.patient_from}")
        if self.patient_from == "file" or self.split_unit == "image":
            object.__setattr__(self, "patient_from", "file")  # frozen: normalised once, here
            object.__setattr__(self, "split_unit", "image")
        unknown = sorted(set(self.split_csv) - {"train", "val", "test"})
        if unknown:
            raise ConfigError(f"--split-csv takes SPLIT=FILE with SPLIT train, val or test, got {unknown}")

    def fingerprint_fields(self) -> dict:
        """The settings that determine the output; a resumed ingest must match them."""
        return {
            "image_size": self.image_size,
            "encoding": self.encoding,
            "split_fractions": list(self.split_fractions),
            "shard_size": self.shard_size,
            "multiframe": self.multiframe,
            "windows": {k: list(v) for k, v in sorted(self.windows.items())},
            "patient_from": self.patient_from,
            "split_unit": self.split_unit,
            "max_megapixels": self.max_megapixels,
            "allow_burned_in": self.allow_burned_in,
            "text_check": self.text_check,
            **({"multi_label": True} if self.multi_label else {}),  # absent when off: older journals still match
            **({"unlabeled": True} if self.unlabeled else {}),
        }


def parse_size(text: str) -> int:
    """``"256MB"`` / ``"64KiB"`` / ``"1000000"`` -> bytes."""
    t = text.strip().upper().replace("IB", "B")
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    unit = next((u for u in units if t.endswith(u)), None)
    number, mult = (t[: -len(unit)].strip(), units[unit]) if unit else (t, 1)
    try:
        return int(float(number) * mult)
    except ValueError:
        raise ConfigError(f"cannot read size {text!r} (examples: 256MB, 64KB, 1000000)") from None
