"""Regenerate the tables in docs/ that are derived from the code, so they cannot drift from it.

    python docs/generate_tables.py           # rewrite the generated blocks in place
    python docs/generate_tables.py --check   # exit 1 (and say which) if a block is stale

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in a
Markdown file; everything between the markers is replaced. tests/test_docs.py runs the check.

Sources: the allowlist is ``ckpt.rebuild.Builder().table``; the profiles are ``ckpt.profiles.PROFILES``; the dtype table is ``ckpt.dtypes.DTYPES``
(the numpy columns come from calling ``ckpt.numpy_out.view_array`` on each dtype); the limits are the
fields of ``ckpt.limits.Limits`` with their docstrings; the verdict lists are
``ckpt.verdicts.DANGEROUS_MODULES`` / ``DANGEROUS_NAMES`` / ``DANGEROUS_ATTRIBUTES`` / ``NOT_DANGEROUS``;
the scanner's rules are ``ckpt.scanner.RULES``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent

# What each callable on the allowlist becomes. A new entry in Builder().table without a line here
# makes the check fail, so the security model always describes every name ckpt accepts.
OP_DESCRIPTIONS: dict[str, str] = {
    "collections.OrderedDict": "an `OrderedDict` from key/value pairs; BUILD may then set plain attributes such as `_metadata` (never names starting with `__`)",
    "collections.Counter": "a `Counter` from key/value pairs",
    "builtins.set": "a `set` from a list, tuple or set whose members are hashable plain values",
    "builtins.complex": "a `complex` from two numbers",
    "builtins.bytearray": "a `bytearray` from bytes, a list of byte values, or text with a latin-1/utf-8/ascii encoding",
    "_codecs.encode": "`bytes`, accepted only in the form pickle itself writes: `(text, 'latin1')`",
    "torch.Size": "a shape (a tuple of ints): `torch.Size` when loading with torch, `ckpt.values.Size` otherwise",
    "torch.device": "a device: `torch.device` when loading with torch, `ckpt.values.Device` otherwise",
    "torch.serialization._get_layout": "a layout constant (`torch.strided`, `torch.sparse_coo`, ...) from a fixed list",
    "torch._utils._rebuild_tensor": "a tensor view of a storage (the oldest form: storage, offset, size, stride)",
    "torch._utils._rebuild_tensor_v2": "a tensor view of a storage (offset, size, stride, requires_grad; hooks ignored; only the `conj`/`neg` metadata bits)",
    "torch._utils._rebuild_tensor_v3": "a tensor view of an untyped storage with an explicit dtype (float8, uint16/32/64, complex32, bits, ...)",
    "torch._utils._rebuild_parameter": "an `nn.Parameter` around a tensor",
    "torch._utils._rebuild_parameter_with_state": "an `nn.Parameter` with Python attributes (identifier names only, never `__...`)",
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor (dtype, shape, stride; no data)",
    "torch._tensor._rebuild_from_type_v2": "a tensor re-typed as `torch.Tensor` or `Parameter`, with plain attributes; any other tensor class is kept as a name (`subclass`), never imported",
    "torch.nn.parameter.Parameter": "an `nn.Parameter` through NEWOBJ only (`Parameter.__new__(data, requires_grad)`); calling it is refused",
    "torch.Tensor": "accepted only as the type argument of `_rebuild_from_type_v2`; calling it is refused",
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor (COO, CSR, CSC, BSR, BSC) from its index and value tensors; shapes checked against the size, and index values (bounds, order) checked where they are read, which torch skips by default",
    "torch._utils._rebuild_qtensor": "a quantized tensor (qint8, quint8, qint32; per-tensor or per-channel affine) with torch's checks of the per-channel axis and lengths; sub-byte quantized dtypes are refused",
    "torch._utils._rebuild_nested_tensor": "a nested (strided) tensor from its buffer and its sizes/strides/offsets tensors; every component checked to lie inside the buffer, which torch does not check",
}


def _op_is_refusal(op: object) -> bool:
    fn = getattr(op, "fn", None)
    return getattr(fn, "__name__", "") == "refuse"


def allowlist_block() -> str:
    from ckpt.dtypes import DType
    from ckpt.pickle_vm import Op
    from ckpt.rebuild import UNSUPPORTED_REBUILDS, Builder
    from ckpt.tensors import StorageType
    from ckpt.values import TorchConstant

    table = Builder().table
    built: list[str] = []
    refused: list[tuple[str, str]] = []
    dtypes: list[str] = []
    storages: list[str] = []
    constants: list[str] = []
    unknown: list[str] = []
    for name, value in table.items():
        if type(value) is Op:
            if name in OP_DESCRIPTIONS:
                built.append(name)
            elif _op_is_refusal(value):
                feature = UNSUPPORTED_REBUILDS.get(name, "legacy tensor-class constructors")
                refused.append((name, feature))
            else:
                unknown.append(name)
        elif type(value) is DType:
            dtypes.append(name)
        elif type(value) is StorageType:
            storages.append(name)
        elif type(value) is TorchConstant:
            constants.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise SystemExit(
            "docs/generate_tables.py: describe these allowlisted globals in OP_DESCRIPTIONS: "
            + ", ".join(sorted(unknown))
        )
    out = [
        f"{len(table)} names in all. Each is matched exactly as `module.name` (after Python 2 names such as",
        "`__builtin__.set` are mapped to their Python 3 spelling); nothing is matched by prefix and no dotted",
        "name is walked.",
        "",
        "**Constructors ckpt runs (its own code, with checked arguments):**",
        "",
        "| Global | Becomes |",
        "|---|---|",
    ]
    out += [f"| `{n}` | {OP_DESCRIPTIONS[n]} |" for n in built]
    out += [
        "",
        f"**dtypes ({len(dtypes)}):** values, not callables: a `torch.dtype` when loading with torch, a",
        "`ckpt.dtypes.DType` row otherwise.",
        "",
        ", ".join(f"`{n}`" for n in dtypes),
        "",
        f"**Storage classes ({len(storages)}):** markers that give a persistent id its dtype; calling them is refused.",
        "",
        ", ".join(f"`{n}`" for n in storages),
        "",
        f"**Constants ({len(constants)}):** quantization schemes, values only.",
        "",
        ", ".join(f"`{n}`" for n in constants),
        "",
        f"**Recognised but refused ({len(refused)}):** torch's own loader rebuilds these; ckpt does not yet. Under",
        "the strict policy they raise `UnsupportedFeatureError`; under the inspect policy they become inert",
        "records, so the rest of the file can still be shown. They never raise `UnsafeGlobalError` and are",
        "never findings.",
        "",
        "| Global | Feature |",
        "|---|---|",
    ]
    out += [f"| `{n}` | {feature} |" for n, feature in refused]
    return "\n".join(out)


def dtypes_block() -> str:
    import numpy as np

    from ckpt.dtypes import DTYPES
    from ckpt.errors import CheckpointError
    from ckpt.numpy_out import view_array
    from ckpt.tensors import StorageRef, TensorRef

    def numpy_result(dt: object, mode: str) -> str:
        if not dt.storable:  # type: ignore[attr-defined]
            return "-"
        storage = StorageRef("0", dt, "cpu", numel=1)  # type: ignore[arg-type]
        ref = TensorRef(storage, dt, shape=(1,), stride=(1,), offset=0)  # type: ignore[arg-type]
        base = np.zeros(dt.itemsize, dtype=np.uint8)  # type: ignore[attr-defined]
        try:
            arr = view_array(ref, base, byteorder="little", unsupported_dtype=mode)
        except CheckpointError:
            return "error"
        return arr.dtype.name

    out = [
        "| dtype | bytes | kind | pickled storage class | tensor rebuild | safetensors | numpy (`upcast`, the default) | numpy (`raw`) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dt in DTYPES.values():
        if not dt.storable:
            continue
        if dt.storage_class:
            storage, rebuild = f"`torch.{dt.storage_class}`", "`_rebuild_tensor_v2`"
        else:
            storage, rebuild = "`torch.storage.UntypedStorage`", "`_rebuild_tensor_v3`"
        up = numpy_result(dt, "upcast")
        raw = numpy_result(dt, "raw")
        exact = dt.numpy is not None
        if exact:
            up_cell, raw_cell = f"`{up}`", f"`{raw}`"
        else:
            raw_cell = f"`{raw}` (stored bits)" if raw != "error" else "error"
            if up == "error":
                up_cell = "error"
            elif up == raw:
                up_cell = f"`{up}` (stored bits: no conversion exists)"
            else:
                up_cell = f"`{up}` (exact conversion)"
        out.append(
            f"| `{dt.name}` | {dt.itemsize} | {dt.kind} | {storage} | {rebuild} | "
            f"{'`' + dt.safetensors + '`' if dt.safetensors else '-'} | {up_cell} | {raw_cell} |"
        )
    names_only = [dt.name for dt in DTYPES.values() if not dt.storable]
    out += [
        "",
        "Names only (valid as dtype values in a pickle, but no tensor can hold them; a tensor that claims one",
        "is refused as corrupt): " + ", ".join(f"`{n}`" for n in names_only) + ".",
    ]
    return "\n".join(out)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) from a class's source."""
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            text = " ".join(nxt.value.value.split())
            docs[stmt.target.id] = re.sub(r"``([^`]+)``", r"`\1`", text)
    return docs


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,}"


