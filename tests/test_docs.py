"""Keep the docs honest.

* ``ckpt.inspect(...).as_json()`` validates against the committed JSON Schema
  (docs/schemas/inspect-v1.json), checked by a small hand-written validator (jsonschema is not a
  dependency); every key ckpt emits is in the schema (``additionalProperties: false``) and every
  property the schema declares is emitted by at least one of the checkpoints built here.
* The tables in docs/ that are generated from the code (allowlist, dtypes, limits, verdicts) are
  up to date.
* Every CLI command's ``--help`` shows an example.
* README.md carries the two fresh-machine commands verbatim.

The main checkpoint is assembled by hand (a zip + a hand-written protocol-2 pickle), so these tests
run in the environment without torch too; where torch is installed, real ``torch.save`` output is
checked as well.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.dtypes import DTYPES
from ckpt.summary import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMA_PATH = DOCS / "schemas" / "inspect-v1.json"
EXAMPLE_PATH = DOCS / "schemas" / "inspect-v1.example.json"


# -- a small JSON Schema (2020-12) checker for the subset our schemas use ------------------------

SUPPORTED = {
    "$schema", "$id", "$ref", "$defs", "title", "description", "examples", "type", "const", "enum",
    "properties", "required", "additionalProperties", "items", "oneOf", "anyOf", "minimum", "maximum",
}


def _type_ok(inst: Any, name: str) -> bool:
    return {
        "null": inst is None,
        "boolean": type(inst) is bool,
        "integer": type(inst) is int,
        "number": type(inst) in (int, float),
        "string": type(inst) is str,
        "array": type(inst) is list,
        "object": type(inst) is dict,
    }[name]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


class SchemaChecker:
    """Validates instances and records which schema properties they exercised (``seen``)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = schema
        self.seen: set[str] = set()

    def resolve(self, ref: str) -> dict[str, Any]:
        assert ref.startswith("#/"), f"only local $refs are supported, not {ref}"
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def validate(self, inst: Any) -> list[str]:
        seen: set[str] = set()
        errors = self._check(inst, self.root, "$", "#", seen)
        if not errors:
            self.seen |= seen
        return errors

    def _check(self, inst: Any, schema: Any, where: str, loc: str, seen: set[str]) -> list[str]:
        if schema is True or schema == {}:
            return []
        unsupported = set(schema) - SUPPORTED
        assert not unsupported, f"{loc}: the test's checker does not support {sorted(unsupported)}"
        errors: list[str] = []
        if "$ref" in schema:
            errors += self._check(inst, self.resolve(schema["$ref"]), where, schema["$ref"], seen)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_type_ok(inst, t) for t in types):
                return errors + [f"{where}: {inst!r:.80} is not of type {types}"]
        if "const" in schema and not _same(inst, schema["const"]):
            errors.append(f"{where}: {inst!r:.80} is not {schema['const']!r}")
        if "enum" in schema and not any(_same(inst, e) for e in schema["enum"]):
            errors.append(f"{where}: {inst!r:.80} is not one of {schema['enum']!r:.200}")
        if type(inst) in (int, float):
            if "minimum" in schema and inst < schema["minimum"]:
                errors.append(f"{where}: {inst} < minimum {schema['minimum']}")
            if "maximum" in schema and inst > schema["maximum"]:
                errors.append(f"{where}: {inst} > maximum {schema['maximum']}")
        if type(inst) is dict:
            props = schema.get("properties", {})
            for name in schema.get("required", []):
                if name not in inst:
                    errors.append(f"{where}: required key {name!r} is missing")
            for name, value in inst.items():
                if name in props:
                    ploc = f"{loc}/properties/{name}"
                    seen.add(ploc)
                    errors += self._check(value, props[name], f"{where}.{name}", ploc, seen)
                elif "additionalProperties" in schema:
                    extra = schema["additionalProperties"]
                    if extra is False:
                        errors.append(f"{where}: key {name!r} is not documented in the schema")
                    else:
                        errors += self._check(value, extra, f"{where}.{name}", f"{loc}/additionalProperties", seen)
        if type(inst) is list and "items" in schema:
            for i, value in enumerate(inst):
                errors += self._check(value, schema["items"], f"{where}[{i}]", f"{loc}/items", seen)
        for key in ("oneOf", "anyOf"):
            if key not in schema:
                continue
            results = []
            for i, sub in enumerate(schema[key]):
                local: set[str] = set()
                results.append((self._check(inst, sub, where, f"{loc}/{key}/{i}", local), local))
            passing = [local for errs, local in results if not errs]
            if key == "oneOf" and len(passing) != 1:
                detail = "; ".join(errs[0] for errs, _ in results if errs)[:400]
                errors.append(f"{where}: matches {len(passing)} oneOf branches, not exactly one ({detail})")
            elif key == "anyOf" and not passing:
                errors.append(f"{where}: matches no anyOf branch")
            if passing:
                seen |= passing[0]
        return errors

    def declared_properties(self) -> set[str]:
        """Every ``<schema location>/properties/<name>`` the schema declares."""
        found: set[str] = set()

        def visit(node: Any, loc: str) -> None:
            if isinstance(node, dict):
                for name in node.get("properties", {}):
                    found.add(f"{loc}/properties/{name}")
                for key, child in node.items():
                    if key in ("properties", "$defs"):
                        for name, sub in child.items():
                            visit(sub, f"{loc}/{key}/{name}")
                    elif key in ("items", "additionalProperties"):
                        visit(child, f"{loc}/{key}")
                    elif key in ("oneOf", "anyOf"):
                        for i, sub in enumerate(child):
                            visit(sub, f"{loc}/{key}/{i}")

        visit(self.root, "#")
        return found


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def strict_json(summary: ckpt.Summary) -> Any:
    """The summary as ``--json`` prints it, refusing NaN/Infinity (not JSON)."""
    return json.loads(json.dumps(summary.as_json(), allow_nan=False))


