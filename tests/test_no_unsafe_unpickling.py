"""Nothing ever unpickles with an unsafe loader: not ckpt, not its command line, not these tests.

* Statically: no module of ckpt/, cli/ or tests/ calls ``pickle.load``/``loads``/``Unpickler``
  (nor ``_pickle``, ``cPickle``, ``dill``, ``joblib``...), imports those names from such a module,
  or calls ``torch.load`` without ``weights_only=True``; ckpt and the CLI never call ``torch.load``
  at all.
* At run time: with every unsafe loader of the standard library (and ``torch.load``) replaced by
  a trap, ckpt loads, opens and inspects every fixture.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest

import ckpt

REPO = Path(__file__).resolve().parent.parent
SCANNED = [REPO / "ckpt", REPO / "cli", REPO / "tests", REPO / "examples"]
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_NAMES = {"load", "loads", "Unpickler", "_Unpickler", "open"}


def python_files() -> list[Path]:
    return sorted(p for d in SCANNED if d.exists() for p in d.rglob("*.py") if ".venv" not in p.parts)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Every unsafe unpickling call or import in one module's source."""
    problems = []
    in_library = "/ckpt/" in filename or "/cli/" in filename
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module in UNSAFE_MODULES:
            bad = [a.name for a in node.names if a.name in UNSAFE_NAMES]
            if bad:
                problems.append(f"{filename}:{node.lineno}: from {node.module} import {', '.join(bad)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func) or ""
        module, _, attr = name.rpartition(".")
        if module in UNSAFE_MODULES and attr in UNSAFE_NAMES:
            problems.append(f"{filename}:{node.lineno}: {name}(...)")
        if attr == "read_pickle":
            problems.append(f"{filename}:{node.lineno}: {name}(...)")
        for kw in node.keywords:
            if kw.arg == "weights_only" and not _is_true(kw.value):
                problems.append(f"{filename}:{node.lineno}: weights_only={ast.unparse(kw.value)}")
            if kw.arg == "pickle_module":
                problems.append(f"{filename}:{node.lineno}: pickle_module=...")
            if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                problems.append(f"{filename}:{node.lineno}: allow_pickle={ast.unparse(kw.value)}")
        if name == "torch.load" or name.endswith(".torch.load") or name == "torch.serialization.load":
            if in_library:
                problems.append(f"{filename}:{node.lineno}: the library calls torch.load")
            elif not any(k.arg == "weights_only" and _is_true(k.value) for k in node.keywords):
                problems.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
    return problems


def test_scanner_catches_what_it_must():
    """The scanner itself can fail: each of these spellings is reported."""
    bad = {
        "import pickle\npickle.loads(b'')": "pickle.loads",
        "import pickle\npickle.load(open('f', 'rb'))": "pickle.load",
        "import pickle\npickle.Unpickler(f).load()": "pickle.Unpickler",
        "from pickle import loads": "from pickle import loads",
        "import _pickle\n_pickle.loads(b'')": "_pickle.loads",
        "import torch\ntorch.load('m.pt')": "torch.load without weights_only=True",
        "import torch\ntorch.load('m.pt', weights_only=False)": "weights_only=False",
        "import torch\ntorch.load('m.pt', weights_only=flag)": "weights_only=flag",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)": "allow_pickle=True",
        "import pandas as pd\npd.read_pickle('f')": "read_pickle",
        "import dill\ndill.loads(b'')": "dill.loads",
    }
    for source, needle in bad.items():
        found = unsafe_calls(source, "/x/tests/probe.py")
        assert any(needle in p for p in found), (source, found)
    assert unsafe_calls("import torch\ntorch.load('m.pt', weights_only=True)", "/x/tests/p.py") == []
    assert unsafe_calls("import pickle\npickle.dumps(1)", "/x/tests/p.py") == []
    assert unsafe_calls("import torch\ntorch.load('m.pt', weights_only=True)", "/x/ckpt/p.py") != []


def test_no_unsafe_unpickling_anywhere_in_the_sources():
    files = python_files()
    assert any(p.name == "pickle_vm.py" for p in files) and any(p.name == "conftest.py" for p in files)
    problems = [p for f in files for p in unsafe_calls(f.read_text(encoding="utf-8"), str(f))]
    assert problems == []


@pytest.fixture
def traps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every unsafe loader with a trap that records the call and raises."""
    calls: list[str] = []

    def trap(name: str) -> Any:
        def sprung(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return sprung

    import _pickle

    try:  # import first: importing torch subclasses pickle.Unpickler
        import torch
    except ImportError:
        torch = None
    for mod, names in ((pickle, ("load", "loads", "Unpickler", "_Unpickler")), (_pickle, ("load", "loads", "Unpickler"))):
        for n in names:
            monkeypatch.setattr(mod, n, trap(f"{mod.__name__}.{n}"))
    if torch is not None:
        import torch.serialization  # noqa: F401

        monkeypatch.setattr(torch, "load", trap("torch.load"))
        monkeypatch.setattr(torch.serialization, "load", trap("torch.serialization.load"))
    return calls


def test_loading_every_fixture_runs_no_unsafe_loader(traps, helpers):
    """With the traps set, ckpt reads every fixture through its own interpreter only."""
    refused = {"protocol_0", "unknown_global", "tensor_subclass"}  # test_load_oracle
    flavours = {"numpy": {"as_": "numpy", "unsupported_dtype": "raw"}}
    if helpers.HAS_TORCH:
        flavours["torch"] = {"map_location": "cpu"}
    for flavour, kw in flavours.items():
        failed = set()
        for name in helpers.ORACLE_NAMES:
            try:
                ckpt.load(helpers.fixture_path(name), **kw)
            except ckpt.CheckpointError:
                failed.add(name)
        assert failed == refused | ({"meta"} if flavour == "numpy" else set()), flavour
    for name in helpers.ORACLE_NAMES:
        if name != "protocol_0":
            ckpt.inspect(helpers.fixture_path(name))
    assert traps == []


def test_traps_are_armed(traps):
    import _pickle

    for loader in (pickle.load, pickle.loads, pickle.Unpickler, _pickle.load, _pickle.loads, _pickle.Unpickler):
        assert loader.__name__ == "sprung"
        with pytest.raises(AssertionError, match="was called"):
            loader(b"")
    assert len(traps) == 6
