"""``ckpt.relocate``: change the devices a checkpoint's storages are stored on, without decoding
a tensor.

Every storage of a torch checkpoint carries a location tag (``cpu``, ``cuda:0``, ...) that
``torch.load`` restores it to; a file saved on a GPU machine fails to load on a CPU-only one
unless every load passes ``map_location``. ``relocate(src, dst, map_location)`` writes a copy
whose tags are mapped once and for all, so a plain ``torch.load(dst)`` works:

* the pickle is rewritten: ckpt opens the file lazily (nothing executed, no tensor read) and
  pickles the same object again with the new tags, as ``torch.save(torch.load(src,
  map_location=...))`` would; the result holds that file's records, byte for byte (only the
  padding before each storage may be longer, so that the storage keeps its offset within a page);
* if the file holds something ckpt does not rebuild (a global outside the allowlist, a quantized
  or sparse tensor), the pickle's opcodes are patched instead: only the location strings of the
  storage ids change, and everything else is kept as it is (the file loads as the original did);
* every storage record is copied as raw bytes (in the kernel where it can: ``copy_file_range``),
  with its CRC-32.

``map_location`` takes what torch's does where that makes sense for a file: a device string or
``torch.device`` (every storage goes there), or a dict ``{old tag: new tag}`` (other tags stay).
Devices must be ones torch can restore storages to: ``cpu``, ``mps``, ``cuda``, ``xpu``, ``hpu``
or ``mtia``, the last four with an optional ``:index``.

>>> plan = ckpt.relocate("gpu.pt", "cpu.pt", "cpu")                     # doctest: +SKIP
>>> plan.changed, plan.moves[0].old, plan.moves[0].new                  # doctest: +SKIP
(12, 'cuda:0', 'cpu')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import Checkpoint, PathLike, open as open_checkpoint
from .errors import CheckpointError, UnsafeGlobalError, UnsavableObjectError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .saving import Progress, _Saver, save_to_path

SCHEMA = "ckpt.relocate/1"

DEVICE_TYPES = ("cpu", "mps", "cuda", "xpu", "hpu", "mtia")
_INDEXED = ("cuda", "xpu", "hpu", "mtia")
_DEVICE = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)(?::(?P<index>[0-9]+))?$")


def check_device(text: str, *, what: str = "device") -> str:
    """``text`` if it names a device torch restores storages to, else a clear error.

    >>> check_device("cuda:1"), check_device("cpu")
    ('cuda:1', 'cpu')
    """
    if not isinstance(text, str):
        raise CheckpointError(f"a {what} must be a string such as 'cpu' or 'cuda:0', not a {type(text).__name__}")
    m = _DEVICE.match(text)
    kind = m.group("type") if m else None
    if m is None or kind not in DEVICE_TYPES or (m.group("index") is not None and kind not in _INDEXED):
        if kind == "meta":
            hint = "meta tensors hold no data; load with ckpt.load(..., map_location='meta') instead"
        else:
            hint = "expected cpu, mps, or cuda/xpu/hpu/mtia with an optional :index, e.g. cuda:0"
        raise CheckpointError(f"unknown {what} {text!r}", hint=hint)
    return text


def _device_text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    t = type(value)
    if t.__module__ == "torch" and t.__name__ == "device":
        value = str(value)
    return check_device(value, what=what)


@dataclass(frozen=True)
class LocationMap:
    """Where each stored location tag goes: ``to`` for every tag, or ``mapping`` for the tags it
    names (``to`` for the others, if given)."""

    mapping: Mapping[str, str] = field(default_factory=dict)
    to: str | None = None

    def __call__(self, tag: str) -> str:
        new = self.mapping.get(tag)
        if new is not None:
            return new
        return self.to if self.to is not None else tag

    def as_json(self) -> dict[str, str]:
        out = dict(self.mapping)
        if self.to is not None:
            out["*"] = self.to
        return out


def location_map(map_location: Any = None, *, to: Any = None) -> LocationMap:
    """A :class:`LocationMap` from what ``torch.load``'s ``map_location`` takes (a device string or
    ``torch.device``, or a dict of tags), plus an optional ``to`` for every tag the dict leaves out.

    >>> m = location_map({"cuda:1": "cuda:0"}, to="cpu")
    >>> m("cuda:1"), m("cuda:0"), m("cpu")
    ('cuda:0', 'cpu', 'cpu')
    """
    mapping: dict[str, str] = {}
    if isinstance(map_location, Mapping):
        for old, new in map_location.items():
            old_text = old.decode("ascii", "replace") if isinstance(old, bytes) else old
            if not isinstance(old_text, str) or not old_text:
                raise CheckpointError(f"a map_location key must be a location tag string, not {old!r}")
            mapping[old_text] = _device_text(new, "target device")
    elif map_location is not None:
        if callable(map_location) and not isinstance(map_location, str):
            raise CheckpointError(
                "relocate takes a device (str or torch.device) or a dict of tags as map_location; a "
                "callable needs the storages themselves, which relocate never loads"
            )
        if to is not None:
            raise CheckpointError("give either a device as map_location or `to`, not both")
        to = map_location
    target = _device_text(to, "target device") if to is not None else None
    if not mapping and target is None:
        raise CheckpointError("nothing to relocate to: give a device, or a dict {old tag: new tag}")
    return LocationMap(mapping, target)


@dataclass(frozen=True)
class StorageMove:
    """One storage record: its key, dtype and size, and its tag before and after."""

    key: str
    dtype: str
    nbytes: int
    old: str
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "dtype": self.dtype, "bytes": self.nbytes, "from": self.old, "to": self.new}


@dataclass
class Relocation:
    """What :func:`relocate` did (or, with ``dry_run``, would do)."""

    source: str
    destination: str
    map: LocationMap
    method: str
    """``rewrite`` (the pickle was pickled again, as torch.save would) or ``patch`` (only the
    location strings of the storage ids were replaced)."""
    moves: list[StorageMove]
    dry_run: bool
    written_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """How many storages get a new tag."""
        return sum(m.changed for m in self.moves)

    @property
    def unmatched(self) -> list[str]:
        """Tags of the map that no storage carries (torch ignores them too)."""
        present = {m.old for m in self.moves}
        return [tag for tag in self.map.mapping if tag not in present]

    def by_move(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``{(old, new): (storages, bytes)}`` in first-seen order."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for m in self.moves:
            n, b = out.get((m.old, m.new), (0, 0))
            out[(m.old, m.new)] = (n + 1, b + m.nbytes)
        return out

    def as_json(self) -> dict[str, Any]:
        """The ``ckpt.relocate/1`` document (``ckpt relocate --json``; docs/json-schema.md)."""
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        for m in self.moves:
            before[m.old] = before.get(m.old, 0) + 1
            after[m.new] = after.get(m.new, 0) + 1
        return {
            "schema": SCHEMA,
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "method": self.method,
            "map": self.map.as_json(),
            "unmatched": self.unmatched,
            "storages": [m.as_json() for m in self.moves],
            "totals": {
                "storages": len(self.moves),
                "changed": self.changed,
                "bytes": sum(m.nbytes for m in self.moves),
                "changed_bytes": sum(m.nbytes for m in self.moves if m.changed),
                "before": before,
                "after": after,
            },
            "written_bytes": self.written_bytes,
            "notes": list(self.notes),
        }


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def relocate(
    src: PathLike,
    dst: PathLike,
    map_location: Any = None,
    *,
    to: Any = None,
    dry_run: bool = False,
    fsync: bool = True,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Relocation:
    """Write ``dst``: ``src`` with its storages' location tags mapped by ``map_location``.

    See the module docs for how. ``dry_run=True`` reads ``src`` and returns the plan without
    writing anything. ``dst`` is written atomically (``fsync`` as in :func:`ckpt.save`); SRC and
    DST must be different files. Returns a :class:`Relocation` (``as_json()`` for the
    ``ckpt.relocate/1`` document).
    """
    src_path = os.fspath(src)
    dst_path = os.fspath(dst)
    locmap = location_map(map_location, to=to)
    if _same_file(src_path, dst_path):
        raise CheckpointError(
            "the destination is the source file; write the relocated copy to another path",
            path=dst_path,
        )
    try:
        ck = open_checkpoint(src_path, limits=limits)
    except (UnsafeGlobalError, UnsupportedFeatureError) as e:
        from .relocation_patch import relocate_by_patching

        return relocate_by_patching(src_path, dst_path, locmap, dry_run=dry_run, fsync=fsync,
                                    progress=progress, limits=limits, reason=_why(e))
    with ck:
        return _rewrite(ck, src_path, dst_path, locmap, dry_run=dry_run, fsync=fsync, progress=progress, limits=limits)


def _rewrite(
    ck: Checkpoint, src: str, dst: str, locmap: LocationMap, *, dry_run: bool, fsync: bool,
    progress: Progress | None, limits: Limits,
) -> Relocation:
    moves = [
        StorageMove(key, ref.dtype.name, ref.nbytes, ref.location, locmap(ref.location))
        for key, ref in ck.storages.items()
    ]
    result = Relocation(src, dst, locmap, "rewrite", moves, dry_run)
    # The records keep the byte order they have: the copy is what torch.save writes for the
    # relocated object on the machine that wrote the file, and no tensor byte changes.
    saver = _Saver(location=lambda ref: locmap(ref.location), byteorder=ck.reader.byteorder)
    try:
        pickle_bytes = saver.dumps(ck.root)
    except UnsavableObjectError as e:
        from .relocation_patch import relocate_by_patching

        return relocate_by_patching(src, dst, locmap, dry_run=dry_run, fsync=fsync, progress=progress,
                                    limits=limits, reason=_why(e))
    if dry_run:
        return result
    result.written_bytes = save_to_path(saver, pickle_bytes, dst, fsync=fsync, progress=progress,
                                        keep_page_phase=True)
    return result


def _why(e: CheckpointError) -> str:
    """Why a file is patched rather than rewritten, in a few words."""
    if isinstance(e, UnsafeGlobalError):
        return f"it names {e.global_name}, which is not on ckpt's allowlist"
    if isinstance(e, UnsavableObjectError):
        return e.detail
    return e.message