# -- a hand-assembled torch zip checkpoint (no torch needed) ------------------------------------


class Raw(bytes):
    """Pickle opcodes written as they are."""


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def g(module: str, name: str) -> Raw:
    return Raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")


def put(value: Any, index: int) -> Raw:
    return Raw(pk(value) + b"q" + bytes([index]))


def get(index: int) -> Raw:
    return Raw(b"h" + bytes([index]))


def pk(v: Any) -> bytes:
    """Protocol-2 opcodes for a plain value (``Raw`` passes through)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"N"
    if v is True:
        return b"\x88"
    if v is False:
        return b"\x89"
    if type(v) is int:
        return b"J" + struct.pack("<i", v)
    if type(v) is float:
        return b"G" + struct.pack(">d", v)
    if type(v) is str:
        return _str(v)
    if type(v) is tuple:
        return b"(" + b"".join(pk(x) for x in v) + b"t"
    if type(v) is list:
        return b"]" + (b"(" + b"".join(pk(x) for x in v) + b"e" if v else b"")
    if type(v) is dict:
        return b"}" + (b"(" + b"".join(pk(k) + pk(x) for k, x in v.items()) + b"u" if v else b"")
    raise TypeError(type(v))


def call(func: Raw, *args: Any) -> Raw:
    return Raw(bytes(func) + pk(tuple(args)) + b"R")


def ordered_dict(items: dict[str, Any], state: dict[str, Any] | None = None) -> Raw:
    body = call(g("collections", "OrderedDict")) + b"(" + b"".join(pk(k) + pk(v) for k, v in items.items()) + b"u"
    if state is not None:
        body += pk(state) + b"b"
    return Raw(body)


def storage(key: str, numel: int, cls: str = "FloatStorage", module: str = "torch") -> Raw:
    return Raw(b"(" + _str("storage") + bytes(g(module, cls)) + _str(key) + _str("cpu") + pk(numel) + b"tQ")


def tensor(key: str, numel: int, shape: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> Raw:
    return call(g("torch._utils", "_rebuild_tensor_v2"), storage(key, numel), offset, shape, stride, False,
                call(g("collections", "OrderedDict")))


def rich_checkpoint(path: Path, *, with_version: bool) -> None:
    """A Lightning-style training checkpoint that exercises every part of the inspect schema."""
    root = {
        "state_dict": ordered_dict(
            {"layer.weight": tensor("0", 6, (2, 3), (3, 1)), "layer.bias": tensor("1", 2, (2,), (1,))},
            {"_metadata": ordered_dict({"": {"version": 1}})},
        ),
        "optimizer_states": [{
            "state": {0: {"step": 3.0, "exp_avg": tensor("2", 6, (2, 3), (3, 1)),
                          "exp_avg_sq": tensor("3", 6, (2, 3), (3, 1))}},
            "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "amsgrad": False, "weight_decay": 0.0,
                              "params": [0], "param_names": ["layer.weight"]}],
        }],
        "pytorch-lightning_version": "2.5.0",
        "epoch": 2, "global_step": 100, "step": 100, "iteration": 7,
        "hparams": Raw(bytes(g("argparse", "Namespace")) + b")\x81" + pk({"lr": 0.1}) + b"b"),
        "hook": g("os", "system"),
        "tied": [put(tensor("4", 3, (3,), (1,)), 9), get(9)],
        "first": put({"a": 1}, 10),
        "again": get(10),
        "sub": call(g("torch._tensor", "_rebuild_from_type_v2"), g("torch._utils", "_rebuild_tensor_v2"),
                    g("mypkg", "TaggedTensor"),
                    (storage("4", 3), 1, (2,), (1,), False, call(g("collections", "OrderedDict"))), {"tag": "x"}),
        "meta": call(g("torch._utils", "_rebuild_meta_tensor_no_storage"), g("torch", "float32"), (2, 2), (2, 1), False),
        "param": call(g("torch._utils", "_rebuild_parameter"), tensor("5", 2, (2,), (1,)), True,
                      call(g("collections", "OrderedDict"))),
        "f8": call(g("torch._utils", "_rebuild_tensor_v3"), storage("6", 4, "UntypedStorage", "torch.storage"), 0,
                   (4,), (1,), False, call(g("collections", "OrderedDict")), g("torch", "float8_e4m3fn")),
        "dtype": g("torch", "bfloat16"),
        "device": call(g("torch", "device"), "cuda", 1),
        "size": call(g("torch", "Size"), (2, 3)),
        "nothing": None,
        "name": "run-1",
    }
    pickle_bytes = b"\x80\x02" + pk(root) + b"."
    sizes = {"0": 24, "1": 8, "2": 24, "3": 24, "4": 12, "5": 8, "6": 4}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        for key, n in sizes.items():
            z.writestr(f"archive/data/{key}", bytes(range(n)))
        if with_version:
            z.writestr("archive/version", "3\n")
        z.writestr("archive/notes", b"a record no part of the torch format refers to")  # an anomaly


def root_tensor_checkpoint(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("t/data.pkl", b"\x80\x02" + pk(tensor("0", 3, (3,), (1,))) + b".")
        z.writestr("t/data/0", bytes(12))
        z.writestr("t/version", "3\n")


def legacy_checkpoint(path: Path) -> None:
    """A legacy (non-zip) torch file: preamble pickles, the object's pickle with 6-tuple storage ids
    (one a pre-0.4 storage view), the key list, the storages, and a few trailing bytes."""
    def pid(key: str, numel: int, view: tuple[str, int, int] | None = None) -> Raw:
        v = pk(view) if view else b"N"
        return Raw(b"(" + _str("storage") + bytes(g("torch", "FloatStorage")) + _str(key) + _str("cpu") + pk(numel) + v + b"tQ")

    def t(p: Raw, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> Raw:
        return call(g("torch._utils", "_rebuild_tensor_v2"), p, offset, shape, stride, False,
                    call(g("collections", "OrderedDict")))

    root = {"w": t(pid("140001", 6), 0, (2, 3), (3, 1)), "v": t(pid("140001", 6, ("140002", 2, 4)), 0, (4,), (1,)),
            "n": 1}
    stream = (
        b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."  # the magic number
        + b"\x80\x02M\xe9\x03."  # 1001
        + b"\x80\x02" + pk({"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}) + b"."
        + b"\x80\x02" + pk(root) + b"."
        + b"\x80\x02" + pk(["140001"]) + b"."
        + struct.pack("<q", 6) + bytes(24) + b"tail"
    )
    path.write_bytes(stream)


def torchscript_checkpoint(path: Path) -> None:
    """A TorchScript archive as torch.jit.save lays it out (module records, code, constants)."""
    module = Raw(bytes(g("__torch__", "M")) + b")\x81" + pk({
        "training": True, "w": tensor("0", 2, (2,), (1,)), "buf": tensor("1", 3, (3,), (1,)),
    }) + b"b")
    consts = b"\x80\x02" + pk((tensor("0", 1, (), ()),)) + b"."
    code = 'class M(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = ["buf", ]\n  w : Tensor\n'
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ts/extra/meta.json", "{}")
        z.writestr("ts/data/0", bytes(8))
        z.writestr("ts/data/1", bytes(12))
        z.writestr("ts/data.pkl", b"\x80\x02" + pk(module) + b".")
        z.writestr("ts/code/__torch__.py", code)
        z.writestr("ts/code/__torch__.py.debug_pkl", b"\x80\x02)." )
        z.writestr("ts/constants/0", bytes(4))
        z.writestr("ts/constants.pkl", consts)
        z.writestr("ts/traced_inputs.pkl", b"\x80\x02).")
        z.writestr("ts/version", "3\n")


def safetensors_file(path: Path, tensors: dict[str, tuple[str, list[int], bytes]], metadata: Any = None) -> None:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    data = b""
    for name, (code, shape, raw) in tensors.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def sharded_checkpoint(folder: Path) -> None:
    folder.mkdir()
    safetensors_file(folder / "model-00001-of-00002.safetensors", {"a.weight": ("F32", [2], bytes(8))})
    safetensors_file(folder / "model-00002-of-00002.safetensors", {"b.weight": ("BF16", [3], bytes(6))})
    (folder / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": 14},
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"},
    }))


def hand_made_documents(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    rich = tmp_path / "rich.ckpt"
    rich_checkpoint(rich, with_version=False)
    versioned = tmp_path / "versioned.ckpt"
    rich_checkpoint(versioned, with_version=True)
    root_tensor = tmp_path / "tensor.pt"
    root_tensor_checkpoint(root_tensor)
    yield "rich", strict_json(ckpt.inspect(rich))
    yield "rich --filter", strict_json(ckpt.inspect(versioned, filter="state_dict.*"))
    yield "rich, shallow walk", strict_json(ckpt.inspect(versioned, limits=ckpt.Limits(max_walk_depth=2)))
    yield "root tensor", strict_json(ckpt.inspect(root_tensor))
    legacy = tmp_path / "legacy.pt"
    legacy_checkpoint(legacy)
    yield "legacy", strict_json(ckpt.inspect(legacy))
    script = tmp_path / "script.pt"
    torchscript_checkpoint(script)
    yield "torchscript", strict_json(ckpt.inspect(script))
    st = tmp_path / "model.safetensors"
    safetensors_file(st, {"w": ("F32", [2, 2], bytes(16)), "e": ("U8", [0], b"")}, {"format": "pt"})
    yield "safetensors", strict_json(ckpt.inspect(st))
    sharded_checkpoint(tmp_path / "sharded")
    yield "sharded", strict_json(ckpt.inspect(tmp_path / "sharded"))


# -- the tests ------------------------------------------------------------------------------------


def test_schema_names_the_version_ckpt_emits() -> None:
    schema = load_schema()
    assert schema["properties"]["schema"]["const"] == SCHEMA
    assert schema["title"] == SCHEMA


def test_schema_dtype_enum_is_the_dtype_table() -> None:
    assert load_schema()["$defs"]["dtype"]["enum"] == list(DTYPES)


def test_hand_made_checkpoints_validate_and_cover_the_schema(tmp_path: Path) -> None:
    checker = SchemaChecker(load_schema())
    docs = dict(hand_made_documents(tmp_path))
    for name, doc in docs.items():
        errors = checker.validate(doc)
        assert not errors, f"{name}: " + "\n".join(errors[:20])
    # The documents really contain what they were built to contain.
    rich = docs["rich"]
    assert rich["kind"] == "training_checkpoint"
    assert rich["format"]["notes"], "a checkpoint without a version record carries a note"
    assert {f["verdict"] for f in rich["findings"]} == {"unknown", "dangerous"}
    assert docs["rich, shallow walk"]["elided"]
    assert docs["root tensor"]["kind"] == "tensor"
    assert docs["legacy"]["format"]["format"] == "torch-legacy" and docs["legacy"]["format"]["trailing_bytes"] == 4
    assert docs["torchscript"]["format"]["modules"][0]["parameters"] == ["w"]
    assert docs["torchscript"]["format"]["constants"] == {"values": 1, "tensors": 1, "nbytes": 4}
    assert docs["safetensors"]["format"]["metadata"] == {"format": "pt"}
    assert [s["file"] for s in docs["sharded"]["format"]["shards"]] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    # Every property the schema declares is emitted somewhere (the converse of additionalProperties: false).
    missing = checker.declared_properties() - checker.seen
    assert not missing, "schema properties no checkpoint emitted: " + ", ".join(sorted(missing))


def test_committed_example_validates() -> None:
    checker = SchemaChecker(load_schema())
    example = json.loads(EXAMPLE_PATH.read_text(encoding="utf-8"))
    assert checker.validate(example) == []


def test_checker_rejects_undocumented_and_missing_keys(tmp_path: Path) -> None:
    checker = SchemaChecker(load_schema())
    root_tensor = tmp_path / "tensor.pt"
    root_tensor_checkpoint(root_tensor)
    doc = strict_json(ckpt.inspect(root_tensor))
    doc["tensors"][0]["surprise"] = 1
    del doc["totals"]["numel"]
    errors = checker.validate(doc)
    assert any("surprise" in e for e in errors)
    assert any("numel" in e for e in errors)


def test_real_torch_checkpoints_validate(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    w = torch.randn(4, 4)
    objects = {
        "state_dict.pt": model.state_dict(),
        "training.pt": {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                        "global_step": 1200, "best_score": 0.91},
        "optimizer.pt": opt.state_dict(),
        "views.pt": {"w": w, "wt": w.t(), "row": w[1], "bf16": w.to(torch.bfloat16),
                     "f8": w.to(torch.float8_e5m2), "u16": torch.tensor([1, 2, 3], dtype=torch.uint16),
                     "p": torch.nn.Parameter(torch.ones(2)), "meta": torch.empty(2, device="meta"),
                     "misc": [torch.Size([1, 2]), torch.float16, torch.device("cpu"), {1, 2}, b"xy", 1 + 2j]},
        "tensor.pt": torch.arange(6).reshape(2, 3),
    }
    checker = SchemaChecker(load_schema())
    for name, obj in objects.items():
        path = tmp_path / name
        torch.save(obj, path)
        doc = strict_json(ckpt.inspect(path))
        errors = checker.validate(doc)
        assert not errors, f"{name}: " + "\n".join(errors[:20])
    sample = ROOT / "examples" / "sample.pt"
    if sample.exists():
        assert checker.validate(strict_json(ckpt.inspect(sample))) == []


def _all_commands() -> Iterator[tuple[tuple[str, ...], click.Command]]:
    from ckpt_cli.main import cli

    todo: list[tuple[tuple[str, ...], click.Command]] = [((), cli)]
    while todo:
        args, cmd = todo.pop()
        yield args, cmd
        if isinstance(cmd, click.Group):
            todo.extend(((*args, name), sub) for name, sub in cmd.commands.items())


def test_every_command_help_shows_an_example() -> None:
    from ckpt_cli.main import cli

    runner = CliRunner()
    commands = list(_all_commands())
    assert len(commands) >= 2
    for args, _cmd in commands:
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output
        text = result.output
        assert re.search(r"^\s*Examples?:", text, re.M), f"`ckpt {' '.join(args)} --help` has no Examples section"
        invocation = " ".join(("ckpt", *args))
        assert re.search(rf"^\s+{re.escape(invocation)}\b", text, re.M), (
            f"`ckpt {' '.join(args)} --help` shows no example line starting with {invocation!r}"
        )


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("ckpt_docs_generate_tables", DOCS / "generate_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_match_the_code() -> None:
    stale = _generator().stale_blocks()
    assert not stale, f"run `python docs/generate_tables.py`; stale: {stale}"


README_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/ckpt inspect examples/sample.pt",
    "python3 -m venv .venv && .venv/bin/pip install tox && .venv/bin/tox",
)


def test_readme_has_the_two_fresh_machine_commands() -> None:
    lines = [line.strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()]
    for command in README_COMMANDS:
        assert command in lines, f"README.md lost the command line: {command}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_doc_links_resolve() -> None:
    """Relative links between the Markdown files point at files (and headings) that exist."""
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target:
                continue
            path = (page.parent / target) if target else page
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path.read_text(encoding="utf-8")), (
                    f"{page.relative_to(ROOT)} links to #{anchor} in {path.name}, which has no such heading"
                )


# -- the ckpt.scan/1 schema -------------------------------------------------------------------------

SCAN_SCHEMA_PATH = DOCS / "schemas" / "scan-v1.json"
SCAN_EXAMPLE_PATH = DOCS / "schemas" / "scan-v1.example.json"


def scan_documents(tmp_path: Path) -> list[Any]:
    """ckpt.scan/1 documents that between them emit every field the schema declares: clean,
    unknown, dangerous and error files, every finding kind, every pickle role, notes."""
    import gzip
    import pickle as pickle_module
    import zipfile as zf

    from ckpt.scanner import scan

    d = tmp_path / "scan"
    d.mkdir()
    rich_checkpoint(d / "rich.ckpt", with_version=True)
    payload = b"\x80\x02cposix\nsystem\nq\x00X\x11\x00\x00\x00touch /nonexistent\x85R."
    (d / "stacked.pkl").write_bytes(pickle_module.dumps([1, 2]) + payload)
    inner = pickle_module.dumps({"blob": payload}, protocol=4)
    (d / "nested.pkl").write_bytes(inner)
    (d / "truncated.pkl").write_bytes(payload[:-4])
    (d / "deep.gz").write_bytes(gzip.compress(gzip.compress(gzip.compress(gzip.compress(payload)))))
    (d / "ext.pkl").write_bytes(b"\x80\x02\x82\x01N\x81.")
    (d / "notes.txt").write_text("plain text\n")
    import argparse

    (d / "namespace.pkl").write_bytes(pickle_module.dumps(argparse.Namespace(lr=0.1), protocol=2))
    with zf.ZipFile(d / "hidden.pt", "w") as z:
        z.writestr("m/data.pkl", pickle_module.dumps({"a": 1}, protocol=2))
        z.writestr("m/version", "3\n")
        z.writestr("m/data/7", payload)
        z.writestr("m/code.pkl", pickle_module.dumps([1]) + b"junk")
    (d / "after.pt").write_bytes((d / "hidden.pt").read_bytes() + payload)
    docs = [scan(d, jobs=1).as_json(fail_on=f) for f in ("dangerous", "unknown")]
    docs.append(scan(d / "notes.txt").as_json())
    docs.append(scan(d / "rich.ckpt", allow=["argparse.Namespace"]).as_json())
    return [json.loads(json.dumps(doc, allow_nan=False)) for doc in docs]


def test_scan_documents_validate_and_cover_the_scan_schema(tmp_path: Path) -> None:
    checker = SchemaChecker(json.loads(SCAN_SCHEMA_PATH.read_text(encoding="utf-8")))
    docs = scan_documents(tmp_path)
    for doc in docs:
        errors = checker.validate(doc)
        assert not errors, "\n".join(errors[:20])
    statuses = {f["status"] for doc in docs for f in doc["files"]}
    assert statuses == {"clean", "unknown", "dangerous", "error"}
    missing = checker.declared_properties() - checker.seen
    assert not missing, "scan schema properties no document emitted: " + ", ".join(sorted(missing))


def test_scan_schema_lists_every_rule_and_version() -> None:
    from ckpt.scanner import RULES, SCHEMA as SCAN_SCHEMA

    schema = json.loads(SCAN_SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["properties"]["schema"]["const"] == SCAN_SCHEMA == schema["title"]
    assert schema["$defs"]["finding"]["properties"]["rule"]["enum"] == sorted(RULES)
    text = (DOCS / "json-schema.md").read_text(encoding="utf-8")
    for code in RULES:
        assert f"`{code}`" in text, f"docs/json-schema.md does not describe rule {code}"


def test_committed_scan_example_validates() -> None:
    checker = SchemaChecker(json.loads(SCAN_SCHEMA_PATH.read_text(encoding="utf-8")))
    assert checker.validate(json.loads(SCAN_EXAMPLE_PATH.read_text(encoding="utf-8"))) == []
