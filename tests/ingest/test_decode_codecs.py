"""Compressed syntaxes that scanners write, encoded here by imagecodecs (a test-time encoder: OpenJPH for
HTJ2K, libjpeg-turbo 3 and liblj92 for 2-16 bit lossless JPEG) and decoded through our path: HTJ2K
(lossless, RPCL lossless, lossy) and 12/16-bit JPEG lossless (Process 14, SV1), signed and rescaled.

Pixel-exact means: the decoded frame equals the source array, and the windowed image equals the one of
an uncompressed file holding the same array and tags. Not built here: HTJ2K codestreams of 9-15 bit
precision (imagecodecs' OpenJPH encoder writes the dtype's 8 or 16 bits; 12-bit data is tested inside
a 16-bit codestream)."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom import uid

from helpers_dicom import dicom_header, save_encapsulated, save_native
from radimagenet.ingest.decode import DecodeConfig, Rejected, decode_file, dicom, pixels


def source(kind: str) -> tuple[np.ndarray, int]:
    """(array, BitsStored) of a 64 x 80 frame of ``kind``: the full stored range plus noise, so every
    predictor and bit plane is exercised. u8, u12, u16 unsigned; s12, s16 signed (PixelRepresentation 1)."""
    bits = int(kind[1:])
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if kind[0] == "s" else (0, 2**bits - 1)
    ramp = np.add.outer(np.arange(64), np.arange(80)) / (63 + 79)
    noise = np.random.default_rng(bits).integers(-5, 6, ramp.shape)
    dtype = {8: np.uint8}.get(bits, np.int16 if kind[0] == "s" else np.uint16)
    return np.clip(np.rint(lo + (hi - lo) * ramp) + noise, lo, hi).astype(dtype), bits


def write_pair(tmp_path: Path, tsyntax: str, arr: np.ndarray, bits: int, frame: bytes, **tags) -> tuple[Path, Path]:
    """The encoded file and an uncompressed file with the same array and tags."""
    paths = []
    for name, syntax in (("encoded", tsyntax), ("native", uid.ExplicitVRLittleEndian)):
        ds = dicom_header(syntax, *arr.shape, bits=arr.dtype.itemsize * 8, **tags)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(arr.dtype.kind == "i")
        if name == "encoded":
            paths.append(save_encapsulated(tmp_path / f"{name}.dcm", ds, [frame]))
        else:
            paths.append(save_native(tmp_path / f"{name}.dcm", ds, arr.tobytes()))
    return paths[0], paths[1]


def decoded_frame(path: Path) -> np.ndarray:
    """The frame our decoder hands to windowing (after its codestream size check)."""
    ds = pydicom.dcmread(path)
    geo = dicom._geometry(dicom._header(ds), DecodeConfig())
    return pixels._decode_pixels(ds, "PixelData", geo, None, ds.file_meta.TransferSyntaxUID, 64.0)


def window(arr: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> dict[str, float]:
    """Rescale and a file window over the middle 80 % of the rescaled values (some pixels clip)."""
    lo, hi = np.percentile(arr * slope + intercept, [10, 90])
    return {"RescaleSlope": slope, "RescaleIntercept": intercept,
            "WindowCenter": round(float(lo + hi) / 2, 2), "WindowWidth": round(float(hi - lo), 2)}


def expected_window(arr: np.ndarray, tags: dict[str, float]) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window on ``arr * slope + intercept``, computed in float64."""
    c, w = tags["WindowCenter"], tags["WindowWidth"]
    y = ((arr * tags["RescaleSlope"] + tags["RescaleIntercept"] - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.clip(np.floor(y + 0.5), 0, 255)


def assert_exact(path: Path, native: Path, arr: np.ndarray, tags: dict[str, float]) -> None:
    frame = decoded_frame(path)
    assert frame.dtype.kind == arr.dtype.kind
    np.testing.assert_array_equal(frame, arr)
    image = decode_file(path).image
    np.testing.assert_array_equal(image, decode_file(native).image)
    assert np.abs(image.astype(int) - expected_window(arr, tags)).max() <= 1  # float32 rounding
    assert (image == 0).any() and (image == 255).any() and 50 < image.mean() < 205


# ---------------------------------------------------------------------------------------------- HTJ2K


def htj2k(arr: np.ndarray, *, reversible: bool = True, tlm: bool = False) -> bytes:
    """An HTJ2K codestream of ``arr``, checked to be one: Rsiz bit 14 and a CAP marker (Part 15)."""
    stream = imagecodecs.htj2k_encode(arr, reversible=reversible, tlm=tlm)
    assert stream[:4] == b"\xff\x4f\xff\x51" and int.from_bytes(stream[6:8], "big") & 0x4000
    assert b"\xff\x50" in stream[:128]
    return stream


@pytest.mark.parametrize("kind", ["u8", "u12", "u16", "s12", "s16"])
@pytest.mark.parametrize("tsyntax", [uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL])
def test_htj2k_lossless_decodes_pixel_exact(tmp_path, tsyntax, kind):
    arr, bits = source(kind)
    rpcl = tsyntax == uid.HTJ2KLosslessRPCL
    stream = htj2k(arr, tlm=rpcl)
    if rpcl:  # .202: RPCL progression (COD SGcod byte 0 = 2) and TLM markers
        cod = stream.index(b"\xff\x52")
        assert stream[cod + 5] == 2 and b"\xff\x55" in stream
    tags = window(arr, 0.5, -1024.0) if kind[0] == "s" else window(arr, 1.0, -1024.0)
    path, native = write_pair(tmp_path, tsyntax, arr, bits, stream, **tags)
    assert_exact(path, native, arr, tags)
    assert decode_file(path).meta["transfer_syntax"] == uid.UID(tsyntax).name


@pytest.mark.parametrize("kind", ["u16", "s16"])
def test_htj2k_lossy_decodes_close_to_the_source(tmp_path, kind):
    arr, bits = source(kind)
    path, native = write_pair(tmp_path, uid.HTJ2K, arr, bits, htj2k(arr, reversible=False), **window(arr))
    frame = decoded_frame(path)
    assert frame.shape == arr.shape and frame.dtype == arr.dtype
    error = np.abs(frame.astype(np.int64) - arr)
    assert 0 < error.max() < 2 ** (bits - 8) and error.mean() < 2 ** (bits - 12)  # lossy, near the source
    assert decode_file(path).image.shape == arr.shape


def test_htj2k_codestream_size_is_read_before_decoding(tmp_path):
    arr, bits = source("u16")
    stream = htj2k(arr)
    assert pixels._codestream_size(stream) == (64, 80, 1, 16)
    # the DICOM header says 16 x 16: the codestream's own 64 x 80 is what a decoder would allocate
    ds = dicom_header(uid.HTJ2KLossless, 16, 16)
    path = save_encapsulated(tmp_path / "lie.dcm", ds, [stream])
    with pytest.raises(Rejected) as info:
        decode_file(path, DecodeConfig(max_megapixels=0.001))
    assert info.value.reason == "decode_failed" and "codestream declares 64 x 80" in info.value.detail


@pytest.mark.parametrize("mct,photometric", [(True, "YBR_RCT"), (False, "RGB")])
def test_htj2k_colour(tmp_path, mct, photometric):
    arr, _ = source("u8")
    rgb = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
    ds = dicom_header(uid.HTJ2KLossless, 64, 80, bits=8, samples=3)
    ds.PhotometricInterpretation = photometric
    path = save_encapsulated(tmp_path / "rgb.dcm", ds, [imagecodecs.htj2k_encode(rgb, rgb=mct, reversible=True)])
    native = save_native(tmp_path / "native.dcm", dicom_header(uid.ExplicitVRLittleEndian, 64, 80, bits=8,
                                                               samples=3), rgb.tobytes())
    np.testing.assert_array_equal(decode_file(path).image, decode_file(native).image)


# -------------------------------------------------------------------------------------- JPEG lossless


def lossless_jpeg(arr: np.ndarray, bits: int, predictor: int, encoder: str) -> bytes:
    """A Process 14 JPEG (SOF3) of ``arr`` at ``bits`` precision; signed values are written as their
    two's complement in ``bits`` bits, as PS3.5 8.2.1 asks."""
    raw = arr.astype(np.uint16) if arr.dtype == np.uint8 else arr.view(np.uint16) & ((1 << bits) - 1)
    if encoder == "ljpeg":
        stream = imagecodecs.ljpeg_encode(raw, bitspersample=bits)
    else:
        stream = imagecodecs.jpeg8_encode(raw, lossless=True, predictor=predictor, bitspersample=bits)
    sof = stream.index(b"\xff\xc3")
    assert stream[sof + 4] == bits
    if encoder == "jpeg8":  # the predictor is the SOS's first spectral-selection byte (Ss)
        sos = stream.index(b"\xff\xda")
        assert stream[sos + 4 + 2 * stream[sos + 4] + 1] == predictor
    return stream


@pytest.mark.parametrize("kind", ["u12", "s12", "u16", "s16"])
@pytest.mark.parametrize("tsyntax,predictor,encoder", [
    (uid.JPEGLosslessSV1, 1, "ljpeg"),
    (uid.JPEGLosslessSV1, 1, "jpeg8"),
    (uid.JPEGLossless, 7, "jpeg8"),
])
def test_jpeg_lossless_12_and_16_bit_decode_pixel_exact(tmp_path, kind, tsyntax, predictor, encoder):
    arr, bits = source(kind)
    tags = window(arr, 1.0, -1024.0) if kind[0] == "u" else window(arr, 0.25, 20.0)
    stream = lossless_jpeg(arr, bits, predictor, encoder)
    path, native = write_pair(tmp_path, tsyntax, arr, bits, stream, **tags)
    assert_exact(path, native, arr, tags)


def test_jpeg_lossless_16_bit_precision_holding_12_bit_signed_data(tmp_path):
    """A frame written at 16-bit precision (sign-extended) while BitsStored is 12: decoded by the
    codestream's precision, so the values are kept."""
    arr, _ = source("s12")
    stream = imagecodecs.ljpeg_encode(arr.view(np.uint16), bitspersample=16)
    tags = window(arr)
    path, native = write_pair(tmp_path, uid.JPEGLosslessSV1, arr, 12, stream, **tags)
    assert_exact(path, native, arr, tags)
