"""Hostile and broken inputs are one reject each, decided from the header before any pixel allocation:
huge declared sizes in every DICOM transfer syntax, in PNG/JPEG and in masks (``too_large``), burned-in
annotation (``burned_in_annotation``), and multi-frame files that only ever decode the kept frame.
Every hostile file is made here and is a few kB on disk."""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels.encoders import RLELosslessEncoder

from helpers_dicom import dicom_header, save_encapsulated, save_native
from radimagenet.errors import ConfigError
from radimagenet.ingest import IngestConfig
from radimagenet.ingest.decode import DecodeConfig, Rejected, decode_file, decode_mask, dicom

SMALL_PEAK = 32 * 2**20  # bytes a rejected file may cost at most (the declared sizes are 100 MB .. 8.5 GB)


# ----------------------------------------------------------------------------------------- builders


def fake_rle(size: int = 7000) -> bytes:
    """An RLE Lossless frame (header + 2 segments of literal runs) of about ``size`` bytes."""
    half = (size - 64) // 2
    header = struct.pack("<16I", 2, 64, 64 + half, *([0] * 13))
    segment = (b"\x7f" + bytes(range(128))) * (half // 129)
    return header + segment.ljust(half, b"\x00") * 2


def jpeg_header(rows: int, cols: int, components: int = 1) -> bytes:
    """SOI + SOF0 + SOS + a few scan bytes + EOI: a JPEG whose header declares ``rows`` x ``cols``."""
    sof = struct.pack(">BHHB", 8, rows, cols, components) + b"".join(
        bytes([i + 1, 0x11, 0]) for i in range(components))
    sos = bytes([components]) + b"".join(bytes([i + 1, 0]) for i in range(components)) + b"\x00\x3f\x00"
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
            + b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos + b"\x00" * 64 + b"\xff\xd9")


