"""DICOM writing for the synthetic corpus: the transfer syntax of each file (lossless encoders when
installed), complete Part 10 datasets full of PHI, and saving (optionally truncated)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from radimagenet.ops.synth.plan import Patient
from radimagenet.ops.synth.shapes import Pixels

_PRIVATE_CREATOR = "RADIMAGENET SYNTH PHI"


@functools.cache
def _encoders() -> dict[str, bool]:
    """Which lossless encoders are installed (pydicom's encoder availability API)."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    found = {}
    for uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        try:
            found[str(uid)] = bool(get_encoder(uid).is_available)
        except (NotImplementedError, ValueError):
            found[str(uid)] = False
    return found


def _choose_syntax(index: int, pixels: Pixels, images: int, seed: int, kind: str | None) -> str:
    """Transfer syntax of one file: mostly explicit VR LE, ~15% RLE, a few JPEG-LS/J2K/implicit/deflated."""
    from pydicom import uid

    if kind in ("truncated", "blank"):
        return str(uid.ExplicitVRLittleEndian)
    r = float(np.random.default_rng([seed, index, 7]).random())
    available = _encoders()
    rare = max(0.01, min(0.04, 4.0 / images))  # a handful per corpus (J2K is slow to encode)
    if r < rare and available.get(str(uid.JPEG2000Lossless)):
        return str(uid.JPEG2000Lossless)
    if r < 2 * rare and available.get(str(uid.JPEGLSLossless)):
        return str(uid.JPEGLSLossless)
    if r < 3 * rare:
        return str(uid.ImplicitVRLittleEndian)
    if r < 4 * rare:
        return str(uid.DeflatedExplicitVRLittleEndian)
    if r < 4 * rare + 0.15 and available.get(str(uid.RLELossless)):
        return str(uid.RLELossless)
    return str(uid.ExplicitVRLittleEndian)


_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}


def _dataset(px: Pixels, patient: Patient, sop_uid: str, index: int, syntax: str) -> Any:
    """A complete Part 10 dataset: patient/study/series/image modules, PHI, pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = _SOP_CLASSES[px.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = _SOP_CLASSES[px.modality]
    ds.SOPInstanceUID = sop_uid
    _patient_study_tags(ds, patient)
    ds.Modality = px.modality
    ds.BodyPartExamined = px.body_part
    ds.Manufacturer = "RadImageNet Synth"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if px.modality == "CT" else "OTHER"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.PixelSpacing = [round(px.spacing, 4), round(px.spacing, 4)]
    if px.rescale:
        ds.RescaleSlope, ds.RescaleIntercept = px.rescale
        ds.RescaleType = "HU"
    if px.window:
        ds.WindowCenter, ds.WindowWidth = px.window
    _image_pixel_tags(ds, px)
    _set_syntax(ds, px.array, syntax)
    return ds


def _patient_study_tags(ds: Any, p: Patient) -> None:
    """Patient, study and institution tags full of PHI, plus a private tag with PHI."""
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.OtherPatientIDs = p.other_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "O"
    ds.PatientAddress = p.address
    ds.InstitutionName = p.institution
    ds.InstitutionAddress = p.institution_address
    ds.ReferringPhysicianName = p.referrer
    ds.AccessionNumber = p.accession
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = p.study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.StudyInstanceUID = p.study_uid
    ds.SeriesInstanceUID = p.series_uid
    block = ds.private_block(0x0011, _PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", p.private_note)


def _image_pixel_tags(ds: Any, px: Pixels) -> None:
    """Image Pixel module for the stored array (native little endian bytes)."""
    arr = px.array
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = px.photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = px.bits_stored
    ds.HighBit = px.bits_stored - 1
    ds.PixelRepresentation = 1 if px.signed else 0
    ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _set_syntax(ds: Any, arr: np.ndarray, syntax: str) -> None:
    """Compress (RLE/JPEG-LS/J2K lossless) or just set the native transfer syntax."""
    from pydicom.uid import UID

    uid = UID(syntax)
    if uid.is_compressed:
        ds.compress(uid, arr, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid


def _syntax_name(syntax: str) -> str:
    """The transfer syntax's name (for synth.json)."""
    from pydicom.uid import UID

    return UID(syntax).name


def _write(ds: Any, path: Path, truncate: bool = False) -> None:
    """Save as Part 10; a planted truncated file is cut inside its pixel data."""
    ds.save_as(path, enforce_file_format=True)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - len(ds.PixelData) // 3])
