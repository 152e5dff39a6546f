"""numpy scalars, arrays and dtypes inside checkpoints, rebuilt by ckpt from bytes and descriptors.

Pickles come from real numpy 2 (``pickle.dumps``, and ``torch.save`` where torch is installed);
numpy 1.x pickles name the same functions under ``numpy.core`` instead of ``numpy._core``, so
those are made by rewriting the module names of numpy 2's pickles (the argument and state
layouts are the same in both versions). Nothing here unpickles with ``pickle``: the objects are
compared with the originals that were pickled.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.numpy_values import MAX_DTYPE_DEPTH
from ckpt.values import InertObject

VALUES: dict[str, Any] = {
    "f64": np.float64(0.25), "f32": np.float32(-1.5), "f16": np.float16(3.0), "i8": np.int8(-7),
    "u64": np.uint64(2**64 - 1), "b": np.bool_(True), "c": np.complex64(1 + 2j), "s": np.str_("héllo"),
    "by": np.bytes_(b"ab\x00c"), "dt64": np.datetime64("2024-05-06T07:08", "m"), "td64": np.timedelta64(-3, "D"),
    "arr": np.arange(12, dtype=np.float32).reshape(3, 4), "big_endian": np.arange(5, dtype=">i4"),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "zero_d": np.array(7, dtype=np.int16),
    "empty": np.zeros((0, 4), dtype=np.float64), "strings": np.array(["a", "bcd"]), "raw": np.array([b"x", b"yz"]),
    "bools": np.array([True, False]), "dates": np.array(["2020-01-01", "NaT"], dtype="M8[D]"),
    "struct": np.array([(1.5, [1, 2], b"x")], dtype=[("a", "<f4"), ("b", "i1", (2,)), ("c", "S1")]),
    "aligned": np.zeros(2, dtype=np.dtype([("a", "u1"), ("b", "<f8")], align=True)),
    "titled": np.zeros(1, dtype=np.dtype({"names": ["x"], "formats": ["<i2"], "titles": ["the x"]})),
    "subarray": np.zeros(2, dtype=np.dtype(("<f4", (2, 2)))), "void": np.zeros(2, dtype="V3"),
    "struct_scalar": np.array([(1, 2.0)], dtype=[("i", "<i4"), ("f", "<f8")])[0],
    "dtype": np.dtype(">u2"), "dtype_meta": np.dtype("<f8", metadata={"unit": "m"}), "dtype_dt": np.dtype("M8[10ms]"),
    "dtype_struct": np.dtype([("a", "<f4"), ("nested", [("b", "<i8")])]),
    "scalar_type": np.float32, "dtype_class": type(np.dtype("f8")), "ndarray": np.ndarray,
}


def write_raw(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
    return path


def numpy1(data: bytes) -> bytes:
    """A numpy 2 pickle as numpy 1.x writes it: the same calls under ``numpy.core``."""
    out = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray").replace(
        b"numpy._core.numeric", b"numpy.core.numeric")
    # protocol 4+ strings carry their length: fix the SHORT_BINUNICODE lengths of renamed modules
    for old, new in ((b"numpy._core.multiarray", b"numpy.core.multiarray"), (b"numpy._core.numeric", b"numpy.core.numeric")):
        out = out.replace(bytes([len(old)]) + new, bytes([len(new)]) + new)
    return pickletools.optimize(out)  # re-frames protocol 4-5 pickles (frame lengths changed)


def same(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes(order="A") == want.tobytes(order="A") and got.flags.f_contiguous == want.flags.f_contiguous
        assert got.flags.writeable and got.dtype.metadata == want.dtype.metadata
    elif isinstance(want, np.generic):
        assert type(got) is type(want) and got.dtype == want.dtype and got.tobytes() == want.tobytes()
    elif isinstance(want, np.dtype):
        assert type(got) is type(want) and got == want and got.str == want.str
        assert got.metadata == want.metadata and got.isalignedstruct == want.isalignedstruct
    else:
        assert got is want


@pytest.mark.parametrize("flavour", ["numpy", "lazy"])
@pytest.mark.parametrize("writer", ["numpy2", "numpy1"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_values_equal_what_was_pickled(tmp_path: Path, protocol: int, writer: str, flavour: str) -> None:
    data = pickle.dumps(VALUES, protocol=protocol)
    if writer == "numpy1":
        data = numpy1(data)
        assert b"numpy._core" not in data
    path = write_raw(tmp_path / "n.pt", data)
    if flavour == "numpy":
        got = ckpt.load(path, as_="numpy")
    else:
        with ckpt.open(path) as ck:
            got = ck.root
    assert list(got) == list(VALUES)
    for key, want in VALUES.items():
        same(got[key], want)
    assert ckpt.inspect(path).findings == []


def test_torch_flavour_and_torch_save(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    obj = {"w": torch.arange(3.0), "best": np.float64(0.93), "stats": np.arange(4, dtype=np.int64), "rng": np.random.get_state()}
    path = tmp_path / "t.pt"
    torch.save(obj, path)
    with pytest.raises(Exception, match="Unsupported global"):  # what users meet since torch 2.6
        torch.load(path, weights_only=True)
    got = ckpt.load(path)
    assert torch.equal(got["w"], obj["w"])
    same(got["best"], obj["best"])
    same(got["stats"], obj["stats"])
    assert got["rng"][0] == "MT19937" and np.array_equal(got["rng"][1], obj["rng"][1])
    shown = {v.path: v for v in ckpt.inspect(path).values}
    assert (shown["best"].type, shown["best"].value) == ("numpy.float64", 0.93)
    assert shown["stats"].type == "numpy.ndarray" and shown["stats"].repr == "numpy.ndarray int64[4]"


def test_shared_arrays_stay_shared(tmp_path: Path) -> None:
    a = np.arange(3.0)
    d = np.dtype(">i2")
    path = write_raw(tmp_path / "s.pt", pickle.dumps({"a": a, "again": a, "d": d, "arrays": [np.zeros(1, d), np.ones(1, d)]}, protocol=2))
    got = ckpt.load(path, as_="numpy")
    assert got["again"] is got["a"]
    assert got["arrays"][0].dtype is got["arrays"][1].dtype or got["arrays"][0].dtype == d
    assert got["d"] == d


# -- refusals and hostile input -----------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        import os

        return os.system, (f"touch {self.marker}",)


def test_object_arrays_are_refused_and_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plain = write_raw(tmp_path / "o.pt", pickle.dumps({"o": np.array([1, "two", None], dtype=object)}, protocol=2))
    with pytest.raises(ckpt.UnsupportedFeatureError, match="object"):
        ckpt.load(plain, as_="numpy")
    shown = ckpt.inspect(plain)
    assert {v.path: v.type for v in shown.values}["o"] in ("numpy.ndarray", "numpy.core.multiarray._reconstruct")
    evil = write_raw(tmp_path / "e.pt", pickle.dumps({"o": np.array([Payload(marker)], dtype=object)}, protocol=2))
    with pytest.raises(ckpt.UnsupportedFeatureError, match="object"):  # refused at its dtype, before the payload
        ckpt.load(evil, as_="numpy")
    summary = ckpt.inspect(evil)
    assert [f.verdict for f in summary.findings] == ["dangerous"]
    assert not marker.exists()
    scalar = write_raw(tmp_path / "s.pt", pickle.dumps({"o": np.array([1], dtype=object)[0:1].reshape(())}, protocol=2))
    with pytest.raises(ckpt.UnsupportedFeatureError, match="object"):
        ckpt.load(scalar, as_="numpy")


def test_structured_dtype_with_an_object_field_is_refused(tmp_path: Path) -> None:
    arr = np.zeros(1, dtype=[("a", "<f4"), ("o", "O")])
    with pytest.raises(ckpt.UnsupportedFeatureError, match="object"):
        ckpt.load(write_raw(tmp_path / "o.pt", pickle.dumps(arr, protocol=2)), as_="numpy")


def _dtype_pickle(spec: bytes, state: bytes) -> bytes:
    return b"\x80\x02cnumpy\ndtype\nX" + len(spec).to_bytes(4, "little") + spec + b"\x89\x88\x87R" + state + b"b."


GOOD_STATE = b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"


@pytest.mark.parametrize("spec,state,error", [
    (b"f3", GOOD_STATE, "no 3-byte size"),
    (b"q8", GOOD_STATE, "not a numpy type string"),
    (b"f8", GOOD_STATE.replace(b"K\x03", b"K\x09"), "state version 9"),
    (b"f8", GOOD_STATE.replace(b"X\x01\x00\x00\x00<", b"X\x01\x00\x00\x00!"), "byte order"),
    (b"f8", GOOD_STATE.replace(b"X\x01\x00\x00\x00<", b"X\x01\x00\x00\x00|"), "needs a byte order"),
    (b"f8", GOOD_STATE.replace(b"J\xff\xff\xff\xffJ", b"K\x04J"), "declares 4 bytes"),
    (b"S4", GOOD_STATE.replace(b"J\xff\xff\xff\xffJ", b"K\x09J"), "declares 9 bytes"),
    (b"f8", b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xfft", "8- or 9-item"),
    (b"M8", b"(K\x04X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00N(C\x05weeksK\x01K\x01K\x01t\x86t",
     "not a numpy datetime unit"),
])
def test_bad_dtype_descriptors_are_refused(tmp_path: Path, spec: bytes, state: bytes, error: str) -> None:
    with pytest.raises(ckpt.CheckpointError, match=error):
        ckpt.load(write_raw(tmp_path / "d.pt", _dtype_pickle(spec, state)), as_="numpy")


def test_structured_field_outside_its_item_is_refused(tmp_path: Path) -> None:
    good = pickletools.optimize(pickle.dumps(np.dtype([("a", "<f8")]), protocol=2))
    assert good.count(b"tbK\x00\x86s") == 1
    bad = good.replace(b"tbK\x00\x86s", b"tbK\x04\x86s")  # field 'a' at offset 4 of an 8-byte item
    with pytest.raises(ckpt.CorruptCheckpointError, match="does not lie inside"):
        ckpt.load(write_raw(tmp_path / "d.pt", bad), as_="numpy")


def test_array_data_must_match_its_shape(tmp_path: Path) -> None:
    good = pickletools.optimize(pickle.dumps(np.arange(4, dtype="<i4"), protocol=2))
    assert good.count(b"\x85cnumpy\ndtype") == 1
    short = good.replace(b"K\x04\x85cnumpy\ndtype", b"K\x05\x85cnumpy\ndtype")  # shape (5,) for 16 bytes
    with pytest.raises(ckpt.CorruptCheckpointError, match="needs 20 bytes, the file gives 16"):
        ckpt.load(write_raw(tmp_path / "a.pt", short), as_="numpy")
    scalar = pickletools.optimize(pickle.dumps(np.float64(1.0), protocol=3)).replace(b"C\x08\x00", b"C\x07")
    with pytest.raises(ckpt.CorruptCheckpointError, match="needs 8 bytes, the file gives 7"):
        ckpt.load(write_raw(tmp_path / "s.pt", scalar), as_="numpy")


def test_dtype_nesting_is_bounded(tmp_path: Path) -> None:
    dt = np.dtype("<f4")
    for _ in range(MAX_DTYPE_DEPTH + 2):
        dt = np.dtype([("x", dt)])
    with pytest.raises(ckpt.CorruptCheckpointError, match="nests deeper"):
        ckpt.load(write_raw(tmp_path / "d.pt", pickle.dumps(dt, protocol=2)), as_="numpy")


def test_a_pending_value_used_before_its_build_is_harmless(tmp_path: Path) -> None:
    """A crafted pickle that copies a dtype before BUILD completes it gets ckpt's placeholder, and a
    second BUILD on the same placeholder is refused."""
    head = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
    twice = head + b"2" + GOOD_STATE + b"b0" + GOOD_STATE + b"b."  # DUP, BUILD, POP, BUILD on the copy
    with pytest.raises(ckpt.CorruptCheckpointError, match="BUILD applied twice"):
        ckpt.load(write_raw(tmp_path / "t.pt", twice), as_="numpy")
    copied = b"\x80\x02]" + head[2:] + b"2" + GOOD_STATE + b"b\x86a."  # [(copy before BUILD, dtype)]
    got = ckpt.load(write_raw(tmp_path / "c.pt", copied), as_="numpy")
    assert got[0][1] == np.dtype("<f4")
    assert repr(got[0][0]).startswith("<pending numpy.dtype")
    assert type(got[0][0]).__name__ == "Pending" and got[0][0].value == np.dtype("<f4")


def test_only_ndarray_is_reconstructed(tmp_path: Path) -> None:
    data = pickle.dumps(np.ma.masked_array([1, 2], mask=[0, 1]), protocol=2)
    with pytest.raises(ckpt.UnsafeGlobalError, match="numpy.ma.core"):
        ckpt.load(write_raw(tmp_path / "m.pt", data), as_="numpy")
    summary = ckpt.inspect(write_raw(tmp_path / "m2.pt", data))
    assert summary.findings and all(f.verdict == "unknown" for f in summary.findings)
    with ckpt.open(write_raw(tmp_path / "m3.pt", data), policy="inspect") as ck:
        assert type(ck.root) is InertObject
