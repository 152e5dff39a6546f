"""Sparse (COO, CSR, CSC, BSR, BSC), quantized (per-tensor, per-channel) and nested tensors.

Files are made by real torch at test time; ``torch.load(weights_only=True)`` is the oracle for
what loads. Where torch skips a check (sparse index bounds are checked only under
``torch.sparse.check_sparse_tensor_invariants``, nested components are not bounds-checked), the
damaged files are made by torch too (``check_invariants=False``) or by editing one number in the
pickle, and ckpt must refuse them with a clear error.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.values import Record

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def save(obj: Any, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path)
    return path


def torch_load(path: Path, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=True, **kw)


def edit_pickle(path: Path, pattern: bytes, repl: bytes, out: Path) -> Path:
    """A copy of checkpoint ``path`` whose data.pkl has the one match of regex ``pattern`` replaced."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data, n = re.subn(pattern, lambda m: repl.replace(b"\\1", m.group(1) if m.groups() else b""),
                                  data, flags=re.DOTALL)
                assert n == 1, (pattern, data)
            dst.writestr(info.filename, data)
    return out


def sparse_examples() -> dict[str, Any]:
    dense = torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 5.0, 0.0]])
    return {
        "coo": dense.to_sparse(),
        "coo_uncoalesced": torch.sparse_coo_tensor(torch.tensor([[1, 0, 1], [0, 2, 0]]), torch.tensor([1.0, 2.0, 3.0]), (2, 3)),
        "coo_hybrid": torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.ones(2, 3), (4, 3)),
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 2)),
        "bsc": dense.to_sparse_bsc((2, 2)),
        "csr_batched": torch.stack([dense, dense * 2]).to_sparse_csr(),
        "csr_int32": torch.sparse_csr_tensor(torch.tensor([0, 1, 2], dtype=torch.int32),
                                             torch.tensor([1, 0], dtype=torch.int32), torch.tensor([7.0, 8.0]), (2, 2)),
    }


def same_sparse(a: Any, b: Any) -> None:
    assert a.layout == b.layout and a.shape == b.shape and a.dtype == b.dtype
    if a.layout == torch.sparse_coo:
        assert a.is_coalesced() == b.is_coalesced()
        assert torch.equal(a._indices(), b._indices()) and torch.equal(a._values(), b._values())
    else:
        assert torch.equal(a.to_dense(), b.to_dense())
        assert torch.equal(a.values(), b.values())


@pytest.mark.parametrize("mmap", [False, True])
def test_sparse_tensors_load_like_torch(tmp_path: Path, mmap: bool) -> None:
    path = save(sparse_examples(), tmp_path / "s.pt")
    reference = torch_load(path)
    loaded = ckpt.load(path, mmap=mmap)
    assert list(loaded) == list(reference)
    for key in reference:
        same_sparse(loaded[key], reference[key])


def test_sparse_tensors_as_numpy_records(tmp_path: Path) -> None:
    examples = sparse_examples()
    path = save(examples, tmp_path / "s.pt")
    arrays = ckpt.load(path, as_="numpy")
    coo = arrays["coo"]
    assert type(coo) is Record and coo.type == "torch.sparse_coo"
    assert np.array_equal(coo["indices"], examples["coo"]._indices().numpy())
    assert np.array_equal(coo["values"], examples["coo"]._values().numpy())
    assert coo["size"] == (4, 4) and coo["is_coalesced"] is True
    assert arrays["coo_uncoalesced"]["is_coalesced"] is False
    csc = arrays["csc"]
    assert csc.type == "torch.sparse_csc" and set(csc) == {"ccol_indices", "row_indices", "values", "size"}
    assert np.array_equal(csc["ccol_indices"], examples["csc"].ccol_indices().numpy())
    bsr = arrays["bsr"]
    assert bsr["values"].shape == tuple(examples["bsr"].values().shape) and np.array_equal(bsr["col_indices"], examples["bsr"].col_indices().numpy())


def test_inspect_lists_the_parts_of_sparse_tensors(tmp_path: Path) -> None:
    path = save({"coo": sparse_examples()["coo"], "csr": sparse_examples()["csr"]}, tmp_path / "s.pt")
    summary = ckpt.inspect(path)
    tensors = {t.path: (t.dtype, list(t.shape)) for t in summary.tensors}
    assert tensors == {"coo.indices": ("int64", [2, 5]), "coo.values": ("float32", [5]),
                       "csr.crow_indices": ("int64", [5]), "csr.col_indices": ("int64", [5]), "csr.values": ("float32", [5])}
    types = {v.path: v.type for v in summary.values}
    assert types["coo"] == "torch.sparse_coo" and types["csr"] == "torch.sparse_csr"
    assert {v.path: v.value for v in summary.values}["coo.size"] == [4, 4]


