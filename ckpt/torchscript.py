"""Reader for TorchScript archives (``torch.jit.save``): their tensors, never their code.

A TorchScript archive is a torch zip (same records, same storage persistent ids) with a
``constants.pkl`` record, the module's code under ``code/`` (TorchScript source, ``.debug_pkl``
source maps) and optional ``extra/`` files. ``data.pkl`` pickles the module tree: each module is
``NEWOBJ`` of a class named ``__torch__.<path>.<Class>`` followed by ``BUILD`` with its
attributes (submodules, parameters, buffers, plain values).

torch refuses ``weights_only=True`` on these archives, because loading them means
``torch.jit.load``, which compiles the archive's code and may run it (``__setstate__`` methods
run at load time). ckpt reads them differently and safely:

* ``data.pkl`` runs through the same restricted interpreter and allowlist as every pickle; each
  ``__torch__.*`` class becomes an inert record (:class:`~ckpt.values.InertObject`) of its
  attributes (never imported, never compiled); ``torch.jit._pickle``'s list builders and type
  tags become plain lists and values. Any other global meets the usual policy.
* Tensors come through the usual tensor path (lazy references, bounds-checked views).
* The code files are read as text only to learn which attributes each class declares as
  parameters and buffers (``__parameters__ = [...]``, ``__buffers__ = [...]``); nothing in them
  is compiled, evaluated or run. ``.debug_pkl`` files and other pickles are listed, never read.

``ckpt.open``/``ckpt.inspect`` give the module tree (dotted paths ``sub.lin.weight``);
``ckpt.load`` gives the flat state dict that ``torch.jit.load(path).state_dict()`` returns: an
``OrderedDict`` holding, for each module in tree order, its parameters (``__parameters__``
order), then its buffers (``__buffers__`` order, non-persistent ones included, as TorchScript
keeps no persistence flag), then its submodules' entries; each entry a new detached tensor
(``requires_grad=False``) sharing its storage (tied weights stay tied); ``None`` parameters left
out; ``_metadata`` giving every module version 1, as torch does.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from .errors import CheckpointError, CorruptCheckpointError, UnsupportedFormatError
from .limits import Limits
from .pickle_vm import Op
from .policy import Finding, Policy
from .rebuild import Builder
from .tensors import TensorRef
from .torch_zip import TorchZipReader
from .values import InertObject
from .zipread import ZipArchive

FORMAT = "torchscript"
MAX_CODE_BYTES = 64 << 20  # code text read to find parameter/buffer declarations, in all

_CLASS = re.compile(r"^class (\w+)\(([\w.]+)\):\s*$")
_DECL = re.compile(r"^  (__parameters__|__buffers__) = \[(.*)\]\s*$")
_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"')


class ClassDecl:
    """What a class's TorchScript source declares (read as text)."""

    __slots__ = ("name", "base", "parameters", "buffers")

    def __init__(self, name: str, base: str) -> None:
        self.name = name
        self.base = base
        self.parameters: list[str] | None = None
        self.buffers: list[str] | None = None

    @property
    def is_module(self) -> bool:
        return self.base == "Module" or self.parameters is not None


def parse_code(module: str, text: str) -> dict[str, ClassDecl]:
    """The classes a code file declares, by qualified name (``__torch__.sub.Class``).

    >>> src = 'class M(Module):\\n  __parameters__ = ["w", ]\\n  __buffers__ = []\\n  w : Tensor\\n'
    >>> decl = parse_code("__torch__", src)["__torch__.M"]
    >>> decl.parameters, decl.buffers, decl.is_module
    (['w'], [], True)
    """
    out: dict[str, ClassDecl] = {}
    current: ClassDecl | None = None
    for line in text.splitlines():
        m = _CLASS.match(line)
        if m:
            current = ClassDecl(f"{module}.{m.group(1)}", m.group(2))
            out[current.name] = current
            continue
        if current is None:
            continue
        d = _DECL.match(line)
        if d:
            names = [n.encode("latin-1", "backslashreplace").decode("unicode_escape") for n in _NAME.findall(d.group(2))]
            if d.group(1) == "__parameters__":
                current.parameters = names
            else:
                current.buffers = names
    return out


