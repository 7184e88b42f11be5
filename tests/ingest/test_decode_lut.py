"""Modality LUT and VOI LUT Sequences (PS3.3 C.11.1, C.11.2) as scanners write them: a non-linear VOI
LUT is applied instead of Window Center/Width (our precedence when both are present), through US or OW
LUT Data, 8-bit entries (4096 of them, packed or not), a first mapped value that is negative (SS, or US
as some scanners write it), after the rescale, and per frame in an enhanced image."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from helpers_dicom import dicom_header, save_native
from radimagenet.ingest.decode import DecodeConfig, Rejected, decode_file

SIZE = (64, 64)
ENTRIES = 4096


def stored(signed: bool = False) -> np.ndarray:
    """12-bit stored values covering 0..4095 (or -2048..2047) once each."""
    arr = np.arange(ENTRIES).reshape(SIZE)
    return (arr - 2048).astype(np.int16) if signed else arr.astype(np.uint16)


def sqrt_lut(bits: int = 12) -> np.ndarray:
    """A non-linear (square-root) table of ENTRIES entries, 0 .. 2^bits - 1."""
    return np.rint(np.sqrt(np.arange(ENTRIES) / (ENTRIES - 1)) * (2**bits - 1)).astype(np.int64)


def lut_item(table: np.ndarray, first: int, bits: int, *, vr: str = "US", first_vr: str = "US",
             packed: bool = False) -> Dataset:
    """A LUT item: descriptor (entries, first mapped value, bits) and the table as US, OW or OW with
    two 8-bit entries per word."""
    item = Dataset()
    item.LUTDescriptor = [ENTRIES % 65536, first, bits]
    item["LUTDescriptor"].VR = first_vr
    if vr == "US":
        item.LUTData = [int(v) for v in table]
    else:
        item.LUTData = table.astype("<u1" if packed else "<u2").tobytes()
    item["LUTData"].VR = vr
    return item


def write(tmp_path, arr: np.ndarray, name: str = "lut.dcm", **tags):
    ds = dicom_header(uid.ExplicitVRLittleEndian, *SIZE, BitsStored=12, HighBit=11, **tags)
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    return save_native(tmp_path / name, ds, arr.tobytes())


def through(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The expected uint8 image: the table at ``index``, its lowest..highest entry onto 0..255."""
    lo, hi = table.min(), table.max()
    return np.floor((table[np.clip(index, 0, ENTRIES - 1)] - lo) * 255 / (hi - lo) + 0.5)


def assert_maps_through(image: np.ndarray, table: np.ndarray, index: np.ndarray) -> None:
    assert np.abs(image.astype(int) - through(table, index)).max() <= 1  # float32 rounding
    linear = np.floor(np.clip(index, 0, ENTRIES - 1) * 255 / (ENTRIES - 1) + 0.5)
    assert np.abs(image.astype(int) - linear).max() > 60  # the LUT, not a linear window, was applied


@pytest.mark.parametrize("case", ["us", "ow", "bits8", "bits8_packed"])
def test_a_non_linear_voi_lut_is_applied(tmp_path, case):
    bits = 8 if case.startswith("bits8") else 12
    table = sqrt_lut(bits)
    vr = "US" if case == "us" else "OW"
    item = lut_item(table, 0, bits, vr=vr, packed=case == "bits8_packed")
    decoded = decode_file(write(tmp_path, stored(), VOILUTSequence=[item]))
    assert_maps_through(decoded.image, table, stored().astype(np.int64))
    assert decoded.meta["window"]["source"] == "file"


@pytest.mark.parametrize("first_vr", ["SS", "US"])
def test_a_negative_first_mapped_value_as_ss_or_us(tmp_path, first_vr):
    arr, table = stored(signed=True), sqrt_lut()
    first = -2048 if first_vr == "SS" else 65536 - 2048  # US: the same 16 bits, read unsigned
    item = lut_item(table, first, 16, first_vr=first_vr)
    image = decode_file(write(tmp_path, arr, VOILUTSequence=[item])).image
    assert_maps_through(image, table, arr.astype(np.int64) + 2048)


def test_the_voi_lut_maps_the_rescaled_values(tmp_path):
    arr, table = stored(), sqrt_lut()
    item = lut_item(table, -1024, 16, first_vr="SS")  # in HU: the LUT starts at -1024
    image = decode_file(write(tmp_path, arr, RescaleSlope=2, RescaleIntercept=-1024,
                              VOILUTSequence=[item])).image
    assert_maps_through(image, table, arr.astype(np.int64) * 2)  # index = (2v - 1024) - (-1024)


