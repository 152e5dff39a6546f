"""The tensor-record fast path of the VM must change speed, never results.

Every file is read twice, with and without the fast path, and the two object graphs must be
identical: same container types and order, same TensorRef fields, same storage identity.
"""

from __future__ import annotations

import functools
import struct
from unittest import mock
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scan_kit as K
from ckpt.checkpoint import open_reader
from ckpt.errors import CheckpointError
from ckpt.policy import Policy
from ckpt.rebuild import Builder
from ckpt.pickle_vm import Op
from ckpt.tensors import StorageRef, StorageType, TensorRef

torch = pytest.importorskip("torch")


def read(path: Any, fast: bool) -> Any:
    reader = open_reader(path)
    reader.fast_path = fast
    try:
        return reader.load(Builder(), Policy("strict"), [])
    finally:
        reader.archive.close()


def same(a: Any, b: Any, seen: dict[int, int], where: str = "") -> None:
    assert type(a) is type(b), (where, type(a), type(b))
    if id(a) in seen:
        assert seen[id(a)] == id(b), where
        return
    if isinstance(a, (dict, list, tuple, set, TensorRef, StorageRef, OrderedDict)):
        seen[id(a)] = id(b)
    if type(a) is TensorRef:
        for f in ("dtype", "shape", "stride", "offset", "requires_grad", "is_parameter", "device"):
            assert getattr(a, f) == getattr(b, f), (where, f)
            assert type(getattr(a, f)) is type(getattr(b, f)), (where, f)
        same(a.storage, b.storage, seen, where + ".storage")
    elif type(a) is StorageRef:
        assert (a.key, a.dtype, a.location, a.numel) == (b.key, b.dtype, b.location, b.numel), where
    elif type(a) is Op:  # a global the pickle named (each read has its own builder)
        assert a.name == b.name, where
    elif type(a) is StorageType:
        assert (a.name, a.dtype, a.untyped) == (b.name, b.dtype, b.untyped), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same(a[k], b[k], seen, f"{where}.{k}")
        assert getattr(a, "__dict__", {}).keys() == getattr(b, "__dict__", {}).keys(), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, seen, f"{where}.{i}")
    else:
        assert a == b or (a != a and b != b), where


def shapes_cases() -> list[Any]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, 4, generator=g)
    cases = {}
    for i in range(400):  # enough tensors for the memo to pass 256 entries (4-byte PUTs)
        kind = i % 8
        if kind == 0:
            t = torch.randn(i % 7 + 1, generator=g)
        elif kind == 1:
            t = base[i % 6]
        elif kind == 2:
            t = base[:, i % 5]
        elif kind == 3:
            t = torch.tensor(float(i))
        elif kind == 4:
            t = base.permute(2, 0, 1)
        elif kind == 5:
            t = torch.zeros(2, 3, 4, 5)[..., 1]
        elif kind == 6:
            t = torch.arange(70000)[i:i + 3]  # BININT offsets, BININT2/BININT1 sizes
        else:
            t = torch.empty(0, 3)
        cases[f"layers.{i}.w"] = t
    cases["tied"] = cases["layers.8.w"]
    cases["param"] = torch.nn.Parameter(torch.ones(3))
    cases["grad"] = torch.ones(2, requires_grad=True)
    return [cases]


@pytest.mark.parametrize("obj", shapes_cases())
def test_fast_and_slow_paths_agree(tmp_path: Any, obj: Any) -> None:
    path = tmp_path / "m.pt"
    torch.save(obj, path)
    same(read(path, True), read(path, False), {})


def fast_counts(monkeypatch: Any) -> list[int]:
    """Spy on the fast path: how many records it applied one at a time and in runs."""
    from ckpt import pickle_vm

    counts = [0, 0]
    one, many = pickle_vm.Unpickler._apply_record, pickle_vm.Unpickler._apply_entries

    def spy_one(self: Any, *args: Any) -> Any:
        result = one(self, *args)
        counts[0] += result is not pickle_vm._NO_MATCH
        return result

    def spy_many(self: Any, es: Any, rows: Any, *args: Any) -> Any:
        done = many(self, es, rows, *args)
        counts[1] += len(rows) if done else 0
        return done

    monkeypatch.setattr(pickle_vm.Unpickler, "_apply_record", spy_one)
    monkeypatch.setattr(pickle_vm.Unpickler, "_apply_entries", spy_many)
    return counts


def test_fast_path_is_taken(tmp_path: Any, monkeypatch: Any) -> None:
    counts = fast_counts(monkeypatch)
    path = tmp_path / "m.pt"
    torch.save({f"w{i}": torch.ones(2) for i in range(300)}, path)
    read(path, True)
    assert counts[1] > 250  # runs of entries, applied at once


def outcome(path: Any, fast: bool) -> Any:
    """The object graph a read gives with the interpreter's memo at the end (every entry the
    pickle stored, ordered by key), or the error it raises (type and message)."""
    from ckpt import pickle_vm

    memos = []
    load = pickle_vm.Unpickler.load

    def keep_memo(self: Any) -> Any:
        result = load(self)
        memos.append(dict(sorted(self.memo_snapshot().items())))
        return result

    try:
        with mock.patch.object(pickle_vm.Unpickler, "load", keep_memo):
            return ("ok", [read(path, fast), memos])
    except CheckpointError as e:
        return ("error", type(e).__name__, str(e))