def j2k_header(rows: int, cols: int) -> bytes:
    """SOC + SIZ (one 16-bit component) + EOC: a JPEG 2000 codestream declaring ``rows`` x ``cols``."""
    siz = struct.pack(">HIIIIIIIIH", 0, cols, rows, 0, 0, cols, rows, 0, 0, 1) + bytes([15, 1, 1])
    return b"\xff\x4f" + b"\xff\x51" + struct.pack(">H", len(siz) + 2) + siz + b"\x00" * 32 + b"\xff\xd9"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A grey PNG whose IHDR declares ``width`` x ``height`` with a tiny IDAT (no big allocation)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rejected(path: Path, cfg: DecodeConfig = DecodeConfig(), *, mask: bool = False) -> Rejected:  # noqa: B008
    """The Rejected raised for ``path``, asserting the decode allocated almost nothing."""
    tracemalloc.start()
    try:
        with pytest.raises(Rejected) as info:
            (decode_mask if mask else decode_file)(path, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < SMALL_PEAK, f"{path.name}: peak {peak / 2**20:.0f} MiB"
    return info.value


def gradient(rows: int, cols: int, dtype=np.uint16) -> np.ndarray:
    return (np.add.outer(np.arange(rows), np.arange(cols)) * 7 % 4000).astype(dtype)


# ------------------------------------------------------------------------------------- too large


def test_reasons_are_documented():
    from radimagenet.ingest.decode import REJECT_REASONS

    assert REJECT_REASONS["too_large"] and REJECT_REASONS["burned_in_annotation"]


def test_7kb_rle_declaring_65535_squared_is_rejected_without_allocating(tmp_path):
    path = save_encapsulated(tmp_path / "rle.dcm", dicom_header(uid.RLELossless, 65535, 65535), [fake_rle()])
    assert path.stat().st_size < 10_000
    err = rejected(path)
    assert err.reason == "too_large" and "65535 x 65535" in err.detail and "--max-megapixels" in err.detail


@pytest.mark.parametrize("tsyntax", [
    uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLosslessSV1, uid.JPEGLSLossless,
    uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.RLELossless, uid.DeflatedExplicitVRLittleEndian,
])
def test_every_syntax_checks_the_declared_size_first(tmp_path, tsyntax):
    ds = dicom_header(tsyntax, 40000, 40000, bits=8)
    if uid.UID(tsyntax).is_encapsulated:
        body = j2k_header(40000, 40000) if "2000" in uid.UID(tsyntax).name else jpeg_header(40000, 40000)
        path = save_encapsulated(tmp_path / "x.dcm", ds, [body])
    else:
        path = save_native(tmp_path / "x.dcm", ds, bytes(4096))
    assert path.stat().st_size < 10_000
    assert rejected(path).reason == "too_large"


def test_uncompressed_declaring_more_than_the_limit(tmp_path):
    # 9000 x 9000 8-bit: 81 MP, above 64; its 1.6 kB of pixel data would also be 'truncated'
    path = save_native(tmp_path / "native.dcm", dicom_header(uid.ExplicitVRLittleEndian, 9000, 9000, bits=8),
                       bytes(1600))
    assert rejected(path).reason == "too_large"
    # within the limit the declared size must match the bytes present
    assert rejected(path, DecodeConfig(max_megapixels=100)).reason == "truncated"


def test_allocation_estimate_counts_samples_and_bits(tmp_path):
    # 6000 x 6000 = 36 MP passes the pixel limit; RGB 16-bit needs 206 MiB > 4 bytes x 36 MP at limit 40
    ds = dicom_header(uid.ExplicitVRLittleEndian, 6000, 6000, bits=16, samples=3)
    path = save_native(tmp_path / "rgb16.dcm", ds, bytes(64))
    err = rejected(path, DecodeConfig(max_megapixels=40))
    assert err.reason == "too_large" and "MiB" in err.detail
    assert rejected(path, DecodeConfig(max_megapixels=64)).reason == "truncated"


@pytest.mark.parametrize("tsyntax,body", [
    (uid.JPEGBaseline8Bit, jpeg_header(60000, 60000)),
    (uid.JPEGLSLossless, jpeg_header(60000, 60000)),
    (uid.JPEG2000Lossless, j2k_header(60000, 60000)),
    (uid.HTJ2KLossless, j2k_header(60000, 60000)),
])
def test_a_codestream_larger_than_its_dicom_header_is_rejected_before_decoding(tmp_path, tsyntax, body):
    path = save_encapsulated(tmp_path / "lie.dcm", dicom_header(tsyntax, 64, 64, bits=8), [body])
    err = rejected(path)  # corrupt (it disagrees with the header), and never handed to a decoder
    assert err.reason == "decode_failed" and "codestream declares 60000 x 60000" in err.detail
    assert "too_large" not in err.detail and "megapixels" in err.detail
    # a codestream that agrees with its header is sized by the header check: too_large
    ok = save_encapsulated(tmp_path / "big.dcm", dicom_header(tsyntax, 60000, 60000, bits=8), [body])
    assert rejected(ok).reason == "too_large"


def test_the_limit_option_raises_and_lowers_the_threshold(tmp_path):
    arr = gradient(300, 400)
    ds = dicom_header(uid.ExplicitVRLittleEndian, 300, 400)
    path = save_native(tmp_path / "ok.dcm", ds, arr.tobytes())
    assert decode_file(path).image.shape == (300, 400)
    assert rejected(path, DecodeConfig(max_megapixels=0.1)).reason == "too_large"  # 0.12 MP
    assert decode_file(path, DecodeConfig(max_megapixels=0.13)).image.shape == (300, 400)
    png = tmp_path / "ok.png"
    Image.fromarray(arr.astype(np.uint8)).save(png)
    assert decode_file(png).image.shape == (300, 400)
    assert rejected(png, DecodeConfig(max_megapixels=0.1)).reason == "too_large"
    big = save_native(tmp_path / "big.dcm", dicom_header(uid.ExplicitVRLittleEndian, 9000, 9000, bits=8), b"")
    assert rejected(big, DecodeConfig(max_megapixels=100)).reason == "truncated"  # raised: size is fine
    with pytest.raises(ValueError, match="max_megapixels"):
        DecodeConfig(max_megapixels=0)


def test_a_deflate_bomb_is_rejected_without_inflating_it(tmp_path):
    """A Deflated Explicit VR file inflates in memory (pydicom inflates it whole): 64 MiB of zeros
    behind a small image compress to ~70 kB; above 4 bytes x the limit it is refused while inflating."""
    ds = dicom_header(uid.DeflatedExplicitVRLittleEndian, 256, 256, bits=8)
    path = save_native(tmp_path / "deflated.dcm", ds, gradient(256, 256, np.uint8).tobytes() + bytes(64 * 2**20))
    assert path.stat().st_size < 200_000
    err = rejected(path, DecodeConfig(max_megapixels=1))  # 4 MB
    assert err.reason == "too_large" and "inflates" in err.detail
    assert decode_file(path, DecodeConfig(max_megapixels=64)).image.shape == (256, 256)


def test_png_declaring_13000_squared_16_bit_is_rejected_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(13000, 13000))
    assert path.stat().st_size < 1000
    err = rejected(path)
    assert err.reason == "too_large" and "13000 x 13000" in err.detail