@pytest.mark.parametrize("tsyntax", [uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian])
def test_the_voi_lut_in_implicit_and_big_endian_files(tmp_path, tsyntax):
    """Implicit VR: pydicom reads the first mapped value -1024 as US 64512 (unsigned stored values,
    negative rescaled ones). Big endian: the OW LUT Data words are big endian."""
    arr, table = stored(), sqrt_lut()
    big = tsyntax == uid.ExplicitVRBigEndian
    ds = dicom_header(tsyntax, *SIZE, BitsStored=12, HighBit=11, RescaleSlope=2, RescaleIntercept=-1024)
    item = lut_item(table, -1024, 16, vr="OW", first_vr="SS")
    item.LUTData = table.astype(">u2" if big else "<u2").tobytes()
    ds.VOILUTSequence = [item]
    ds.PixelData = arr.astype(">u2" if big else "<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(tmp_path / "lut.dcm", enforce_file_format=True, implicit_vr=not big, little_endian=not big)
    assert_maps_through(decode_file(tmp_path / "lut.dcm").image, table, arr.astype(np.int64) * 2)


def test_the_voi_lut_comes_before_window_center_and_width(tmp_path):
    arr, table = stored(), sqrt_lut()
    item = lut_item(table, 0, 16)
    window = {"WindowCenter": 1000, "WindowWidth": 500}
    both = decode_file(write(tmp_path, arr, "both.dcm", VOILUTSequence=[item], **window))
    lut_only = decode_file(write(tmp_path, arr, "lut.dcm", VOILUTSequence=[item]))
    window_only = decode_file(write(tmp_path, arr, "window.dcm", **window))
    np.testing.assert_array_equal(both.image, lut_only.image)
    assert np.abs(both.image.astype(int) - window_only.image).max() > 60
    assert window_only.meta["window"] == {"center": 1000.0, "width": 500.0, "source": "file"}
    # use_file_window=False ignores both: the percentile min-max of the stored values
    ignored = decode_file(write(tmp_path, arr, "both2.dcm", VOILUTSequence=[item], **window),
                          DecodeConfig(use_file_window=False))
    assert ignored.meta["window"]["source"] == "minmax"


@pytest.mark.parametrize("bits", [12, 16])
def test_a_modality_lut_replaces_the_rescale(tmp_path, bits):
    """A non-linear Modality LUT (10-15 bit entries failed in pydicom's apply_modality_lut) then a file
    window: the same image as a file whose stored values are the LUT's outputs."""
    arr, table = stored(), sqrt_lut(12)
    window = {"WindowCenter": 2500, "WindowWidth": 2000}
    item = lut_item(table, 0, bits)
    with_lut = decode_file(write(tmp_path, arr, "mlut.dcm", ModalityLUTSequence=[item], RescaleSlope=3,
                                 RescaleIntercept=-1000, **window))
    mapped = decode_file(write(tmp_path, table.astype(np.uint16).reshape(SIZE), "mapped.dcm", **window))
    np.testing.assert_array_equal(with_lut.image, mapped.image)


def test_a_frame_voi_of_an_enhanced_image(tmp_path):
    """Frame VOI LUT (With LUT) macro: the kept frame's VOI, a LUT or a window, replaces the top-level
    VOI (here an identity LUT)."""
    arr, table = stored(), sqrt_lut()
    frames = np.stack([arr, arr, arr])
    ds = dicom_header(uid.ExplicitVRLittleEndian, *SIZE, frames=3, BitsStored=12, HighBit=11,
                      VOILUTSequence=[lut_item(np.arange(ENTRIES), 0, 12)])
    frame_window, frame_lut = Dataset(), Dataset()
    frame_window.WindowCenter, frame_window.WindowWidth = 1000, 500
    frame_lut.VOILUTSequence = [lut_item(table, 0, 12)]
    per_frame = [Dataset(), Dataset(), Dataset()]
    per_frame[0].FrameVOILUTSequence = [frame_window]
    per_frame[1].FrameVOILUTSequence = [frame_lut]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    path = save_native(tmp_path / "enhanced.dcm", ds, frames.tobytes())
    assert_maps_through(decode_file(path).image, table, arr.astype(np.int64))  # middle frame: its LUT
    first = decode_file(path, DecodeConfig(multiframe="first"))  # frame 0: its window
    assert first.meta["window"] == {"center": 1000.0, "width": 500.0, "source": "file"}
    window_only = decode_file(write(tmp_path, arr, "window.dcm", WindowCenter=1000, WindowWidth=500))
    np.testing.assert_array_equal(first.image, window_only.image)


@pytest.mark.parametrize("descriptor", [[4096, 0], [4096, 0, 24], [4096, 0, 0]])
@pytest.mark.parametrize("sequence", ["VOILUTSequence", "ModalityLUTSequence"])
def test_a_malformed_lut_is_bad_header(tmp_path, sequence, descriptor):
    item = lut_item(sqrt_lut(), 0, 12)
    item.LUTDescriptor = descriptor  # two values; 24 or 0 bits per entry
    with pytest.raises(Rejected) as info:
        decode_file(write(tmp_path, stored(), **{sequence: [item]}))
    assert info.value.reason == "bad_header" and "LUT" in info.value.detail


def test_a_lut_without_data_is_ignored(tmp_path):
    item = lut_item(sqrt_lut(), 0, 12)
    item.LUTData = b""
    item["LUTData"].VR = "OW"
    window = {"WindowCenter": 1000, "WindowWidth": 500}
    empty = decode_file(write(tmp_path, stored(), "empty.dcm", VOILUTSequence=[item], **window))
    np.testing.assert_array_equal(empty.image, decode_file(write(tmp_path, stored(), **window)).image)