@functools.lru_cache(maxsize=None)
def kit(shape: tuple[int, ...]) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    data, records = K.state_dict_pickle(1200, shape=shape)  # LONG_BINPUTs, two SETITEMS batches
    return data, tuple(records.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fast_and_slow_paths_agree_on_corrupted_records(tmp_path: Any, data: st.DataObject) -> None:
    """Flip, insert or delete bytes anywhere in a torch-style pickle (memo keys that alias the
    rebuild function or each other, keys that are not UTF-8, broken layouts): the interpreter
    gives the same objects, or the same error, with and without the fast path."""
    base, records = kit(data.draw(st.sampled_from([(2,), (), (2, 3), (2, 3, 4, 5), (300,)])))
    path = K.torch_zip(tmp_path / "c.pt", K.corrupted(base, data), records=dict(records))
    fast, slow = outcome(path, True), outcome(path, False)
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        same(fast[1], slow[1], {})
    else:
        assert fast == slow


@pytest.mark.parametrize("target", ["rebuild", "next key"])
def test_aliased_memo_keys_give_what_the_opcode_loop_gives(tmp_path: Any, target: str) -> None:
    """An entry whose key's PUT overwrites the memo key later entries GET the rebuild function
    from (so they call a string), or the key the next entry PUTs (two writes to one key in a
    run): the fast path gives exactly what the opcode loop gives."""
    base, records = kit((2,))
    at = base.index(b"X\x0f\x00\x00\x00layer300.weightr") + 20  # entry 300's LONG_BINPUT
    nxt = base.index(b"X\x0f\x00\x00\x00layer301.weightr") + 20
    index = 3 if target == "rebuild" else struct.unpack("<I", base[nxt + 1 : nxt + 5])[0]
    assert base[at] == 0x72 and b"_rebuild_tensor_v2\nq\x03" in base  # LONG_BINPUT; the function is memo 3
    raw = base[: at + 1] + struct.pack("<I", index) + base[at + 5 :]
    path = K.torch_zip(tmp_path / "a.pt", raw, records=dict(records))
    fast, slow = outcome(path, True), outcome(path, False)
    assert fast[0] == slow[0] == ("error" if target == "rebuild" else "ok")
    if fast[0] == "ok":
        same(fast[1], slow[1], {})
    else:
        assert fast == slow


def test_writes_after_a_run_win_over_its_unmade_entries(tmp_path: Any, monkeypatch: Any) -> None:
    """A run's memo entries are made when first read; a PUT into the run's keys after it, then a
    GET of another key of the same entry, must leave the PUT's value, as the opcode loop does;
    MEMOIZE after it counts every entry (the memos are compared whole)."""
    counts = fast_counts(monkeypatch)
    base, records = kit((2,))
    at = base.index(b"X\x0f\x00\x00\x00layer500.weightr") + 20  # entry 500's LONG_BINPUT of its key
    first = struct.unpack("<I", base[at + 1 : at + 5])[0]

    def put(i: int) -> bytes:
        return b"r" + struct.pack("<I", i)

    def get(i: int) -> bytes:
        return b"j" + struct.pack("<I", i)

    probe = (
        b"X\x04\x00\x00\x00over" + put(first + 5) + b"0"  # overwrite entry 500's hooks, POP
        + get(first + 1) + b"0"  # read its storage key: makes its entries
        + b"X\x05\x00\x00\x00probe" + get(first + 5) + b"s"  # root["probe"] = memo[first + 5]
        + b"X\x03\x00\x00\x00key" + get(first) + b"s"  # root["key"] = memo[first]
        + b"X\x01\x00\x00\x00m\x940"  # MEMOIZE: its key is the number of entries made (all of them)
    )
    assert base.endswith(b"u.")
    raw = base[:-1] + probe + b"."
    path = K.torch_zip(tmp_path / "w.pt", raw, records=dict(records))
    fast, slow = outcome(path, True), outcome(path, False)
    assert fast[0] == slow[0] == "ok" and counts[1] > 1000
    same(fast[1], slow[1], {})
    root = fast[1][0]
    assert root["probe"] == "over" and root["key"] == "layer500.weight"


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # saving them on purpose: torch returns them
def test_bare_storages_load_as_torch_returns_them(tmp_path: Any) -> None:
    """torch returns a storage saved on its own as a TypedStorage; ckpt makes those only when a
    file has one (a second pass), and must still give the same objects and sharing."""
    import ckpt

    t = torch.arange(6, dtype=torch.float32)
    u = torch.arange(4, dtype=torch.int16)
    obj = {"t": t, "s": t.storage(), "typed": u.storage(), "n": [t.storage()]}
    path = tmp_path / "bare.pt"
    torch.save(obj, path)
    ours, theirs = ckpt.load(path), torch.load(path, weights_only=True)
    for key in ("s", "typed"):
        assert type(ours[key]) is type(theirs[key])
        assert ours[key].dtype == theirs[key].dtype and ours[key].tolist() == theirs[key].tolist()
    assert type(ours["n"][0]) is type(theirs["n"][0])
    assert ours["s"]._data_ptr() == ours["t"].untyped_storage().data_ptr()
    assert theirs["s"]._data_ptr() == theirs["t"].untyped_storage().data_ptr()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6), min_size=2, max_size=6))
def test_keys_decoded_at_once_are_decoded_one_by_one(raw: list[bytes]) -> None:
    """A run's dict keys are decoded in one call (joined at NULs) only where that gives what
    decoding each one gives, including keys that hold NUL or are not UTF-8."""
    from ckpt.pickle_vm import _decode_all

    try:
        expected: Any = [str(b, "utf-8", "surrogatepass") for b in raw]
    except UnicodeDecodeError:
        expected = None
    assert _decode_all(tuple(raw)) == expected
