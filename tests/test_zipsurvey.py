"""The tolerant zip survey: its numpy path (large archives) equals its record-by-record path.

The same archives, hostile ones included, are surveyed both ways (the numpy threshold lowered so
that small archives take it); every record field and every anomaly must agree.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ckpt import zipsurvey as zs
from ckpt.zipread import RangedFile

import scan_kit as K


def both(data: bytes) -> tuple[Any, Any]:
    f = RangedFile.from_bytes(data)
    old = zs._NUMPY_FROM
    try:
        zs._NUMPY_FROM = 1
        fast = zs.survey(f)
        zs._NUMPY_FROM = 1 << 60
        slow = zs.survey(f)
    finally:
        zs._NUMPY_FROM = old
    return fast, slow


def fields(s: Any) -> list[tuple[Any, ...]]:
    return [(e.index, e.name, e.flags, e.method, e.crc, e.compressed_size, e.size, e.header_offset, e.data_offset,
             e.end, e.local_ok) for e in s.entries]


def archives(tmp_path: Path) -> dict[str, bytes]:
    sd, records = K.state_dict_pickle(40)
    base = K.torch_zip(tmp_path / "base.pt", sd, records=records).read_bytes()
    out = {"torch": base}
    bad = bytearray(base)
    bad[6] |= 0x01  # a flag only in the first local header
    out["flag"] = bytes(bad)
    out["name"] = base.replace(b"archive/data/7", b"archive/data/X", 1)  # a local name differs
    out["crc"] = base.replace(struct.pack("<2f", 1.0, 2.0), struct.pack("<2f", 1.0, 3.0), 1)
    out["appended"] = K.benign_pickle() + base
    out["prefix-gap"] = base[:100] + b"\0" * 7 + base[100:]  # offsets now point 7 bytes early
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(30):
            z.writestr(f"d/{i}", bytes(i))
        z.writestr("d/", b"")
        z.writestr("../up", b"x")
        z.writestr("dup", b"1")
    with pytest.warns(UserWarning):
        with zipfile.ZipFile(buf, "a") as z:
            z.writestr("dup", b"2")
    out["names"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i in range(30):
            z.writestr(f"c/{i}", bytes(1000))
    out["deflated"] = buf.getvalue()
    return out


def test_numpy_survey_equals_record_by_record(tmp_path: Path) -> None:
    for name, data in archives(tmp_path).items():
        fast, slow = both(data)
        if fast is None:
            assert slow is None, name
            continue
        assert fields(fast) == fields(slow), name
        assert sorted(fast.anomalies) == sorted(slow.anomalies), name
        assert (fast.start, fast.complete, fast.coverage, fast.has_crcs) == (slow.start, slow.complete, slow.coverage, slow.has_crcs), name
        assert zs.outside_ranges(fast, len(data)) == zs.outside_ranges(slow, len(data)), name


def test_numpy_survey_is_used_for_large_archives(tmp_path: Path) -> None:
    sd, records = K.state_dict_pickle(300)
    data = K.torch_zip(tmp_path / "big.pt", sd, records=records).read_bytes()
    s = zs.survey(RangedFile.from_bytes(data))
    assert s.arrays is not None and len(s) == 303 and s.anomalies == []
    assert s.record(0).name == "archive/data.pkl" and s.record(0).local_ok


def test_survey_reports_instead_of_raising(tmp_path: Path) -> None:
    codes = {name: {a[0] for a in zs.survey(RangedFile.from_bytes(d)).anomalies} for name, d in archives(tmp_path).items()}
    assert codes["torch"] == set()
    assert "zip.header-mismatch" in codes["flag"] and "zip.header-mismatch" in codes["name"]
    assert codes["crc"] == set()  # the survey reads no data: CRCs are checked when a record is read
    assert "zip.outside-data" in codes["appended"]
    assert {"zip.unsafe-name", "zip.duplicate-name"} <= codes["names"]
