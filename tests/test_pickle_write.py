"""ckpt's protocol-2 pickler against CPython's own (``pickle.dumps(obj, protocol=2)``, the C
implementation torch.save uses): the same bytes for every value it takes, memo identities,
batch boundaries and recursive objects included. Needs no torch."""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.errors import UnsavableObjectError
from ckpt.pickle_vm import Op, Unpickler
from ckpt.pickle_write import Global, Pickler, Reduction

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_as_cpython(obj: Any) -> None:
    ours = Pickler().dumps(obj)
    theirs = pickle.dumps(obj, protocol=2)
    assert ours == theirs


SHARED = "shared string"


@pytest.mark.parametrize("obj", [
    0, 1, 255, 256, 65535, 65536, -1, -255, -256, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, -128, -129,
    -(2**15), -(2**23), -(2**39), 2**63, -(2**63), 2**64, 10**100, -(10**100), 2**2040, -(2**2047), 2**3000,
    0.0, -0.0, 1.5, float("inf"), float("nan"), 1e-310,
    "", "a", "é✓漢", "\ud800", "x" * 70000, b"", b"a", b"\x00\xff" * 3, bytearray(b"ab"), bytearray(),
    (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((),), [], [1], [1, 2], {}, {1: 2}, {"a": [1, {"b": ()}]},
    True, False, None, [None, True, 1.0], 1 + 2j, {1, 2, 3}, set(), {"a"}, Counter("hello"), Counter(),
    OrderedDict(), OrderedDict(a=1), [SHARED, SHARED, (SHARED, SHARED)],
    {"x": b"ab", "y": "latin1", "z": b"c", "w": "c"},  # the 'latin1' the C pickler uses is interned
])
def test_values(obj: Any) -> None:
    same_as_cpython(obj)


@pytest.mark.parametrize("n", [1, 2, 999, 1000, 1001, 1999, 2000, 2001])
def test_batch_boundaries(n: int) -> None:
    """The C pickler's batches differ by container: a dict of 1000 items ends with an empty
    ``MARK SETITEMS``, a list of 1001 with ``MARK x APPENDS``, an OrderedDict of 1001 with SETITEM."""
    same_as_cpython(list(range(n)))
    same_as_cpython({i: i for i in range(n)})
    same_as_cpython(OrderedDict((i, str(i)) for i in range(n)))
    same_as_cpython(set(range(n)))


def test_state_dict_metadata_is_build_state() -> None:
    sd = OrderedDict([("w", 1)])
    sd._metadata = OrderedDict([("", {"version": 1}), ("layer", {"version": 1})])  # type: ignore[attr-defined]
    same_as_cpython(sd)
    same_as_cpython([sd, sd])


def test_recursive_objects() -> None:
    a: list[Any] = [1]
    a.append(a)
    same_as_cpython(a)
    d: dict[str, Any] = {}
    d["self"] = d
    same_as_cpython(d)
    t = ([],)
    t[0].append(t)
    same_as_cpython(t)
    big = tuple([[]] * 4)
    big[0].append(big)
    same_as_cpython(big)


def test_memo_indices_past_255() -> None:
    same_as_cpython([str(i) for i in range(600)] + ["x"] * 3)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.binary(max_size=20), st.complex_numbers(allow_nan=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=6),
        st.dictionaries(st.text(max_size=8), inner, max_size=6).map(OrderedDict),
        st.sets(st.one_of(st.integers(), st.text(max_size=5)), max_size=5),
    ),
    max_leaves=40,
)


@SETTINGS
@given(values)
def test_any_value_is_pickled_as_cpython_pickles_it(obj: Any) -> None:
    same_as_cpython(obj)


@SETTINGS
@given(st.lists(st.sampled_from(["k", "longer key", "é"]), max_size=20))
def test_shared_objects(keys: list[str]) -> None:
    """Identity, not equality, decides memo hits: shared objects are fetched, equal ones repeated."""
    pool = {k: [k] for k in set(keys)}
    same_as_cpython([pool[k] for k in keys] + [[k] for k in keys])


def test_reduction_and_global() -> None:
    g = Global.of("collections", "OrderedDict")
    out = Pickler().dumps([Reduction(g, ()), g, Reduction(g, ())])
    op = Op("collections.OrderedDict", OrderedDict)
    loaded = Unpickler(out, resolve=lambda m, n, p: op, persistent_load=None).load()
    assert loaded == [OrderedDict(), op, OrderedDict()]
    assert out.count(b"ccollections\nOrderedDict\n") == 1


class Custom:
    pass


@pytest.mark.parametrize("obj,where", [
    ({"a": [1, Custom()]}, "root['a'][1]"),
    ({"k": frozenset({1})}, "root['k']"),
    ([range(3)], "root[0]"),
])
def test_unknown_objects_are_refused_with_their_place(obj: Any, where: str) -> None:
    with pytest.raises(UnsavableObjectError) as info:
        Pickler(check_global=lambda g: None).dumps(obj)
    assert str(info.value).startswith(where)


def test_check_global_can_refuse() -> None:
    def refuse(g: Global) -> None:
        raise UnsavableObjectError(f"{g.qualname} refused")

    with pytest.raises(UnsavableObjectError, match=r"root\[0\]: builtins.bytes refused"):
        Pickler(check_global=refuse).dumps([b""])


def test_too_deep_nesting_is_a_clear_error() -> None:
    obj: Any = []
    for _ in range(100_000):
        obj = [obj]
    with pytest.raises(UnsavableObjectError, match="nests too deeply"):
        Pickler().dumps(obj)
