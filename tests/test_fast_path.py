"""The tensor-record fast path of the VM must change speed, never results.

Every file is read twice, with and without the fast path, and the two object graphs must be
identical: same container types and order, same TensorRef fields, same storage identity.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from ckpt.checkpoint import open_reader
from ckpt.policy import Policy
from ckpt.rebuild import Builder
from ckpt.tensors import StorageRef, TensorRef

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


def test_fast_path_is_taken(tmp_path: Any, monkeypatch: Any) -> None:
    from ckpt import pickle_vm

    calls = []
    original = pickle_vm.Unpickler._tensor_record

    def spy(self: Any, *args: Any) -> Any:
        result = original(self, *args)
        calls.append(result is not pickle_vm._NO_MATCH)
        return result

    monkeypatch.setattr(pickle_vm.Unpickler, "_tensor_record", spy)
    path = tmp_path / "m.pt"
    torch.save({f"w{i}": torch.ones(2) for i in range(300)}, path)
    read(path, True)
    assert sum(calls) > 250


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
