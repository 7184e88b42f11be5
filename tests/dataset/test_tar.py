"""The tar layout without a server: what tar.py writes, tar.py and Python's tarfile read back alike."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from radimagenet.dataset.format import Sample
from radimagenet.dataset.tar import (
    END_OF_ARCHIVE,
    encode_sample,
    group_samples,
    iter_tar,
    sample_members,
    tar_bytes,
    tar_header,
)
from radimagenet.errors import ConfigError, StorageError


def _reference_tar_header(name: str, size: int) -> bytes:
    """The ustar header built field by field (what tar_header must produce)."""
    header = bytearray(512)
    header[0 : len(name)] = name.encode()
    header[100:108], header[108:116], header[116:124] = b"0000444\0", b"0000000\0", b"0000000\0"
    header[124:136], header[136:148] = b"%011o\0" % size, b"00000000000\0"
    header[148:156], header[156:157], header[257:265] = b"        ", b"0", b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_tar_header_is_a_valid_deterministic_ustar_header():
    for name, size in [("a.cls", 1), ("0" * 32 + ".npy", 50_304), ("k.mask.png", 0), ("x" * 100, 8**11 - 1)]:
        header = tar_header(name, size)
        assert header == _reference_tar_header(name, size)
        info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")  # raises on a bad checksum
        assert (info.name, info.size, info.mode, info.mtime, info.uid, info.type) == (
            name, size, 0o444, 0, 0, tarfile.REGTYPE)
    with pytest.raises(ConfigError, match="longer than 100"):
        tar_header("y" * 101, 1)


def _sample(i: int, key: str | None = None, mask: bool = False, size: int = 700) -> Sample:
    meta = json.dumps({"label_id": i % 3, "split": "train", "patient": f"p{i}"}).encode()
    return Sample(index=i, source=f"{i}.dcm", key=key or f"{i:032x}", split="train", patient=f"p{i}",
                  label_id=i % 3, image=bytes([i % 251]) * (size + i), meta=meta,
                  mask=bytes([i % 2]) * (size // 3 + i) if mask else None)


def _shard(samples: list[Sample], encoding: str = "npy") -> bytes:
    buf = io.BytesIO()
    for s in samples:
        buf.write(encode_sample(s, encoding))
    buf.write(END_OF_ARCHIVE)
    return buf.getvalue()


def _expected(samples: list[Sample], encoding: str = "npy") -> list[dict]:
    out = []
    for s in samples:
        d = {"__key__": s.key, encoding: s.image, "cls": str(s.label_id).encode(), "json": s.meta}
        if s.mask is not None:
            d["mask.png"] = s.mask
        out.append(d)
    return out


SAMPLES = [_sample(0, mask=True), _sample(1), _sample(2, key="dir.v2/sub.d/abc", mask=True), _sample(3, size=512)]


def test_written_samples_read_back_with_iter_tar_and_group_samples():
    blob = _shard(SAMPLES)
    assert len(blob) % 512 == 0 and blob.endswith(END_OF_ARCHIVE)
    for chunk in (1 << 20, 7, 512, 513):  # a tiny chunk exercises every refill path
        got = list(group_samples(iter_tar(io.BytesIO(blob), "mem", chunk=chunk)))
        assert got == _expected(SAMPLES)
    members = list(iter_tar(io.BytesIO(blob)))
    assert [name for name, _ in members] == [n for s in SAMPLES for n, _ in sample_members(s, "npy")]
    assert all(isinstance(data, bytearray) for _, data in members)  # writable: zero-copy tensors


def test_written_samples_read_back_with_tarfile_in_the_same_order():
    blob = _shard(SAMPLES, "png")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        got = [(m.name, tar.extractfile(m).read()) for m in tar]
        attributes = {(m.mode, m.mtime, m.uid, m.gid, m.type) for m in tar.getmembers()}
    want = [(n, d) for s in SAMPLES for n, d in sample_members(s, "png")]
    assert got == want
    assert attributes == {(0o444, 0, 0, 0, tarfile.REGTYPE)}  # deterministic: no time, owner or mode leaks
    assert [n for n, _ in want[:4]] == [f"{'0' * 32}.png", f"{'0' * 32}.cls", f"{'0' * 32}.json",
                                        f"{'0' * 32}.mask.png"]


def test_equal_samples_give_identical_bytes():
    again = [_sample(0, mask=True), _sample(1), _sample(2, key="dir.v2/sub.d/abc", mask=True), _sample(3, size=512)]
    assert _shard(SAMPLES) == _shard(again)
    assert tar_bytes([]) == b""


def test_sample_members_refuse_long_names_and_keys_with_dots():
    with pytest.raises(ConfigError, match="longer than 100 bytes"):
        encode_sample(_sample(0, key="k" * 97), "npy")  # "kkk...k.json" is 102 bytes
    with pytest.raises(ConfigError, match="sample key 'a.b'"):
        encode_sample(_sample(0, key="a.b"), "npy")


def _tarfile_blob(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("somedir.d")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_archives_written_by_tarfile_read_back_including_long_names(fmt):
    """Other writers (tarfile, webdataset's TarWriter) may use ustar prefixes, GNU long names or pax."""
    long_dir = "d" * 60 + ".v1/" + "e" * 50  # > 100 bytes with the key: a prefix, GNU 'L' or pax path
    members = [(f"{long_dir}/k1.npy", b"a" * 10), (f"{long_dir}/k1.mask.png", b"m"),
               ("plain/k2.npy", b"b" * 600), ("plain/k2.cls", b"1"), ("README", b"no extension")]
    if fmt == tarfile.USTAR_FORMAT:
        members = [(n, d) for n, d in members if len(n.encode()) <= 255]
    got = list(group_samples(iter_tar(io.BytesIO(_tarfile_blob(members, fmt)), chunk=100)))
    assert got == [{"__key__": f"{long_dir}/k1", "npy": b"a" * 10, "mask.png": b"m"},
                   {"__key__": "plain/k2", "npy": b"b" * 600, "cls": b"1"}]


def test_a_non_ascii_pax_name_reads_back():
    blob = _tarfile_blob([("dossier-é/k.npy", b"x")], tarfile.PAX_FORMAT)
    assert list(group_samples(iter_tar(io.BytesIO(blob)))) == [{"__key__": "dossier-é/k", "npy": b"x"}]


def test_corrupt_and_truncated_tars_are_storage_errors_naming_the_shard():
    blob = _shard(SAMPLES)
    with pytest.raises(StorageError, match=r"s3://b/x.tar is truncated \(member '0{32}.npy'"):
        list(iter_tar(io.BytesIO(blob[:700]), "s3://b/x.tar"))
    with pytest.raises(StorageError, match=r"s3://b/x.tar is corrupt or not a ustar"):
        list(iter_tar(io.BytesIO(b"PK\x03\x04" + bytes(1020)), "s3://b/x.tar"))
    assert list(iter_tar(io.BytesIO(b""))) == []  # an empty stream holds no members
    assert list(iter_tar(io.BytesIO(blob[: len(blob) - 1024]))) == list(iter_tar(io.BytesIO(blob)))


def test_group_samples_groups_consecutive_members_only():
    members = [("a.npy", b"1"), ("a.cls", b"0"), ("b.npy", b"2"), ("a.json", b"{}"), ("noext", b"")]
    assert list(group_samples(members)) == [{"__key__": "a", "npy": b"1", "cls": b"0"},
                                            {"__key__": "b", "npy": b"2"}, {"__key__": "a", "json": b"{}"}]
