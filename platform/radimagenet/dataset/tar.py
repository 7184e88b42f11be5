"""The tar layout of shards, read and written in one place.

Writing: every member is a plain POSIX ustar entry with a deterministic header (mode 0444, owner 0,
mtime 0; see :func:`tar_header`), so equal samples give byte-identical shards; a sample is its
image, ``cls`` (unless unlabeled) and ``json`` members (and ``mask.png``), in that order, joined into one buffer
(:func:`encode_sample`); a shard ends with :data:`END_OF_ARCHIVE`.

Reading: :func:`iter_tar` is a small streaming parser (ustar, GNU long names, pax) that reads 1 MiB
at a time and builds no TarInfo: about 5x faster than ``tarfile`` in ``r|`` mode or webdataset's
expander. :func:`group_samples` groups consecutive members by the format's key rule
(:func:`radimagenet.dataset.format.split_member_name`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from radimagenet.dataset.format import (
    LABEL_EXT,
    MASK_EXT,
    META_EXT,
    UNLABELED,
    Sample,
    check_key,
    encode_label,
    member_name,
    split_member_name,
)
from radimagenet.errors import ConfigError, StorageError

READ_CHUNK = 1 << 20  # bytes per read of the underlying stream
BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)  # two zero blocks close a tar archive
MAX_NAME = 100  # bytes: members are written with a plain ustar name field (no prefix, no pax)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

# The fixed fields of every ustar header: mode 0444, owner 0, mtime 0, a regular file ("0").
_MODE_OWNER = b"0000444\0" b"0000000\0" b"0000000\0"  # bytes 100-124
_MTIME = b"00000000000\0"  # bytes 136-148
_TAIL = (b"0" + b"\0" * 100 + b"ustar\x0000").ljust(356, b"\0")  # bytes 156-512: type, link, magic
_FIXED_SUM = sum(_MODE_OWNER) + sum(_MTIME) + sum(_TAIL) + 8 * ord(" ")  # checksum field counts as spaces


def tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file (mode 0444, owner 0, mtime 0): deterministic, and built
    from constant parts: 1.6 us against 26 for ``tarfile.TarInfo.tobuf``, on the driver's thread,
    which writes every member of every shard."""
    raw = name.encode()
    if len(raw) > MAX_NAME:
        raise ConfigError(f"tar member name longer than {MAX_NAME} bytes: {name!r}")
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_FIXED_SUM + sum(raw) + sum(size_field))
    return b"".join((raw.ljust(MAX_NAME, b"\0"), _MODE_OWNER, size_field, _MTIME, checksum, _TAIL))


def sample_members(sample: Sample, encoding: str) -> list[tuple[str, bytes]]:
    """A sample's tar members in shard order: image (``encoding``), ``cls`` (none when the sample is
    ``UNLABELED``), ``json``[, ``mask.png``]."""
    key = check_key(sample.key)
    members = [(encoding, sample.image)]
    if sample.label_id != UNLABELED:
        members.append((LABEL_EXT, encode_label(sample)))
    members.append((META_EXT, sample.meta))
    if sample.mask is not None:
        members.append((MASK_EXT, sample.mask))
    return [(member_name(key, ext), data) for ext, data in members]


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """``(name, data)`` members as consecutive tar entries (header, data, zero padding), joined."""
    parts: list[bytes] = []
    for name, data in members:
        parts += (tar_header(name, len(data)), data, b"\0" * (-len(data) % BLOCK))
    return b"".join(parts)


def encode_sample(sample: Sample, encoding: str) -> bytes:
    """A sample's tar entries, joined: what a shard writer appends (one write per sample)."""
    return tar_bytes(sample_members(sample, encoding))


def encoded_size(sample: Sample, encoding: str) -> int:
    """``len(encode_sample(sample, encoding))`` without building it (the ingest plans shards by it)."""
    return sum(BLOCK + len(data) + (-len(data) % BLOCK) for _, data in sample_members(sample, encoding))


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode()
        pos += length
    return out


def iter_tar(stream: Any, where: str = "tar", chunk: int = READ_CHUNK, spans: bool = False) -> Iterator[tuple]:
    """``(name, data)`` of the regular files of a tar stream (ustar, GNU long names, pax), in order;
    with ``spans``, ``(name, data, start, end)``: the member's bytes in the stream, from its first
    header (long-name and pax headers included) to the end of its padded data (the shard index).

    ``data`` is a (writable) ``bytearray``, so arrays decoded from it can become tensors without a copy.
    Reads ``chunk`` bytes at a time from any object with ``read(n)``; a corrupt or truncated stream
    is a :class:`StorageError` naming ``where``.
    """
    buf, pos, eof, base = bytearray(), 0, False, 0  # base: the stream offset of buf[0]

    def fill(n: int) -> bool:
        nonlocal buf, pos, eof, base
        if len(buf) - pos >= n:
            return True
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < n and not eof:
            data = stream.read(max(chunk, n - have))
            if not data:
                eof = True
                break
            parts.append(data)
            have += len(data)
        base += pos
        whole = len(parts) == 2 and not parts[0] and isinstance(parts[1], bytearray)  # a buffer handed over whole
        buf, pos = parts[1] if whole else bytearray().join(parts), 0
        return have >= n

    long_name: str | None = None
    pax: dict[str, str] = {}
    start = 0
    while fill(BLOCK):
        if long_name is None and not pax:
            start = base + pos
        header = buf[pos : pos + BLOCK]
        if header.count(0) == BLOCK:
            return
        if header[257:262] != b"ustar":  # every tar writer in use (tarfile, GNU, webdataset) sets it
            raise StorageError(f"{where} is corrupt or not a ustar/pax/GNU tar (bad header magic)")
        try:
            name = header[:100].split(b"\0", 1)[0].decode()
            if header[257:263] == b"ustar\0" and header[345]:  # POSIX prefix field (GNU uses it otherwise)
                name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
            size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
        except ValueError as exc:
            raise StorageError(f"{where} is corrupt: unreadable tar header ({exc})") from exc
        kind = header[156:157]
        pos += BLOCK
        padded = (size + BLOCK - 1) & ~(BLOCK - 1)
        if not fill(padded):
            raise StorageError(f"{where} is truncated (member {name!r} needs {size} bytes)")
        data = buf[pos : pos + size]
        pos += padded
        if kind in (b"0", b"\0", b"7"):
            path = pax.get("path", long_name or name)
            yield (path, data, start, base + pos) if spans else (path, data)
            long_name, pax = None, {}
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode()
        elif kind == b"x":
            try:
                pax = _pax_records(data)
            except ValueError as exc:
                raise StorageError(f"{where} is corrupt: unreadable pax header of {name!r} ({exc})") from exc
        # directories, links, global pax headers ('g') and the rest carry no sample data


def group_samples(members: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """Group consecutive members sharing a key into samples (members without an extension are skipped).

    ``{"__key__": "abc", "npy": b"...", "cls": b"3", "json": b"{...}", "mask.png": b"..."}``.
    """
    current: dict[str, Any] | None = None
    for name, data in members:
        key, ext = split_member_name(name)
        if not ext:
            continue
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current