@pytest.mark.parametrize("as_", ["torch", "numpy"])
def test_sparse_index_out_of_range_is_an_error_not_a_later_crash(tmp_path: Path, as_: str) -> None:
    bad = torch.sparse_coo_tensor(torch.tensor([[0, 100000]]), torch.tensor([1.0, 2.0]), (2,), check_invariants=False)
    path = save({"bad": bad}, tmp_path / "bad.pt")
    torch_load(path)  # torch loads it silently (its invariant checks are off by default)
    with pytest.raises(ckpt.CorruptCheckpointError, match="out of range|100000"):
        ckpt.load(path, as_=as_)
    ckpt.inspect(path)  # shapes are fine: inspect reads no index values


@pytest.mark.parametrize("as_", ["torch", "numpy"])
@pytest.mark.parametrize("case", ["crow_end", "col_range", "col_order", "coalesced"])
def test_bad_sparse_indices_are_refused(tmp_path: Path, as_: str, case: str) -> None:
    if case == "coalesced":  # claims coalesced, but has duplicate indices
        t = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.tensor([1.0, 2.0]), (3,), check_invariants=False,
                                    is_coalesced=True)
    else:
        crow, col = {"crow_end": ([0, 1, 3], [0, 1]), "col_range": ([0, 1, 2], [0, 9]),
                     "col_order": ([0, 2, 2], [1, 0])}[case]
        t = torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col), torch.ones(len(col)), (2, 2),
                                    check_invariants=False)
    path = save({"t": t}, tmp_path / "bad.pt")
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.load(path, as_=as_)


def test_sparse_shapes_are_checked_without_reading_data(tmp_path: Path) -> None:
    path = save({"t": sparse_examples()["coo"]}, tmp_path / "s.pt")
    # the size torch.Size((4, 4)) -> (4, 4, 4): one dimension more than indices + values allow
    bad = edit_pickle(path, rb"(Size\n(?:q.)?)K\x04K\x04\x86", b"\\1K\x04K\x04K\x04\x87", tmp_path / "b.pt")
    for call in (lambda: ckpt.inspect(bad), lambda: ckpt.load(bad), lambda: ckpt.load(bad, as_="numpy")):
        with pytest.raises(ckpt.CorruptCheckpointError, match="COO sparse tensor of size"):
            call()


# -- quantized -------------------------------------------------------------------------------------


def quantized_examples() -> dict[str, Any]:
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -2.5]])
    return {
        "per_tensor": torch.quantize_per_tensor(x, 0.5, 3, torch.quint8),
        "per_tensor_q8": torch.quantize_per_tensor(x, 0.25, -2, torch.qint8),
        "per_tensor_q32": torch.quantize_per_tensor(x, 0.1, 0, torch.qint32),
        "per_channel": torch.quantize_per_channel(x, torch.tensor([0.5, 0.25]), torch.tensor([0, 1]), 0, torch.qint8),
        "per_channel_axis1": torch.quantize_per_channel(x, torch.tensor([0.5, 0.25, 1.0]), torch.tensor([0, 1, 2]), 1,
                                                        torch.quint8),
        "view": torch.quantize_per_tensor(x, 0.5, 3, torch.quint8)[1],
    }


def same_quantized(a: Any, b: Any) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and a.qscheme() == b.qscheme()
    assert torch.equal(a.int_repr(), b.int_repr()) and a.storage_offset() == b.storage_offset()
    if a.qscheme() == torch.per_tensor_affine:
        assert (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point())
    else:
        assert torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
        assert torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
        assert a.q_per_channel_axis() == b.q_per_channel_axis()


def test_quantized_tensors_load_like_torch(tmp_path: Path) -> None:
    path = save(quantized_examples(), tmp_path / "q.pt")
    reference = torch_load(path)
    loaded = ckpt.load(path)
    for key in reference:
        same_quantized(loaded[key], reference[key])


def test_quantized_tensors_as_numpy_and_in_inspect(tmp_path: Path) -> None:
    examples = quantized_examples()
    path = save(examples, tmp_path / "q.pt")
    arrays = ckpt.load(path, as_="numpy")
    pt = arrays["per_tensor_q8"]
    assert pt.type == "torch.quantized" and pt["qscheme"] == "per_tensor_affine"
    assert (pt["scale"], pt["zero_point"]) == (0.25, -2) and pt["int_repr"].dtype == np.int8
    assert np.array_equal(pt["int_repr"], examples["per_tensor_q8"].int_repr().numpy())
    pc = arrays["per_channel_axis1"]
    assert pc["axis"] == 1 and np.array_equal(pc["scales"], [0.5, 0.25, 1.0])
    assert np.array_equal(pc["int_repr"], examples["per_channel_axis1"].int_repr().numpy())
    summary = ckpt.inspect(path)
    shown = {t.path: (t.dtype, list(t.shape)) for t in summary.tensors}
    assert shown["per_tensor"] == ("quint8", [2, 3]) and shown["view"] == ("quint8", [3])
    with ckpt.open(path) as ck:
        q = ck.root["per_channel"]
        assert q.dtype.name == "qint8" and q.quantizer["axis"] == 0
        assert q.quantizer["qscheme"] == "torch.per_channel_affine" and q.quantizer["scales"].numel == 2
        assert ck.root["per_tensor"].quantizer == {"qscheme": "torch.per_tensor_affine", "scale": 0.5, "zero_point": 3}