def test_pil_decompression_bomb_is_too_large_not_a_crash(tmp_path):
    # 20000^2 = 400 MP is above PIL's own hard limit (2 x MAX_IMAGE_PIXELS): PIL raises at open
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20000, 20000, bit_depth=8))
    assert rejected(path, DecodeConfig(max_megapixels=1000)).reason == "too_large"
    jpg = tmp_path / "bomb.jpg"
    jpg.write_bytes(jpeg_header(65500, 65500))
    assert rejected(jpg).reason == "too_large"
    assert rejected(jpg, DecodeConfig(max_megapixels=10_000)).reason == "too_large"


def test_a_jpeg_header_declaring_too_much_is_rejected(tmp_path):
    jpg = tmp_path / "big.jpg"
    jpg.write_bytes(jpeg_header(9000, 9000, components=3))  # 81 MP: under PIL's limit, over ours
    err = rejected(jpg)
    assert err.reason == "too_large" and "9000 x 9000" in err.detail


def test_masks_are_size_checked_before_decoding(tmp_path):
    png = tmp_path / "mask.png"
    png.write_bytes(png_header(13000, 13000, bit_depth=8))
    assert rejected(png, mask=True).reason == "too_large"
    ds = dicom_header(uid.ExplicitVRLittleEndian, 65535, 65535, bits=1, frames=3, Modality="SEG",
                      SegmentationType="BINARY")
    seg = save_native(tmp_path / "seg.dcm", ds, bytes(512))
    assert rejected(seg, mask=True).reason == "too_large"
    rle = save_encapsulated(tmp_path / "rle_mask.dcm", dicom_header(uid.RLELossless, 65535, 65535, bits=8),
                            [fake_rle()])
    assert rejected(rle, mask=True).reason == "too_large"
    small = tmp_path / "small.png"
    Image.fromarray((gradient(64, 64) % 2 * 255).astype(np.uint8)).save(small)
    assert decode_mask(small).shape == (64, 64)
    assert rejected(small, DecodeConfig(max_megapixels=0.001), mask=True).reason == "too_large"


# ---------------------------------------------------------------------------- one frame decoded


