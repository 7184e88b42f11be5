"""DICOM files built by the decoding tests: a Part 10 header with Image Pixel tags, saved with native or
encapsulated (one item per frame) pixel data."""

from __future__ import annotations

from pathlib import Path

from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate


def dicom_header(tsyntax: str, rows: int, cols: int, *, bits: int = 16, samples: int = 1,
                 frames: int | None = None, **tags) -> Dataset:
    """A Part 10 dataset with Image Pixel tags and no pixel data yet."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.Modality, ds.PatientID = "OT", "HOSTILE-1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def save_encapsulated(path: Path, ds: Dataset, frames: list[bytes]) -> Path:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def save_native(path: Path, ds: Dataset, data: bytes) -> Path:
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds.save_as(path, enforce_file_format=True)
    return path
