"""Property tests: random checkpoints made by torch.save, read by ckpt and by torch.

Random dtypes (every storable one), shapes (0-d and empty included), random strided views of a
few shared storages (the same tensor object at several places too), parameters, random nesting
of dicts, OrderedDicts, lists and tuples, Python scalars, and random pickle protocols. ckpt.load
must equal torch.load(weights_only=True) of the protocol-2 file (torch's safe loader reads only
protocol 2), ckpt.open's references must describe torch's tensors, and the numpy flavour must
hold torch's bytes.
"""

from __future__ import annotations

import math
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ckpt  # noqa: E402
from ckpt.tensors import TensorRef  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DTYPES = [
    "float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz",
    "float8_e4m3fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "complex128", "complex64", "complex32", "bool",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bits8", "bits16",
]
GRAD_DTYPES = {"float64", "float32", "float16", "bfloat16", "complex128", "complex64"}
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_storage(dtype_name: str, numel: int, seed: int) -> Any:
    dtype = getattr(torch, dtype_name)
    item = torch.empty(0, dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (numel * item,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        return (raw % 2).bool()
    return raw.view(dtype)


@st.composite
def view_specs(draw: Any, numel: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """A (size, stride, offset) view that lies inside a storage of ``numel`` elements."""
    ndim = draw(st.integers(0, 3))
    size = tuple(draw(st.integers(0, 4)) for _ in range(ndim))
    stride = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    if 0 in size:
        offset = draw(st.integers(0, numel))
    else:
        span = sum((s - 1) * t for s, t in zip(size, stride))
        if span + 1 > numel:
            stride = tuple(0 for _ in size)  # an expanded view always fits a non-empty storage
            span = 0
        if numel == 0:
            size = (0,) * max(ndim, 1)
            stride = (1,) * len(size)
            return size, stride, 0
        offset = draw(st.integers(0, numel - 1 - span))
    return size, stride, offset


@st.composite
def checkpoints(draw: Any) -> tuple[Any, int]:
    """A random object to torch.save, and the pickle protocol to save it with."""
    bases = []
    for i in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(DTYPES))
        numel = draw(st.integers(0, 24))
        bases.append(make_storage(dtype, numel, seed=draw(st.integers(0, 2**16)) + i))
    tensors: list[Any] = []
    for _ in range(draw(st.integers(1, 6))):
        base = draw(st.sampled_from(bases))
        size, stride, offset = draw(view_specs(base.numel()))
        t = torch.as_strided(base, size, stride, offset)
        name = str(t.dtype).removeprefix("torch.")
        kind = draw(st.sampled_from(["tensor", "tensor", "parameter", "grad"] if name in GRAD_DTYPES else ["tensor"]))
        if kind == "parameter":
            t = torch.nn.Parameter(t, requires_grad=draw(st.booleans()))
        elif kind == "grad":
            t = t.detach().requires_grad_()
        tensors.append(t)

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=8),
        st.floats(allow_nan=True, allow_infinity=True), st.binary(min_size=1, max_size=6),
        st.complex_numbers(allow_nan=False, max_magnitude=1e10),
        st.frozensets(st.integers(-5, 5), max_size=3).map(set),
    )
    leaves = st.one_of(scalars, st.sampled_from(range(len(tensors))).map(lambda i: tensors[i]))
    keys = st.text(alphabet="abcxyz_0123", min_size=1, max_size=5)
    tree = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(keys, children, max_size=4),
            st.dictionaries(keys, children, max_size=4).map(OrderedDict),
            st.dictionaries(st.integers(-3, 9), children, max_size=3),
        ),
        max_leaves=12,
    )
    root = draw(st.dictionaries(keys, tree, min_size=1, max_size=5))
    root["_all_tensors"] = tensors  # every tensor is reachable at least once
    protocol = draw(st.sampled_from([2, 2, 2, 1, 3, 4, 5]))
    return root, protocol


def leaves_by_path(obj: Any, leaf: type) -> list[tuple[str, Any]]:
    """(dotted path, leaf) of every ``leaf`` instance (torch.Tensor or np.ndarray) in a loaded
    object, walked like ckpt walks: each container once."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def visit(value: Any, keys: tuple[Any, ...]) -> None:
        if isinstance(value, leaf):
            out.append((".".join(k if type(k) is str else str(k) if type(k) in (int, bool) else repr(k) for k in keys),
                        value))
            return
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                return
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                visit(v, (*keys, k))

    visit(obj, ())
    return out


def check(obj: Any, protocol: int, helpers: Any, mmap: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        reference_file = Path(d) / "reference.pt"
        torch.save(obj, reference_file)
        path = reference_file
        if protocol != 2:
            path = Path(d) / f"protocol{protocol}.pt"
            torch.save(obj, path, pickle_protocol=protocol)
        reference = torch.load(reference_file, weights_only=True)

        result = ckpt.load(path, mmap=mmap)
        helpers.compare_loaded(result, reference, check_empty_storages=not mmap)

        theirs = leaves_by_path(reference, torch.Tensor)
        with ckpt.open(path) as ck:
            ours = list(ck.tensors())
            assert [p for p, _ in ours] == [p for p, _ in theirs]
            key_of: dict[int, str] = {}
            for (p, ref), (_, t) in zip(ours, theirs):
                assert type(ref) is TensorRef
                assert ref.dtype.name == str(t.dtype).removeprefix("torch."), p
                assert (ref.shape, ref.stride, ref.offset) == (tuple(t.shape), t.stride(), t.storage_offset()), p
                assert (ref.requires_grad, ref.is_parameter) == (t.requires_grad, isinstance(t, torch.nn.Parameter)), p
                assert ref.storage.nbytes == t.untyped_storage().nbytes(), p
                assert ref.nbytes == t.numel() * t.element_size(), p
                if ref.storage.nbytes:
                    cdata = t.untyped_storage()._cdata
                    assert key_of.setdefault(cdata, ref.storage.key) == ref.storage.key, p
            assert len(set(key_of.values())) == len(key_of)

        arrays = ckpt.load(path, as_="numpy", unsupported_dtype="raw", mmap=mmap)
        got = dict(leaves_by_path(arrays, np.ndarray))
        for p, t in theirs:
            assert helpers.array_bytes(got[p]) == helpers.torch_view_bytes(t), p
            assert got[p].shape == tuple(t.shape), p


@SETTINGS
@given(case=checkpoints(), mmap=st.booleans())
def test_random_checkpoints_load_like_torch(case, mmap, helpers):
    obj, protocol = case
    check(obj, protocol, helpers, mmap)


@SETTINGS
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 3), max_size=4).map(tuple),
    seed=st.integers(0, 2**16),
)
def test_single_contiguous_tensors_round_trip(dtype, shape, seed, helpers):
    """One tensor of any dtype and shape (0-d and empty included), saved alone as the root."""
    t = make_storage(dtype, math.prod(shape), seed).reshape(shape)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.pt"
        torch.save(t, path)
        reference = torch.load(path, weights_only=True)
        helpers.compare_loaded(ckpt.load(path), reference)
        with ckpt.open(path) as ck:
            assert type(ck.root) is TensorRef and ck.root.shape == tuple(shape)