class TorchScriptReader(TorchZipReader):
    """A TorchScript archive: ``data.pkl``'s module tree, its tensors, and a list of its code."""

    def __init__(self, archive: ZipArchive, *, path: str, limits: Limits) -> None:
        prefix = archive.entry_at(0).name.split("/", 1)[0] + "/" if len(archive) else ""
        if prefix and f"{prefix}model.json" in archive and f"{prefix}data.pkl" not in archive:
            raise UnsupportedFormatError(
                "this is a TorchScript archive in the pre-1.3 layout (model.json); ckpt reads TorchScript "
                "archives from torch 1.3 on. Nothing in it was run",
                path=path,
            )
        super().__init__(archive, path=path, limits=limits)
        self.code_files: list[str] = []
        self.debug_files = 0
        self.extra_files: list[str] = []
        self.other_records: list[str] = []
        for entry in archive.entries:
            rel = entry.name[len(self.prefix):]
            if rel.startswith("code/"):
                if rel.endswith(".debug_pkl"):
                    self.debug_files += 1
                else:
                    self.code_files.append(rel)
            elif rel.startswith("extra/"):
                self.extra_files.append(rel)
            elif rel in ("bytecode.pkl", "traced_inputs.pkl", "mobile_info.json", "model.json"):
                self.other_records.append(rel)
        self._classes: dict[str, ClassDecl] | None = None
        self.modules: list[dict[str, Any]] | None = None
        self.constants: dict[str, int] | None = None
        self._notes: list[str] = []

    # -- globals ---------------------------------------------------------------------------

    def _resolve(self, module: str, name: str, offset: int, default: Any) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        op = _JIT_PICKLE.get(f"{module}.{name}")
        if op is not None:
            return op
        return default(module, name, offset)

    # -- loading ---------------------------------------------------------------------------

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """The module tree (lazy flavour) or the flat state dict (torch and numpy flavours)."""
        entry = self.pickle_entry
        assert entry is not None
        root, self.pickle_protocol = self.run_pickle(entry, builder, policy, findings, resolve=self._resolve)
        if builder.flavor == "lazy":
            if self._is_module(root):
                self.modules = self._module_rows(root)
            else:  # shown as it is (with its findings); ckpt.load refuses it (no state dict)
                self.modules = []
                self._notes.append("data.pkl's root is not a TorchScript module: the archive holds no module tree")
            self._read_constants(builder, policy, findings)
            return root
        return self.state_dict(root, builder)

    def _read_constants(self, builder: Builder, policy: Policy, findings: list[Finding]) -> None:
        entry = self._entry("constants.pkl")
        if entry is None:
            return
        consts, _ = self.run_pickle(entry, builder, policy, findings, folder="constants/", resolve=self._resolve)
        items = consts if type(consts) in (tuple, list) else (consts,)
        tensors = [c for c in items if type(c) is TensorRef]
        self.constants = {"values": len(items), "tensors": len(tensors), "nbytes": sum(t.nbytes for t in tensors)}

    def classes(self) -> dict[str, ClassDecl]:
        """Parameter and buffer declarations of every class in ``code/`` (read as text, never run)."""
        if self._classes is not None:
            return self._classes
        classes: dict[str, ClassDecl] = {}
        budget = MAX_CODE_BYTES
        for rel in self.code_files:
            if not rel.endswith(".py"):
                continue
            entry = self._entry(rel)
            if entry is None or entry.size > budget:
                self._notes.append(f"code not read past {MAX_CODE_BYTES >> 20} MiB; declarations may be missing")
                break
            budget -= entry.size
            text = self.archive.read(entry).decode("utf-8", "replace")
            module = rel[len("code/"):-len(".py")].replace("/", ".")
            classes.update(parse_code(module, text))
        self._classes = classes
        return classes

    def _members(self, obj: InertObject) -> tuple[list[str], list[str], bool]:
        """``(parameters, buffers, declared)`` of a module record."""
        decl = self.classes().get(obj.global_name)
        state = obj.state if type(obj.state) is dict else {}
        if decl is not None and (decl.parameters is not None or decl.buffers is not None):
            return list(decl.parameters or []), list(decl.buffers or []), True
        # No declaration (code missing or unreadable): tensors that require gradients are taken
        # for parameters and the other tensor attributes for buffers.
        params = [k for k, v in state.items() if type(v) is TensorRef and v.requires_grad]
        buffers = [k for k, v in state.items() if type(v) is TensorRef and not v.requires_grad]
        return params, buffers, False

    def _is_module(self, value: Any) -> bool:
        if type(value) is not InertObject or not value.global_name.startswith("__torch__."):
            return False
        decl = self.classes().get(value.global_name)
        if decl is not None:
            return decl.is_module
        return type(value.state) is dict and "training" in value.state

    def _walk_modules(self, root: Any) -> list[tuple[str, InertObject]]:
        """Every module record with its dotted path, in tree order (parents first)."""
        if not self._is_module(root):
            raise CorruptCheckpointError(
                "data.pkl does not hold a TorchScript module at its root", path=self.path,
                record=self.prefix + "data.pkl",
            )
        out: list[tuple[str, InertObject]] = []
        todo: list[tuple[str, InertObject, int]] = [("", root, 0)]
        while todo:
            path, obj, depth = todo.pop()
            if depth > self.limits.max_walk_depth:
                raise CorruptCheckpointError(f"the module tree nests deeper than {self.limits.max_walk_depth} levels",
                                             path=self.path)
            out.append((path, obj))
            state = obj.state if type(obj.state) is dict else {}
            children = [(k, v) for k, v in state.items() if type(k) is str and self._is_module(v)]
            for k, v in reversed(children):
                todo.append((f"{path}.{k}" if path else k, v, depth + 1))
            if len(out) > 1_000_000:
                raise CorruptCheckpointError("the module tree has more than a million modules", path=self.path)
        return out

    def _module_rows(self, root: Any) -> list[dict[str, Any]]:
        rows = []
        for path, obj in self._walk_modules(root):
            params, buffers, declared = self._members(obj)
            state = obj.state if type(obj.state) is dict else {}
            for name in params:
                value = state.get(name)
                if type(value) is TensorRef:
                    value.is_parameter = True
            rows.append({"path": path, "type": obj.global_name, "parameters": params, "buffers": buffers,
                         "declared": declared})
            if not declared:
                note = f"no parameter/buffer declaration for {obj.global_name}; told apart by requires_grad"
                if note not in self._notes:
                    self._notes.append(note)
        return rows

    def state_dict(self, root: Any, builder: Builder) -> OrderedDict[str, Any]:
        """What ``torch.jit.load(path).state_dict()`` returns, from the rebuilt module tree."""
        out: OrderedDict[str, Any] = OrderedDict()
        metadata: OrderedDict[str, Any] = OrderedDict()
        for path, obj in self._walk_modules(root):
            metadata[path] = {"version": 1}  # nn.Module._version: not stored, the same for every module
            params, buffers, _ = self._members_of_built(obj, builder)
            state = obj.state if type(obj.state) is dict else {}
            for name in (*params, *buffers):
                value = state.get(name)
                if value is None:
                    continue  # e.g. Linear(bias=False): bias is declared, and None
                if not _is_tensor(builder, value):
                    raise CorruptCheckpointError(
                        f"{path + '.' if path else ''}{name} is declared a parameter or buffer but holds a "
                        f"{type(value).__name__}", path=self.path, record=self.prefix + "data.pkl",
                    )
                out[f"{path}.{name}" if path else name] = _detached(value)
        out._metadata = metadata  # type: ignore[attr-defined]
        return out

    def _members_of_built(self, obj: InertObject, builder: Builder) -> tuple[list[str], list[str], bool]:
        decl = self.classes().get(obj.global_name)
        if decl is not None and (decl.parameters is not None or decl.buffers is not None):
            return list(decl.parameters or []), list(decl.buffers or []), True
        state = obj.state if type(obj.state) is dict else {}
        params, buffers = [], []
        for k, v in state.items():
            if _is_tensor(builder, v):
                (params if builder.tensor_ref(v).requires_grad else buffers).append(k)
        return params, buffers, False

    # -- facts -----------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        facts = super().facts()
        facts["format"] = FORMAT
        notes = facts.pop("notes")
        notes.append(
            f"TorchScript code: {len(self.code_files)} file(s) under code/; torch.jit.load compiles and "
            "may run it, ckpt never does (it reads only the declarations of parameters and buffers)"
        )
        notes.extend(self._notes)
        facts["modules"] = self.modules
        facts["code_files"] = list(self.code_files)
        facts["debug_files"] = self.debug_files
        facts["extra_files"] = list(self.extra_files)
        facts["other_records"] = list(self.other_records)
        facts["constants"] = self.constants
        facts["notes"] = notes
        return facts


