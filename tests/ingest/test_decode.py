"""radimagenet.ingest.decode against real files shipped with pydicom, plus small crafted edge cases."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from radimagenet.ingest import decode as D
from radimagenet.ingest.decode import (
    REJECT_REASONS,
    DecodeConfig,
    Rejected,
    common,
    decode_file,
    decode_mask,
    dicom,
    pixels,
    resize,
    resize_mask,
)

META_KEYS = {
    "modality",
    "body_part",
    "rows",
    "columns",
    "pixel_spacing",
    "photometric",
    "bits_stored",
    "frames",
    "transfer_syntax",
    "window",
    "source_format",
}


def data(name: str) -> str:
    """Path of a pydicom test file that ships with the wheel (skip if this install lacks it)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return path


def reason_of(path, cfg: DecodeConfig = DecodeConfig()) -> str:  # noqa: B008
    with pytest.raises(Rejected) as info:
        decode_file(path, cfg)
    return info.value.reason


def write_dicom(path: Path, arr: np.ndarray, **tags) -> Path:
    """A minimal valid Part 10 file holding ``arr`` (uint8/uint16/int16, grey or RGB)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.Modality = "OT"
    ds.PatientID = "SECRET-ID-42"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------- transfer syntaxes


MR_VARIANTS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
]


def test_lossless_encodings_of_one_image_decode_identically():
    reference = decode_file(data("MR_small.dcm"))
    assert reference.image.dtype == np.uint8 and reference.image.shape == (64, 64)
    assert reference.image.std() > 10
    for name in MR_VARIANTS[1:]:
        other = decode_file(data(name))
        np.testing.assert_array_equal(other.image, reference.image, err_msg=name)
        assert other.meta["window"] == reference.meta["window"]
    syntaxes = {decode_file(data(n)).meta["transfer_syntax"] for n in MR_VARIANTS}
    assert {"RLE Lossless", "Explicit VR Big Endian", "Implicit VR Little Endian"} <= syntaxes


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "rtdose_1frame.dcm", "examples_overlay.dcm", "image_dfl.dcm"],
)
def test_native_fast_path_equals_pydicom(name):
    ds = pydicom.dcmread(data(name))
    geo = dicom._geometry(dicom._header(ds), DecodeConfig(min_size=1))
    fast = pixels._native_grey_frame(ds, "PixelData", geo, None, ds.file_meta.TransferSyntaxUID)
    assert fast is not None
    np.testing.assert_array_equal(fast, ds.pixel_array)


def test_native_fast_path_masks_unused_high_bits(tmp_path):
    arr = np.array([[0xF123, 0x0FFF], [0x1000, 0x0800]] * 8, dtype=np.uint16).repeat(8, axis=1)
    path = write_dicom(tmp_path / "hb.dcm", arr, BitsStored=12, HighBit=11)
    ds = pydicom.dcmread(path)
    geo = dicom._geometry(dicom._header(ds), DecodeConfig())
    fast = pixels._native_grey_frame(ds, "PixelData", geo, None, ds.file_meta.TransferSyntaxUID)
    np.testing.assert_array_equal(fast, ds.pixel_array)
    assert fast.max() <= 0x0FFF


def _rle_file(tmp_path: Path, arr: np.ndarray, **tags) -> Path:
    """``arr`` ([frames,] rows, cols) written RLE Lossless by pydicom's own encoder."""
    from pydicom.uid import RLELossless

    frames = arr if arr.ndim == 3 else arr[None]
    extra = {"NumberOfFrames": len(frames)} if arr.ndim == 3 else {}
    path = write_dicom(tmp_path / "plain.dcm", frames[0], **extra, **tags)
    ds = pydicom.dcmread(path)
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    return tmp_path / "rle.dcm"


