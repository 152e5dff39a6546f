"""ckpt's CRC-32 (ISA-L's where installed) is zlib's function, for any data and starting value."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt import crc


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=70_000), st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_crc32_is_zlibs(data: bytes, start: int) -> None:
    assert crc.crc32(data, start) == zlib.crc32(data, start)
    assert crc.crc32(memoryview(data)[1:], start) == zlib.crc32(data[1:], start)


def test_backend_is_named_and_consistent() -> None:
    assert crc.BACKEND in ("isal", "zlib")
    assert crc.RELEASES_GIL == (crc.BACKEND == "zlib")
    assert crc.crc32(b"123456789", 0) == 0xCBF43926