@pytest.mark.parametrize("case", ["axis", "scales", "scheme"])
def test_bad_quantizers_are_refused_as_torch_does(tmp_path: Path, case: str) -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    q = torch.quantize_per_channel(x, torch.tensor([0.5, 0.25]), torch.tensor([0, 1]), 0, torch.qint8)
    path = save({"q": q}, tmp_path / "q.pt")
    if case == "axis":  # the axis (BININT1 0 closing the qparams tuple, after the zero points) -> 5
        old, new = rb"(R(?:q.)?)K\x00t", b"\\1K\x05t"
        error, torch_error = "axis 5 is out of range", "axis 5 out of range"
    elif case == "scales":  # the size (2, 2) -> (1, 2): two scales for size[axis] = 1
        old, new = rb"K\x02K\x02\x86(q.)K\x02K\x01\x86", b"K\x01K\x02\x86\\1K\x02K\x01\x86"
        error, torch_error = "2 entries; size\\[axis\\] = 1", "length must equal"
    else:
        old, new = rb"per_channel_affine", b"per_channel_symmetric"
        error, torch_error = "qscheme torch.per_channel_symmetric", "qscheme"
    bad = edit_pickle(path, old, new, tmp_path / "bad.pt")
    with pytest.raises(Exception, match=torch_error):
        torch_load(bad)
    for kw in ({}, {"as_": "numpy"}):
        with pytest.raises(ckpt.CheckpointError, match=error):
            ckpt.load(bad, **kw)


# -- nested ------------------------------------------------------------------------------------------


def nested_example() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([torch.arange(6.0).reshape(2, 3), torch.arange(4.0).reshape(1, 4)])


def test_nested_tensors_load_like_torch(tmp_path: Path) -> None:
    path = save({"nt": nested_example()}, tmp_path / "n.pt")
    reference = torch_load(path)["nt"]
    loaded = ckpt.load(path)["nt"]
    assert loaded.is_nested and len(loaded.unbind()) == 2
    for a, b in zip(loaded.unbind(), reference.unbind()):
        assert torch.equal(a, b)
    arrays = ckpt.load(path, as_="numpy")["nt"]
    assert [a.tolist() for a in arrays] == [t.tolist() for t in reference.unbind()]
    summary = ckpt.inspect(path)
    assert {t.path for t in summary.tensors} == {"nt.buffer", "nt.sizes", "nt.strides", "nt.offsets"}
    assert {v.path: v.type for v in summary.values}["nt"] == "torch.nested"


def test_nested_component_outside_its_buffer_is_refused(tmp_path: Path) -> None:
    path = save({"nt": nested_example()}, tmp_path / "n.pt")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        offsets_record = None
        for name in names:
            if re.search(r"/data/\d+$", name) and z.getinfo(name).file_size == 16:
                data = np.frombuffer(z.read(name), dtype="<i8")
                if data.tolist() == [0, 6]:
                    offsets_record = name
        assert offsets_record is not None
        out = tmp_path / "bad.pt"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
            for name in names:
                data = z.read(name)
                if name == offsets_record:
                    data = np.array([0, 1000], dtype="<i8").tobytes()  # the second component far outside
                dst.writestr(name, data)
    for kw in ({}, {"as_": "numpy"}):
        with pytest.raises(ckpt.CorruptCheckpointError, match="runs past its buffer"):
            ckpt.load(out, **kw)


def test_attributes_saved_with_sparse_and_quantized_tensors(tmp_path: Path) -> None:
    """torch wraps them in _rebuild_from_type_v2 when a tensor has Python attributes."""
    s = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).to_sparse()
    s.tag = "sparse"
    q = torch.quantize_per_tensor(torch.tensor([1.0, 2.0]), 0.5, 1, torch.quint8)
    q.tag = "quantized"
    path = save({"s": s, "q": q}, tmp_path / "a.pt")
    reference = torch_load(path)
    loaded = ckpt.load(path)
    assert (loaded["s"].tag, loaded["q"].tag) == (reference["s"].tag, reference["q"].tag)
    same_sparse(loaded["s"], reference["s"])
    same_quantized(loaded["q"], reference["q"])
    arrays = ckpt.load(path, as_="numpy")
    assert arrays["s"].info["attrs"] == {"tag": "sparse"} and arrays["q"].info["attrs"] == {"tag": "quantized"}