def test_native_multiframe_reads_only_the_kept_frame(tmp_path):
    """A 128 MiB (sparse) 64-frame file: only the middle frame is read, the others are never touched."""
    rows = cols = 1024
    frames, frame_bytes = 64, 1024 * 1024 * 2
    assert frames * frame_bytes > dicom._DEFER_BYTES
    kept = gradient(rows, cols)
    ds = dicom_header(uid.ExplicitVRLittleEndian, rows, cols, frames=frames)
    path = tmp_path / "multi.dcm"
    ds.save_as(path, enforce_file_format=True)
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame_bytes))
        start = f.tell()
        f.seek(start + frames // 2 * frame_bytes)
        f.write(kept.tobytes())
        f.truncate(start + frames * frame_bytes)  # the other frames are a hole: zeros, no disk
    single = save_native(tmp_path / "single.dcm", dicom_header(uid.ExplicitVRLittleEndian, rows, cols),
                         kept.tobytes())
    tracemalloc.start()
    try:
        decoded = decode_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB for a 2 MiB frame of a 128 MiB file"
    assert decoded.meta["frames"] == frames
    np.testing.assert_array_equal(decoded.image, decode_file(single).image)
    # cut inside the declared data: 'truncated', still without reading it
    with open(path, "r+b") as f:
        f.truncate(start + frames * frame_bytes - 10)
    assert rejected(path).reason == "truncated"


def _rle_frame(arr: np.ndarray) -> bytes:
    samples = 1 if arr.ndim == 2 else arr.shape[2]
    kwargs = {"planar_configuration": 0} if samples == 3 else {}
    return RLELosslessEncoder.encode(
        arr, rows=arr.shape[0], columns=arr.shape[1], number_of_frames=1, samples_per_pixel=samples,
        bits_allocated=arr.dtype.itemsize * 8, bits_stored=arr.dtype.itemsize * 8, pixel_representation=0,
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2", **kwargs)


@pytest.mark.parametrize("samples", [1, 3])  # grey: our RLE fast path; RGB: pydicom's decoders
def test_encapsulated_multiframe_decodes_only_the_kept_frame(tmp_path, samples):
    """Every frame but the kept one is garbage: decoding any of them would fail the file."""
    grey = gradient(64, 80, np.uint8)
    arr = grey if samples == 1 else np.stack([grey, grey[::-1], 255 - grey], axis=-1)
    good = _rle_frame(arr)
    junk = struct.pack("<16I", 15, *([64] * 15)) + b"\x80" * 100
    frames = [junk] * 7
    frames[3] = good  # the middle of 7
    ds = dicom_header(uid.RLELossless, 64, 80, bits=8, samples=samples, frames=7)
    path = save_encapsulated(tmp_path / "rle7.dcm", ds, frames)
    decoded = decode_file(path)
    assert decoded.meta["frames"] == 7 and decoded.image.shape == (64, 80)
    single = save_encapsulated(tmp_path / "rle1.dcm", dicom_header(uid.RLELossless, 64, 80, bits=8,
                                                                     samples=samples), [good])
    np.testing.assert_array_equal(decoded.image, decode_file(single).image)
    with pytest.raises(Rejected):
        decode_file(path, DecodeConfig(multiframe="first"))  # frame 0 is the garbage


def test_enhanced_multiframe_uses_the_kept_frames_functional_groups(tmp_path):
    """Rescale and window from the kept frame's PerFrameFunctionalGroupsSequence item, spacing from
    the shared groups: the same image as a classic single-frame file with those values at top level."""
    frames = np.stack([gradient(64, 64) + 100 * i for i in range(3)]).astype(np.uint16)
    ds = dicom_header(uid.ExplicitVRLittleEndian, 64, 64, frames=3, Modality="CT")
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for i in range(3):
        transform, voi, item = Dataset(), Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1 + i, -1000 + 10 * i, "HU"
        voi.WindowCenter, voi.WindowWidth = 100 + 50 * i, 800 + 100 * i
        item.PixelValueTransformationSequence, item.FrameVOILUTSequence = [transform], [voi]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    path = save_native(tmp_path / "enhanced.dcm", ds, frames.tobytes())
    for policy, i in (("middle", 1), ("first", 0)):
        decoded = decode_file(path, DecodeConfig(multiframe=policy))
        assert decoded.meta["window"] == {"center": 100 + 50 * i, "width": 800 + 100 * i, "source": "file"}
        assert decoded.meta["pixel_spacing"] == [0.5, 0.5]
        classic = dicom_header(uid.ExplicitVRLittleEndian, 64, 64, Modality="CT", RescaleSlope=1 + i,
                               RescaleIntercept=-1000 + 10 * i, WindowCenter=100 + 50 * i,
                               WindowWidth=800 + 100 * i, PixelSpacing=[0.5, 0.5])
        single = save_native(tmp_path / f"classic{i}.dcm", classic, frames[i].tobytes())
        np.testing.assert_array_equal(decoded.image, decode_file(single).image)


# ---------------------------------------------------------------------------- burned-in annotation


def test_burned_in_annotation_is_rejected_unless_allowed(tmp_path):
    arr = gradient(64, 64)
    yes = save_native(tmp_path / "yes.dcm", dicom_header(uid.ExplicitVRLittleEndian, 64, 64,
                                                         BurnedInAnnotation="YES"), arr.tobytes())
    no = save_native(tmp_path / "no.dcm", dicom_header(uid.ExplicitVRLittleEndian, 64, 64,
                                                       BurnedInAnnotation="NO"), arr.tobytes())
    err = rejected(yes)
    assert err.reason == "burned_in_annotation" and "--allow-burned-in" in err.detail
    allowed = decode_file(yes, DecodeConfig(allow_burned_in=True))
    np.testing.assert_array_equal(allowed.image, decode_file(no).image)


# ---------------------------------------------------------------------------------- config, CLI


def test_ingest_config_and_cli_options():
    from radimagenet.commands import ingest as command

    cfg = IngestConfig(source="s", out="s3://b/p")
    assert (cfg.max_megapixels, cfg.allow_burned_in) == (64.0, False)
    fields = cfg.fingerprint_fields()
    assert fields["max_megapixels"] == 64.0 and fields["allow_burned_in"] is False
    assert IngestConfig(source="s", out="s3://b/p", allow_burned_in=True).fingerprint_fields() != fields
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--max-megapixels"):
            IngestConfig(source="s", out="s3://b/p", max_megapixels=bad)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["src", "--out", "s3://b/p"])
    assert (args.max_megapixels, args.allow_burned_in) == (64.0, False)
    args = parser.parse_args(["src", "--out", "s3://b/p", "--max-megapixels", "200", "--allow-burned-in"])
    assert (args.max_megapixels, args.allow_burned_in) == (200.0, True)


# ------------------------------------------------------------------------ the ingest, end to end


# The ingest's own peak RSS: VmHWM of this process image (getrusage's ru_maxrss survives exec, so a
# child forked from a big pytest process would report the parent's size).
_MEASURED_MAIN = """
import sys
from radimagenet.cli import main
rc = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("maxrss_kib", hwm.split()[1])
sys.exit(rc)
"""


def hostile_corpus(folder: Path) -> list[str]:
    """Every kind of too-large file, plus one good image (an ingest needs a written sample)."""
    folder.mkdir(parents=True)
    save_encapsulated(folder / "rle_65535.dcm", dicom_header(uid.RLELossless, 65535, 65535), [fake_rle()])
    save_encapsulated(folder / "j2k_40000.dcm", dicom_header(uid.JPEG2000Lossless, 40000, 40000),
                      [j2k_header(40000, 40000)])
    save_encapsulated(folder / "jpeg_40000.dcm", dicom_header(uid.JPEGBaseline8Bit, 40000, 40000, bits=8),
                      [jpeg_header(40000, 40000)])
    save_native(folder / "native_9000.dcm", dicom_header(uid.ExplicitVRLittleEndian, 9000, 9000), bytes(4096))
    (folder / "png_13000.png").write_bytes(png_header(13000, 13000))
    (folder / "png_20000.png").write_bytes(png_header(20000, 20000, bit_depth=8))
    (folder / "jpeg_65500.jpg").write_bytes(jpeg_header(65500, 65500))
    (folder / "jpeg_9000.jpg").write_bytes(jpeg_header(9000, 9000, components=3))
    hostile = sorted(p.name for p in folder.iterdir())
    Image.fromarray(gradient(64, 64, np.uint8)).save(folder / "good.png")
    return hostile


@pytest.mark.integration
def test_ingest_of_a_hostile_corpus_rejects_each_file_within_bounded_memory(stack_env, tmp_path):
    from radimagenet.dataset.inspect import load_report

    source = tmp_path / "src"
    hostile = hostile_corpus(source / "CT" / "hostile")
    secret = tmp_path / "secret"
    secret.write_text("hostile-test-secret-0123456789")
    out = f"s3://radimagenet/tests/hostile-{uuid.uuid4().hex[:8]}"
    r = subprocess.run([sys.executable, "-c", _MEASURED_MAIN, "ingest", str(source), "--out", out,
                        "--secret-file", str(secret), "--image-size", "32", "--workers", "1", "--no-progress",
                        "--split-unit", "image"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stdout.split("maxrss_kib")[-1].split()[0])
    assert peak_kib < 2**20, f"peak RSS {peak_kib / 2**10:.0f} MiB"
    report = load_report(out)  # in input order; a line names its input by path or by pseudonym
    assert len(report) == len(hostile) + 1
    assert [line["status"] for line in report].count("written") == 1
    for line in report:
        assert line["status"] == "written" or (line["reason"] or "").split(":")[0] == "too_large", line
    print(json.dumps({"hostile_files": len(hostile), "peak_rss_mib": round(peak_kib / 1024)}))


def test_codestream_size_is_found_past_markers_without_length_and_extended_boxes():
    from radimagenet.ingest.decode.pixels import _codestream_size

    jpeg = jpeg_header(60000, 60000)
    with_tem = jpeg[:2] + b"\xff\x01" + b"\xff\xd0" + jpeg[2:]  # TEM and RST0 carry no length field
    assert _codestream_size(with_tem)[:2] == (60000, 60000)
    j2k = j2k_header(60000, 60000)
    signature = b"\x00\x00\x00\x01jP  " + (20).to_bytes(8, "big") + b"\r\n\x87\n"  # an extended length
    assert _codestream_size(signature + b"\x00\x00\x00\x00jp2c" + j2k)[:2] == (60000, 60000)


@pytest.mark.parametrize("frame", [
    b"\xff\xd8" + b"\xff\xe0\x00\x10" + b"JFIF\x00" + b"\x00" * 9 + b"\xff\xd9",  # no frame header at all
    jpeg_header(0, 64),  # the height comes later (DNL): unknown before decoding
])
def test_a_codestream_whose_size_cannot_be_read_is_never_decoded(tmp_path, frame):
    path = save_encapsulated(tmp_path / "odd.dcm", dicom_header(uid.JPEGBaseline8Bit, 64, 64, bits=8), [frame])
    err = rejected(path)
    assert err.reason == "decode_failed" and "could not be read" in err.detail


def test_a_deflated_file_without_group_length_is_measured_too(tmp_path):
    ds = dicom_header(uid.DeflatedExplicitVRLittleEndian, 256, 256, bits=8)
    path = save_native(tmp_path / "deflated.dcm", ds, gradient(256, 256, np.uint8).tobytes() + bytes(64 * 2**20))
    raw = path.read_bytes()
    assert raw[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) File Meta Information Group Length
    length = 12 + int.from_bytes(raw[140:144], "little")
    stripped = tmp_path / "no-group-length.dcm"  # the same file without the group length element
    stripped.write_bytes(raw[:132] + raw[144:132 + length] + raw[132 + length:])
    assert rejected(stripped, DecodeConfig(max_megapixels=1)).reason == "too_large"


def test_ordinary_body_parts_and_wide_windows_are_kept(tmp_path):
    from radimagenet.ingest.fields import check_field

    arr = gradient(64, 64)
    for given, kept in (("Whole Body", "WHOLEBODY"), ("chest", "CHEST"), ("L-SPINE", "LSPINE"),
                        ("head_neck", "HEADNECK")):
        ds = dicom_header(uid.ExplicitVRLittleEndian, 64, 64, BodyPartExamined=given)
        meta = decode_file(save_native(tmp_path / f"{kept}.dcm", ds, arr.tobytes())).meta
        assert meta["body_part"] == kept and check_field("body_part", kept)
    assert not check_field("body_part", "SMITHJOHN")
    assert check_field("window", {"center": 2147483647.5, "width": 4294967295.0, "source": "file"})
