"""The inspect table's name grouping: the fast grouping by name shape must equal the plain
definition (one regex substitution per name) for any names, line breaks and odd digits included."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ckpt_cli import render

PARTS = st.sampled_from(["a", "b1", "12", "3", "x\u0663", "l0", "", "9a", "w\n2", "\ud800", "07"])
NAMES = st.lists(st.lists(PARTS, min_size=1, max_size=4).map(".".join), max_size=40)


def naive(pattern: re.Pattern[str], names: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        out.setdefault(pattern.sub("*", name), []).append(i)
    return out


@settings(max_examples=1000, deadline=None)
@given(NAMES, st.integers(min_value=1, max_value=12))
@example(["12.b1.12.a", "12.b1.3.a"], 1)  # two shapes, one group: the limit check counted it twice
def test_grouping_by_shape_equals_one_substitution_per_name(names: list[str], limit: int) -> None:
    shapes = render._shapes(names)
    for pattern in (render._NUMBER_SEGMENT, render._DIGITS):
        expected = naive(pattern, names)
        got = render._group_by_pattern(pattern, names, shapes)
        assert got == expected and list(got) == list(expected)
        assert render._group_by_pattern(pattern, names, shapes, limit) == (expected if len(expected) <= limit else None)


def test_names_of_two_shapes_under_one_key_count_once() -> None:
    names = ["a.b1.12.b1", "a.b1.3.b1"]  # shapes a.b0.00.b0 and a.b0.0.b0, one key a.b1.*.b1
    shapes = render._shapes(names)
    assert render._group_by_pattern(render._NUMBER_SEGMENT, names, shapes, 1) == {"a.b1.*.b1": [0, 1]}


def test_many_numbered_names_fold_into_one_row() -> None:
    names = [f"layer{i}.sub{j}.weight" for i in range(300) for j in range(10)]
    groups, how = render.group_tensors(names, depth=None, max_rows=40)
    assert groups == {"layer*.sub*.weight": list(range(3000))} and how == "numbers shown as *"
    groups, how = render.group_tensors([f"h.{i}.w" for i in range(50)] + ["head"], depth=None, max_rows=3)
    assert list(groups) == ["h.*.w", "head"] and how == "numbered parts shown as *"