def _is_tensor(builder: Builder, value: Any) -> bool:
    if type(value) is TensorRef:
        return True
    try:
        builder.tensor_ref(value)
    except CheckpointError:
        return False
    return True


def _detached(value: Any) -> Any:
    """What ``state_dict()`` puts in: a new detached tensor per entry, sharing the storage (torch
    flavour), a new view of the same memory (numpy flavour), the reference itself (lazy)."""
    if type(value) is TensorRef:
        return value
    detach = getattr(value, "detach", None)
    if detach is not None:
        return detach()
    view = getattr(value, "view", None)
    return view() if view is not None else value


def _script_class(qualname: str) -> Op:
    """A TorchScript class or module: calls and instantiations become inert records."""

    def call(*args: Any) -> InertObject:
        return InertObject(qualname, args=args, how="reduce")

    def new(*args: Any, **kwargs: Any) -> InertObject:
        return InertObject(qualname, args=args, kwargs=kwargs or None, how="newobj")

    return Op(qualname, call, newobj=new)


def _list_builder(name: str) -> Op:
    def build(data: Any) -> Any:
        if type(data) is not list:
            raise CorruptCheckpointError(f"{name} takes a list, not a {type(data).__name__}")
        return data

    return Op(name, build)


def _restore_type_tag(value: Any, type_str: Any = None) -> Any:
    if type_str is not None and type(type_str) is not str:
        raise CorruptCheckpointError("restore_type_tag takes a value and a type string")
    return value


def _tensor_from_id(data: Any) -> Any:
    return data if type(data) is int else None


_JIT_PICKLE: dict[str, Op] = {
    **{f"torch.jit._pickle.{n}": _list_builder(f"torch.jit._pickle.{n}")
       for n in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist")},
    "torch.jit._pickle.restore_type_tag": Op("torch.jit._pickle.restore_type_tag", _restore_type_tag),
    "torch.jit._pickle.build_tensor_from_id": Op("torch.jit._pickle.build_tensor_from_id", _tensor_from_id),
}
"""The ``torch.jit._pickle`` helpers TorchScript pickles call, as ckpt-owned functions (they
return their argument, as torch's own do)."""
