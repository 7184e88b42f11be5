"""A ranged body that breaks off mid-read is a BrokenRead (the reader retries those, and only those)."""

from __future__ import annotations

import io

import pytest

from radimagenet.errors import StorageError
from radimagenet.io.ranged import BrokenRead, RangeBody


class _Resetting(io.RawIOBase):
    def read(self, n: int = -1) -> bytes:
        raise ConnectionResetError("peer reset")


def test_a_reset_or_short_body_is_a_broken_read():
    with pytest.raises(BrokenRead, match="reading failed .*ConnectionResetError"):
        RangeBody(_Resetting(), None, 10, "s3://b/k bytes 0-9").read()
    short = RangeBody(io.BytesIO(b"abc"), None, 10, "s3://b/k bytes 0-9")
    assert short.read() == b"abc"
    with pytest.raises(BrokenRead, match="closed 7 bytes before the end"):
        short.read()
    assert issubclass(BrokenRead, StorageError)  # callers that do not retry see a StorageError as before