@pytest.mark.parametrize(
    "kind",
    ["MR_small_RLE", "uint8", "uint16", "int16 in 12 bits", "3 frames"],
)
def test_rle_fast_path_equals_pydicom(kind, tmp_path):
    from pydicom.pixels import pixel_array

    rng = np.random.default_rng(1)
    if kind == "MR_small_RLE":
        path = data("MR_small_RLE.dcm")
    elif kind == "uint8":
        path = _rle_file(tmp_path, rng.integers(0, 256, (40, 48), dtype=np.uint8))
    elif kind == "uint16":
        path = _rle_file(tmp_path, rng.integers(0, 65536, (40, 48), dtype=np.uint16))
    elif kind == "int16 in 12 bits":
        path = _rle_file(tmp_path, rng.integers(-2048, 2048, (40, 48), dtype=np.int16), BitsStored=12, HighBit=11)
    else:
        path = _rle_file(tmp_path, rng.integers(0, 4096, (3, 40, 48), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    geo = dicom._geometry(dicom._header(ds), DecodeConfig(min_size=1))
    for index in ([None] if geo.frames == 1 else range(geo.frames)):
        fast = pixels._rle_grey_frame(ds, "PixelData", geo, index, ds.file_meta.TransferSyntaxUID)
        assert fast is not None, kind
        expected = pixel_array(ds, index=index)
        assert fast.dtype == expected.dtype
        np.testing.assert_array_equal(fast, expected, err_msg=f"{kind} frame {index}")


def test_rle_fast_path_leaves_bad_frames_to_pydicom(tmp_path):
    """A corrupt RLE frame gets no fast-path result, so the general path names the failure."""
    path = _rle_file(tmp_path, np.random.default_rng(2).integers(0, 256, (40, 48), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    at = raw.rindex(b"\xfe\xff\x00\xe0") + 8  # the frame's fragment: its 64-byte RLE header
    raw[at + 4 : at + 8] = (0xFFFF).to_bytes(4, "little")  # segment 1 starts past the fragment
    path.write_bytes(bytes(raw))
    ds = pydicom.dcmread(path)
    geo = dicom._geometry(dicom._header(ds), DecodeConfig(min_size=1))
    assert pixels._rle_grey_frame(ds, "PixelData", geo, None, ds.file_meta.TransferSyntaxUID) is None
    with pytest.raises(Rejected) as err:
        decode_file(path, DecodeConfig(min_size=1))
    assert err.value.reason == "decode_failed"


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "693_J2KI.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_gdcm_KY.dcm",
        "GDCMJ2K_TextGBR.dcm",
        "SC_rgb_jls_lossy_line.dcm",
        "SC_jpeg_no_color_transform.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "ExplVR_BigEnd.dcm",
        "examples_jpeg2k.dcm",
        "image_dfl.dcm",
    ],
)
def test_compressed_and_colour_files_decode(name):
    d = decode_file(data(name), DecodeConfig(min_size=8))
    ds = pydicom.dcmread(data(name), stop_before_pixels=True)
    assert d.image.dtype == np.uint8 and d.image.ndim == 2
    assert d.image.shape == (ds.Rows, ds.Columns)
    assert set(d.meta) == META_KEYS and d.meta["source_format"] == "dicom"
    assert d.meta["transfer_syntax"] == ds.file_meta.TransferSyntaxUID.name
    assert d.image.max() > d.image.min()


def test_signed_ct_uses_default_window_and_hounsfield_units():
    d = decode_file(data("CT_small.dcm"))
    assert d.meta["window"] == {"center": 40.0, "width": 400.0, "source": "default"}
    ds = pydicom.dcmread(data("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert np.abs(d.image.astype(float) - expected).max() <= 0.51
    assert d.meta["modality"] == "CT" and d.meta["pixel_spacing"] == pytest.approx([0.661468, 0.661468])


def test_file_window_and_minmax_fallback():
    assert decode_file(data("MR_small.dcm")).meta["window"]["source"] == "file"
    d = decode_file(data("MR_small.dcm"), DecodeConfig(use_file_window=False))
    assert d.meta["window"]["source"] == "minmax"
    assert d.image.min() == 0 and d.image.max() == 255


def test_voi_lut_function_linear_exact_and_sigmoid(tmp_path):
    arr = np.tile(np.arange(0, 256, dtype=np.uint16), (32, 1))
    exact = decode_file(
        write_dicom(tmp_path / "e.dcm", arr, WindowCenter=128, WindowWidth=128, VOILUTFunction="LINEAR_EXACT")
    )
    assert exact.image[0, 64] == 0 and exact.image[0, 192] == 255 and exact.image[0, 128] == 128
    sig = decode_file(
        write_dicom(tmp_path / "s.dcm", arr, WindowCenter=128, WindowWidth=64, VOILUTFunction="SIGMOID")
    )
    assert np.all(np.diff(sig.image[0].astype(int)) >= 0) and sig.image[0, 128] in (127, 128)


# ------------------------------------------------------------------ photometric handling


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(data("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    mono2 = decode_file(data("MR_small.dcm")).image.astype(int)
    mono1 = decode_file(tmp_path / "m1.dcm").image.astype(int)
    assert np.abs(mono1 - (255 - mono2)).max() <= 1
    assert np.mean(mono1 == 255 - mono2) > 0.99
    assert decode_file(tmp_path / "m1.dcm").meta["photometric"] == "MONOCHROME1"


def test_rgb_becomes_luma(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    d = decode_file(write_dicom(tmp_path / "rgb.dcm", rgb))
    luma = rgb.astype(float) @ [0.299, 0.587, 0.114]
    assert np.abs(d.image - luma).max() <= 0.51
    assert d.meta["photometric"] == "RGB" and d.meta["window"]["source"] == "full_range"


def test_rgb_files_match_their_pydicom_rgb():
    for name in ("SC_rgb_rle.dcm", "examples_rgb_color.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        rgb = pydicom.dcmread(data(name)).pixel_array.astype(float)
        luma = rgb @ [0.299, 0.587, 0.114]
        assert np.abs(decode_file(data(name)).image - luma).max() <= 0.51, name


def test_palette_colour_becomes_grey():
    ds = pydicom.dcmread(data("examples_palette.dcm"))
    rgb = apply_color_lut(ds.pixel_array, ds).astype(float)
    luma = (rgb @ [0.299, 0.587, 0.114]) * 255 / 65535
    d = decode_file(data("examples_palette.dcm"))
    assert d.meta["photometric"] == "PALETTE COLOR"
    assert np.abs(d.image - luma).max() <= 0.51


# ------------------------------------------------------------------------------ multi-frame


def test_multiframe_policy():
    name = data("SC_rgb_rle_2frame.dcm")
    frames = pixel_array(pydicom.dcmread(name)).astype(float) @ [0.299, 0.587, 0.114]
    middle, first = decode_file(name), decode_file(name, DecodeConfig(multiframe="first"))
    assert np.abs(middle.image - frames[1]).max() <= 0.51 and middle.meta["frames"] == 2
    assert np.abs(first.image - frames[0]).max() <= 0.51
    assert not np.array_equal(middle.image, first.image)
    assert reason_of(name, DecodeConfig(multiframe="reject")) == "multiframe"


def test_multiframe_jpeg_ybr_middle_frame():
    d = decode_file(data("examples_ybr_color.dcm"))
    assert d.meta["frames"] == 30 and d.image.shape == (240, 320)


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError):
        DecodeConfig(multiframe="all")
    with pytest.raises(ValueError):
        DecodeConfig(windows={"CT": (40.0, 0.0)})


# --------------------------------------------------------------------------------- rejects


def test_truncated_native_file():
    assert reason_of(data("MR_truncated.dcm")) == "truncated"


def test_truncated_copies_of_real_files(tmp_path):
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm"):
        raw = Path(data(name)).read_bytes()
        for fraction in (0.5, 0.8, 0.95):
            cut = tmp_path / "cut.dcm"
            cut.write_bytes(raw[: int(len(raw) * fraction)])
            assert reason_of(cut) in {"truncated", "decode_failed"}, (name, fraction)


def test_unsupported_and_no_pixel_data(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("just some text, not an image\n" * 20)
    assert reason_of(text) == "unsupported_format"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert reason_of(empty) == "unsupported_format"
    assert reason_of(data("rtplan.dcm")) == "no_pixel_data"
    assert reason_of(data("waveform_ecg.dcm")) == "no_pixel_data"
    assert reason_of(tmp_path / "missing.dcm") == "unreadable"


@pytest.mark.parametrize(
    "name",
    ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
     "SC_rgb_jls_lossy_sample.dcm", "SC_rgb_jls_lossy_line.dcm"],
)
def test_jpeg_ls_is_decoded_by_charls_with_libjpegs_pixels(name):
    # CharLS (pyjpegls) is 1.5-4x faster than pydicom's default libjpeg plugin for JPEG-LS; same pixels
    ds = pydicom.dcmread(data(name))
    tsyntax = ds.file_meta.TransferSyntaxUID
    assert D.preferred_plugin(tsyntax) == "pyjpegls"
    geo = dicom._geometry(dicom._header(ds), DecodeConfig(min_size=1))
    ours = pixels._decode_pixels(ds, "PixelData", geo, common._frame_index(geo.frames, DecodeConfig()), tsyntax)
    reference = pixel_array(ds, index=common._frame_index(geo.frames, DecodeConfig()), decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(ours, reference)


def test_a_preferred_plugin_that_fails_falls_back_to_the_others(monkeypatch):
    # Pillow cannot decode this 12-bit JPEG Extended file, libjpeg can: preferring Pillow must not lose it
    reference = decode_file(data("JPGExtended.dcm")).image
    ds = pydicom.dcmread(data("JPGExtended.dcm"))
    tsyntax = ds.file_meta.TransferSyntaxUID
    monkeypatch.setitem(pixels._FASTEST_PLUGIN, str(tsyntax), "pillow")
    D.preferred_plugin.cache_clear()
    try:
        assert D.preferred_plugin(tsyntax) == "pillow"
        with pytest.raises(Exception):  # noqa: B017 - the plugin's own error type
            pixel_array(ds, decoding_plugin="pillow")
        decoded = decode_file(data("JPGExtended.dcm"))
    finally:
        D.preferred_plugin.cache_clear()
    np.testing.assert_array_equal(decoded.image, reference)
    assert reference.std() > 0


def test_jpeg_lossless_decodes_with_the_libjpeg_plugin():
    decoded = decode_file(data("SC_rgb_jpeg_gdcm.dcm"))
    assert "JPEG Lossless" in decoded.meta["transfer_syntax"]
    assert decoded.image.dtype == np.uint8 and decoded.image.std() > 0


def test_syntax_without_any_decoder_names_the_syntax(tmp_path):
    ds = pydicom.dcmread(data("SC_rgb_jpeg_gdcm.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: video, no image decoder
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(Rejected) as info:
        decode_file(tmp_path / "video.dcm")
    assert info.value.reason == "unsupported_syntax"
    assert "MPEG2" in info.value.detail


def test_corrupt_codestream_is_decode_failed():
    with pytest.raises(Rejected) as info:
        decode_file(data("JPEG2000-embedded-sequence-delimiter.dcm"))
    assert info.value.reason == "decode_failed" and "JPEG 2000" in info.value.detail


def test_blank_and_too_small(tmp_path):
    flat = np.full((64, 64), 700, dtype=np.uint16)
    assert reason_of(write_dicom(tmp_path / "flat.dcm", flat)) == "blank"
    air = np.full((64, 64), -1000, dtype=np.int16)
    air[0, 0] = -990  # contrast in the data, none after the CT window
    path = write_dicom(tmp_path / "air.dcm", air, Modality="CT", RescaleSlope=1, RescaleIntercept=0)
    assert reason_of(path) == "blank"
    one = write_dicom(tmp_path / "one.dcm", np.array([[7]], dtype=np.uint8))
    assert reason_of(one) == "too_small"
    assert reason_of(data("rtdose.dcm")) == "too_small"


def test_bad_header(tmp_path):
    path = write_dicom(tmp_path / "nf.dcm", np.arange(1024, dtype=np.uint16).reshape(32, 32))
    ds = pydicom.dcmread(path)
    ds.BitsAllocated = 12
    ds.save_as(path)
    assert reason_of(path) == "bad_header"
    del ds.PhotometricInterpretation
    ds.BitsAllocated = 16
    ds.save_as(path)
    assert reason_of(path) == "bad_header"
    assert reason_of(data("badVR.dcm"), DecodeConfig(min_size=1)) == "bad_header"  # NumberOfFrames '1A'


def test_rejected_is_picklable_and_reasons_are_documented():
    err = pickle.loads(pickle.dumps(Rejected("blank", "flat")))
    assert (err.reason, err.detail) == ("blank", "flat")
    with pytest.raises(ValueError):
        Rejected("no_such_reason", "x")
    assert all(code.islower() and " " not in code and text for code, text in REJECT_REASONS.items())
    for needed in ("unreadable", "unsupported_format", "no_pixel_data", "truncated", "decode_failed",
                   "missing_decoder", "multiframe", "too_small", "blank"):  # fmt: skip
        assert needed in REJECT_REASONS


def test_details_never_carry_the_path(tmp_path):
    secret = tmp_path / "PHI^Doe^John"
    secret.mkdir()
    raw = Path(data("MR_small_RLE.dcm")).read_bytes()
    (secret / "a.dcm").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(Rejected) as info:
        decode_file(secret / "a.dcm")
    assert "Doe" not in str(info.value)


# ------------------------------------------------------------------------ meta and sniffing


def test_meta_is_non_identifying_and_patient_id_separate(tmp_path):
    d = decode_file(write_dicom(tmp_path / "x.dcm", np.arange(1024, dtype=np.uint16).reshape(32, 32)))
    assert set(d.meta) == META_KEYS
    assert d.patient_id == "SECRET-ID-42"
    assert "SECRET" not in repr(d.meta)


def test_dicom_without_preamble_is_read(tmp_path):
    bare = tmp_path / "bare.bin"
    raw = pydicom.dcmread(data("MR_small.dcm"))
    raw.file_meta = FileMetaDataset()
    raw.preamble = None
    raw.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert Path(bare).read_bytes()[128:132] != b"DICM"
    d = decode_file(bare)
    np.testing.assert_array_equal(d.image, decode_file(data("MR_small.dcm")).image)
    assert d.meta["transfer_syntax"] == "Implicit VR Little Endian"


def test_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    d = decode_file(tmp_path / "g.png")
    np.testing.assert_array_equal(d.image, grey)
    assert d.meta["source_format"] == "png" and d.patient_id is None and set(d.meta) == META_KEYS

    deep = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 13 + 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    d16 = decode_file(tmp_path / "d.png")
    assert d16.image.min() == 0 and d16.image.max() == 255 and d16.meta["window"]["source"] == "minmax"

    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(decode_file(tmp_path / "c.png").image, expected)

    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    dj = decode_file(tmp_path / "c.jpg")
    assert dj.meta["source_format"] == "jpeg" and dj.image.shape == (40, 50)

    (tmp_path / "cut.png").write_bytes((tmp_path / "g.png").read_bytes()[:100])
    assert reason_of(tmp_path / "cut.png") in {"truncated", "decode_failed"}
    Image.fromarray(grey[:8, :8]).save(tmp_path / "tiny.png")
    assert reason_of(tmp_path / "tiny.png") == "too_small"


# ----------------------------------------------------------------------------- resize, masks


def test_resize_whole_image_with_area_averaging():
    img = np.zeros((100, 200), np.uint8)
    img[:, 100:] = 200
    small = resize(img, 50)
    assert small.shape == (50, 50) and small.dtype == np.uint8
    assert small[:, :25].max() == 0 and small[:, 25:].min() == 200  # whole width kept, squashed
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    assert np.all(np.abs(resize(checker, 32).astype(int) - 128) <= 1)  # antialiased, not sampled
    assert resize(np.full((10, 10), 9, np.uint8), 64).max() == 9
    with pytest.raises(ValueError):
        resize(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(ValueError):
        resize(img, 0)


def test_resize_mask_is_nearest():
    mask = np.zeros((90, 90), np.uint8)
    mask[10:40, 20:70] = 1
    mask[50:80, 50:60] = 3
    out = resize_mask(mask, 30)
    assert set(np.unique(out)) == {0, 1, 3}
    assert out[5, 15] == 1 and out[20, 18] == 3


def test_decode_mask_png_and_seg(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:20] = 255
    Image.fromarray(m).save(tmp_path / "m255.png")
    Image.fromarray(m // 255).save(tmp_path / "m1.png")
    for name in ("m255.png", "m1.png"):
        out = decode_mask(tmp_path / name)
        assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1} and out.sum() == 75
    seg = decode_mask(data("liver_1frame.dcm"))
    expected = pydicom.dcmread(data("liver_1frame.dcm")).pixel_array
    assert seg.shape == (512, 512) and seg.sum() == expected.sum() > 0
    noise = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    with pytest.raises(Rejected) as info:
        decode_mask(tmp_path / "noise.png")
    assert info.value.reason == "bad_mask"