def limits_block() -> str:
    from ckpt.limits import Limits

    docs = _field_docs(Limits)
    out = ["| `Limits` field | Default | What it bounds |", "|---|---|---|"]
    for name in Limits._fields:
        default = Limits._field_defaults[name]
        shown = f"{default:,}"
        if "bytes" in name:
            shown += f" ({_human(default)})"
        out.append(f"| `{name}` | {shown} | {docs.get(name, '')} |")
    return "\n".join(out)


def verdicts_block() -> str:
    from ckpt.verdicts import DANGEROUS_ATTRIBUTES, DANGEROUS_MODULES, DANGEROUS_NAMES, NOT_DANGEROUS

    def table(title: str, head: str, rows: dict[str, str]) -> list[str]:
        return [title, "", f"| {head} | Why |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in rows.items()), ""]

    out: list[str] = []
    out += table(f"**Modules ({len(DANGEROUS_MODULES)}): every name inside them or their submodules is dangerous.**",
                 "Module", DANGEROUS_MODULES)
    out += table(f"**Single names ({len(DANGEROUS_NAMES)}), outside those modules, and everything inside them:**",
                 "Name", DANGEROUS_NAMES)
    out += table(f"**Attributes ({len(DANGEROUS_ATTRIBUTES)}): a name whose last part is one of these is dangerous, "
                 "whatever it is reached through** (`mypkg.Model.from_pretrained`, `pathlib.PosixPath.write_text`):",
                 "Attribute", DANGEROUS_ATTRIBUTES)
    out += table(f"**Only unknown ({len(NOT_DANGEROUS)}): names inside the modules above that build plain values** "
                 "(so do `builtins` exception classes such as `builtins.ValueError`):", "Name", NOT_DANGEROUS)
    return "\n".join(out).rstrip("\n")


def scan_rules_block() -> str:
    from ckpt.scanner import RULES

    out = ["| Rule | Verdict | What it means |", "|---|---|---|"]
    for code, rule in RULES.items():
        out.append(f"| `{code}` | {rule.verdict} | **{rule.title}.** {rule.help} |")
    return "\n".join(out)


def profiles_block() -> str:
    from ckpt.profiles import DEFAULT_GROUPS, GROUPS, PROFILES

    out = [
        f"{len(PROFILES)} names in {len(GROUPS)} groups, matched exactly as `module.name` like the allowlist.",
        "",
        "| Group | `ckpt.load` reads it | Global | Becomes |",
        "|---|---|---|---|",
    ]
    for group, about in GROUPS.items():
        default = "by default" if group in DEFAULT_GROUPS else "when asked"
        rows: dict[str, list[str]] = {}
        values: list[str] = []
        for p in PROFILES:
            if p.group != group:
                continue
            if p.kind == "value" and p.name != "numpy.ndarray" and p.name != "builtins.Ellipsis":
                values.append(p.name)
            else:
                rows.setdefault(p.becomes, []).append(p.name)
        first = True
        for becomes, names in rows.items():
            cell = ", ".join(f"`{n}`" for n in names)
            out.append(f"| {'**' + group + '**' if first else ''} | {default if first else ''} | {cell} | {becomes} |")
            first = False
        if values:
            cell = ", ".join(f"`{n}`" for n in values)
            out.append(f"| {'**' + group + '**' if first else ''} | {default if first else ''} | {cell} | "
                       "the type itself, as a value (a pickle that calls it is refused) |")
    out += ["", "Groups: " + "; ".join(f"`{g}`: {about}" for g, about in GROUPS.items()) + "."]
    return "\n".join(out)


BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    ("security-model.md", "allowlist"): allowlist_block,
    ("security-model.md", "profiles"): profiles_block,
    ("security-model.md", "limits"): limits_block,
    ("security-model.md", "verdicts"): verdicts_block,
    ("json-schema.md", "scan-rules"): scan_rules_block,
    ("formats.md", "dtypes"): dtypes_block,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated:{re.escape(name)} -->\n)(.*?)(<!-- /generated:{re.escape(name)} -->)", re.S
    )


def render(text: str, name: str, body: str) -> str:
    pattern = _pattern(name)
    if not pattern.search(text):
        raise ValueError(f"no generated:{name} block")
    note = "<!-- Generated by docs/generate_tables.py from the code; edit the code or the script, not this block. -->\n"
    return pattern.sub(lambda m: m.group(1) + note + body.rstrip("\n") + "\n" + m.group(3), text, count=1)


def stale_blocks() -> list[str]:
    """``file:block`` for every generated block whose text differs from what the code gives now."""
    stale = []
    for (fname, name), make in BLOCKS.items():
        path = DOCS / fname
        text = path.read_text(encoding="utf-8")
        if render(text, name, make()) != text:
            stale.append(f"{fname}:{name}")
    return stale


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_blocks()
        for s in stale:
            print(f"stale generated block: docs/{s} (run python docs/generate_tables.py)", file=sys.stderr)
        return 1 if stale else 0
    for (fname, name), make in BLOCKS.items():
        path = DOCS / fname
        text = path.read_text(encoding="utf-8")
        new = render(text, name, make())
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated docs/{fname}:{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
