"""Reader for the legacy (non-zip) format ``torch.save`` wrote before torch 1.6.

Still written by ``torch.save(obj, f, _use_new_zipfile_serialization=False)`` and still common in
published repositories. The file is a stream:

1. a pickle of the magic number ``0x1950A86A20F9469CFC6C``;
2. a pickle of the protocol version ``1001``;
3. a pickle of ``sys_info`` (``{'protocol_version', 'little_endian', 'type_sizes'}``);
4. the pickle of the object, whose storages are persistent ids
   ``('storage', <storage type>, key, location, numel, view_metadata)`` (keys are decimal memory
   addresses; ``view_metadata`` is ``None`` since torch 0.4) and, for whole ``nn.Module`` objects,
   ``('module', <class>, source file, source)``;
5. a pickle of the storage keys, sorted as strings;
6. for each key in that order: the storage's element count (int64, little-endian) and its bytes.

Every pickle runs through ckpt's restricted interpreter (the first three may reference no global
at all): this is the path where torch's own ``weights_only`` loader had a remote-code-execution
hole (CVE-2025-32434). Pickle lengths are found by walking their opcodes
(:func:`~ckpt.pickle_span.pickle_end`); the storages are then located by reading each one's
8-byte count and seeking over its bytes, so opening a 1 GB file reads a few kilobytes.

>>> import io, torch                                                      # doctest: +SKIP
>>> torch.save({"w": torch.ones(2)}, "old.pt", _use_new_zipfile_serialization=False)  # doctest: +SKIP
>>> ckpt.open("old.pt").facts["format"]                                  # doctest: +SKIP
'torch-legacy'
"""

from __future__ import annotations

from typing import Any

from .errors import CorruptCheckpointError, NotACheckpointError, UnsupportedFormatError
from .limits import Limits
from .pickle_span import pickle_end
from .pickle_vm import Trusted, Unpickler
from .policy import Finding, Policy, Resolver
from .rebuild import Builder
from .reader import Reader, register
from .tensors import StorageRef, StorageType
from .torch_zip import gc_paused
from .values import GlobalRef
from .zipread import RangedFile

FORMAT = "torch-legacy"
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_SMALL_PICKLE = 1 << 20  # the magic, version, sys_info and (per key) key-list pickles are tiny
_SIZE_FIELD = 8


class LegacyReader(Reader):
    """One opened legacy torch file: its preamble, its pickles, and its storages by offset.

    Construction reads and checks the three preamble pickles. :meth:`load` runs the object's
    pickle; the first call (with any builder) also reads the key list and locates every storage,
    which needs the dtypes the object's pickle declares: a builder that reads bytes while the
    pickle runs (torch, numpy) therefore gets a lazy pass first (see :meth:`load`).
    """

    def __init__(self, file: RangedFile, *, path: str, limits: Limits) -> None:
        self.file = file
        self._head = _Head(file)
        self.path = path
        self.limits = limits
        self.byteorder = "little"  # torch writes (and reads) legacy storages little-endian
        self.notes: list[str] = []
        pos = 0
        magic, pos = self._preamble(pos, "magic-number pickle")
        if type(magic) is not int or magic != MAGIC_NUMBER:
            raise NotACheckpointError(
                "the file starts with a pickle, but not of torch's legacy magic number: this is a plain "
                "pickle, not a torch checkpoint (`ckpt scan` can vet it without running it)",
                path=path,
            )
        version, pos = self._preamble(pos, "protocol-version pickle")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise UnsupportedFormatError(
                f"legacy protocol version {version!r}; torch writes and reads only {PROTOCOL_VERSION}",
                path=path,
            )
        sys_info, pos = self._preamble(pos, "sys_info pickle")
        self.little_endian, self.type_sizes = _read_sys_info(sys_info)
        if self.little_endian is False:
            self.notes.append(
                "sys_info says a big-endian machine wrote this file; torch stores legacy storages "
                "little-endian on every machine, and so reads ckpt"
            )
        self.main_start = pos
        self.main_end: int | None = None
        self.data_start: int | None = None
        self.trailing_bytes: int | None = None
        self.pickle_protocol: int | None = None
        self.modules: list[str] = []
        self._storages: dict[str, StorageRef] = {}
        self._offsets: dict[str, int] = {}
        self._views: dict[str, tuple[StorageRef, StorageRef, int]] = {}  # key -> (view, base, offset)
        self._main: bytes | None = None

    # -- the preamble ------------------------------------------------------------------------

    def _preamble(self, pos: int, what: str) -> tuple[Any, int]:
        end = pickle_end(self._head, pos, limit=_SMALL_PICKLE, path=self.path, what=what)
        data = self._head.pread(pos, end - pos)

        def no_globals(module: str, name: str, offset: int) -> Any:
            raise CorruptCheckpointError(
                f"the {what} names the global {module}.{name}; torch's legacy format holds a plain "
                "value there (a file that computes it is an attack on scanners). Nothing was run",
                path=self.path,
            )

        vm = Unpickler(data, resolve=no_globals, persistent_load=None, path=self.path, record=what,
                       limits=self.limits)
        return vm.load(), end

    # -- the object's pickle -------------------------------------------------------------------

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """Run the object's pickle with ``builder``'s constructors.

        Storage bytes can be located only once every storage's dtype is known, that is after the
        object's pickle ran. So the first call runs it with a lazy builder (reading no tensor
        bytes), reads the key list and locates the storages; a torch or numpy builder then gets a
        second pass over the (in-memory) pickle. That first pass uses the inspect policy (unknown
        globals and tensor kinds become inert, trusted constructors are not called): it only
        declares storages, and the real pass, under the caller's policy, decides what is refused.
        """
        if self.data_start is None:
            if builder.flavor == "lazy":
                root = self._run(builder, policy, findings)
                self._locate()
                return root
            # A pass that only declares the storages: whatever the real pass will accept or refuse,
            # this one reads through (unknown globals and tensor kinds become inert; nothing the
            # caller trusts is called), so the real pass is the one that decides.
            self._run(Builder(mode="inspect", limits=self.limits), Policy("inspect"), [])
            self._locate()
        return self._run(builder, policy, findings)

    def _run(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        record = "object pickle"
        if self._main is None:
            self.main_end = pickle_end(self._head, self.main_start,
                                       limit=self.limits.max_pickle_bytes, path=self.path, what=record)
            self._main = self._head.pread(self.main_start, self.main_end - self.main_start)
        resolver = Resolver(policy, builder, path=self.path, record=record, findings=findings)
        finish = builder.finish_storage

        def persistent_load(pid: Any) -> Any:
            if type(pid) is str:
                raise self._corrupt(
                    "a persistent id is text, as a protocol-0 pickle spells it (str() of a tuple holding a "
                    "class): neither torch nor ckpt can read it back; re-save the file with protocol 2"
                )
            if type(pid) is not tuple or not pid:
                raise self._corrupt(
                    "a persistent id must be a tuple ('storage', type, key, location, numel, view), got "
                    f"a {type(pid).__name__}"
                )
            kind = pid[0].decode("ascii", "replace") if type(pid[0]) is bytes else pid[0]
            if kind == "module":
                return self._module(pid)
            if kind != "storage":
                raise self._corrupt(f"unknown persistent id kind {kind!r}")
            return finish(self._storage(pid))

        vm = Unpickler(self._main, resolve=resolver, persistent_load=persistent_load, path=self.path,
                       record=record, limits=self.limits)
        with gc_paused():
            result = vm.load()
        self.pickle_protocol = vm.protocol
        return result

    def _corrupt(self, message: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(message, path=self.path, record="object pickle")

    def _module(self, pid: tuple[Any, ...]) -> Any:
        """``('module', cls, source_file, source)``: torch.save(model) stored a class and its source.

        The class already went through the policy (an unknown global: refused under strict,
        inert under inspect or ``allow``); the source is text in the file and is never run."""
        if len(pid) != 4:
            raise self._corrupt(f"a module persistent id has {len(pid)} parts, not 4")
        cls = pid[1]
        if type(cls) is GlobalRef:
            name = cls.qualname
        elif type(cls) is Trusted:
            name = cls.name
        else:
            raise self._corrupt("a module persistent id does not name a class")
        if name not in self.modules:
            self.modules.append(name)
        return cls

    def _storage(self, pid: tuple[Any, ...]) -> StorageRef:
        if len(pid) != 6:
            raise self._corrupt(
                f"a legacy storage persistent id has {len(pid)} parts; expected 6 "
                "('storage', type, key, location, numel, view_metadata)"
            )
        _, stype, key, location, numel, view = pid
        if type(stype) is not StorageType:
            raise self._corrupt("a persistent id's storage type is not a torch storage class")
        if type(key) is bytes:
            key = key.decode("ascii", "replace")
        if type(location) is bytes:
            location = location.decode("ascii", "replace")
        if type(key) is not str or type(location) is not str or type(numel) is not int or type(numel) is bool:
            raise self._corrupt("a persistent id has a malformed key, location or size")
        if numel < 0 or len(location) > 128 or not location.isprintable() or not key or len(key) > 256:
            raise self._corrupt(f"storage {key!r} declares an invalid size, key or location")
        ref = self._declare(key, stype, location, numel)
        if view is None:
            return ref
        return self._view(ref, view)

    def _declare(self, key: str, stype: StorageType, location: str, numel: int) -> StorageRef:
        known = self._storages.get(key)
        if known is not None:
            if known.dtype is not stype.dtype or known.numel != numel or known.location != location:
                raise self._corrupt(
                    f"storage {key!r} is declared twice with different types, sizes or devices; the file "
                    "is ambiguous"
                )
            return known
        if key in self._views:
            raise self._corrupt(f"storage key {key!r} names both a storage and a view of another storage")
        ref = StorageRef(self.key_prefix + key, stype.dtype, location, numel, f"storage {key}", self)
        self._storages[key] = ref
        return ref

    def _view(self, base: StorageRef, view: Any) -> StorageRef:
        """Legacy storage views (torch < 0.4): ``(view_key, offset, size)`` in elements of ``base``."""
        if type(view) is not tuple or len(view) != 3:
            raise self._corrupt("a storage view must be (key, offset, size)")
        view_key, offset, size = view
        if type(view_key) is bytes:
            view_key = view_key.decode("ascii", "replace")
        if type(view_key) is not str or type(offset) is not int or type(size) is not int:
            raise self._corrupt("a storage view has a malformed key, offset or size")
        if offset < 0 or size < 0 or offset + size > base.numel:
            raise self._corrupt(
                f"view {view_key!r} of storage {base.key!r} covers elements [{offset}, {offset + size}) of "
                f"{base.numel}: out of bounds"
            )
        if view_key in self._storages:
            raise self._corrupt(f"storage key {view_key!r} names both a storage and a view of another storage")
        known = self._views.get(view_key)
        if known is not None:
            ref, known_base, known_offset = known
            if known_base is not base or ref.numel != size or known_offset != offset:
                raise self._corrupt(f"storage view {view_key!r} is declared twice differently")
            return ref
        ref = StorageRef(self.key_prefix + view_key, base.dtype, base.location, size,
                         f"storage {base.key} [view {view_key}]", self)
        self._views[view_key] = (ref, base, offset)
        return ref

    # -- the key list and the storages --------------------------------------------------------

    def _locate(self) -> None:
        """Read the key list and each storage's size field; check them against the pickle."""
        assert self.main_end is not None
        pos = self.main_end
        end = pickle_end(self._head, pos, limit=max(self.limits.max_pickle_bytes, _SMALL_PICKLE),
                         path=self.path, what="storage-key list")
        vm = Unpickler(self._head.pread(pos, end - pos), resolve=None, persistent_load=None,
                       path=self.path, record="storage-key list", limits=self.limits)
        keys = vm.load()
        if type(keys) is not list or any(type(k) is not str for k in keys):
            raise CorruptCheckpointError("the storage-key list is not a list of strings", path=self.path)
        pos = end
        self.data_start = pos
        seen: set[str] = set()
        size = self.file.size
        for key in keys:
            if key in seen:
                raise CorruptCheckpointError(f"the storage-key list names storage {key!r} twice", path=self.path)
            seen.add(key)
            ref = self._storages.get(key)
            if ref is None:
                raise CorruptCheckpointError(
                    f"the storage-key list names storage {key!r}, which the object's pickle never uses",
                    path=self.path,
                )
            head = self._head.pread(pos, _SIZE_FIELD)
            if len(head) != _SIZE_FIELD:
                raise self._truncated(key, pos)
            count = int.from_bytes(head, "little", signed=True)
            if count != ref.numel:
                raise CorruptCheckpointError(
                    f"storage {key!r} holds {count:,} elements in the file but the pickle declares "
                    f"{ref.numel:,}: the file is damaged",
                    path=self.path, record=f"storage {key}",
                )
            start = pos + _SIZE_FIELD
            if start + ref.nbytes > size:
                raise self._truncated(key, start + ref.nbytes)
            self._offsets[ref.key] = start
            pos = start + ref.nbytes
        missing = [k for k in self._storages if k not in seen]
        if missing:
            raise CorruptCheckpointError(
                f"the pickle uses {len(missing)} storage(s) the file holds no data for (first: "
                f"{missing[0]!r}); torch would leave them uninitialised, ckpt refuses",
                path=self.path,
            )
        for ref, base, offset in self._views.values():
            self._offsets[ref.key] = self._offsets[base.key] + offset * base.dtype.itemsize
        self.trailing_bytes = size - pos
        if self.trailing_bytes:
            self.notes.append(
                f"{self.trailing_bytes:,} bytes follow the last storage; torch ignores them, so does ckpt "
                "(they are not part of the checkpoint)"
            )

    def _truncated(self, key: str, needed: int) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"storage {key!r} needs the file to reach offset {needed:,} but it ends at {self.file.size:,}: "
            "the file is truncated (an incomplete download?)",
            path=self.path, record=f"storage {key}",
        )

    # -- facts and bytes ----------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        notes = list(self.notes)
        if self._views:
            notes.append(
                f"{len(self._views)} storage view(s) (written by torch before 0.4) share the bytes of the "
                "storage they slice; ckpt.load shares their memory as torch does"
            )
        if self.modules:
            notes.append(
                "the file pickles whole nn.Module objects (torch.save(model)): "
                + ", ".join(self.modules)
                + "; ckpt keeps them as inert records and never runs the source stored with them"
            )
        return {
            "format": FORMAT,
            "byteorder": self.byteorder,
            "pickle_protocol": self.pickle_protocol,
            "legacy_protocol_version": PROTOCOL_VERSION,
            "little_endian": self.little_endian,
            "type_sizes": self.type_sizes,
            "data_offset": self.data_start,
            "trailing_bytes": self.trailing_bytes,
            "notes": notes,
        }

    @property
    def storages(self) -> dict[str, StorageRef]:
        out = {ref.key: ref for ref in self._storages.values()}
        out.update((ref.key, ref) for ref, _, _ in self._views.values())
        return out

    def storage_base(self, storage: StorageRef) -> tuple[StorageRef, int] | None:
        key = storage.key[len(self.key_prefix):]
        view = self._views.get(key)
        if view is None or view[0] is not storage:
            return None
        return view[1], view[2] * view[1].dtype.itemsize

    def data_offset(self, storage: StorageRef) -> int | None:
        offset = self._offsets.get(storage.key)
        if offset is None:
            raise CorruptCheckpointError("storage was not located in the file", path=self.path,
                                         record=storage.record)
        return offset

    def readinto(self, storage: StorageRef, buf: memoryview) -> None:
        offset = self.data_offset(storage)
        assert offset is not None
        if len(buf) != storage.nbytes:
            raise CorruptCheckpointError(
                f"storage holds {storage.nbytes:,} bytes where {len(buf):,} are needed",
                path=self.path, record=storage.record,
            )
        if self.file.readinto(offset, buf) != storage.nbytes:
            raise self._truncated(storage.key, offset + storage.nbytes)

    @property
    def file_size(self) -> int:
        return self.file.size

    def fileno(self) -> int | None:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


class _Head:
    """Positioned reads of a file, the first ones served from a single read of its start: the
    preamble, the object's pickle and the key list of most files lie in their first 64 KiB."""

    SIZE = 1 << 16

    def __init__(self, file: RangedFile) -> None:
        self.file = file
        self.size = file.size
        self.head = file.pread(0, min(self.SIZE, file.size))

    def pread(self, offset: int, length: int) -> bytes:
        if offset + length <= len(self.head):
            return self.head[offset : offset + length]
        if offset < len(self.head):  # the cached part, then the rest
            return self.head[offset:] + self.file.pread(len(self.head), offset + length - len(self.head))
        return self.file.pread(offset, length)


def _read_sys_info(info: Any) -> tuple[bool | None, dict[str, int] | None]:
    """``little_endian`` and ``type_sizes`` from the sys_info dict, as plain checked values."""
    if type(info) is not dict:
        return None, None
    little = info.get("little_endian")
    sizes = info.get("type_sizes")
    little_endian = little if type(little) is bool else None
    type_sizes = None
    if type(sizes) is dict and len(sizes) <= 16 and all(
        type(k) is str and len(k) <= 32 and type(v) is int and 0 < v <= 64 for k, v in sizes.items()
    ):
        type_sizes = dict(sizes)
    return little_endian, type_sizes


@register("torch-legacy")
def open_legacy(file: RangedFile, path: str, limits: Limits, head: bytes) -> Reader:
    return LegacyReader(file, path=path, limits=limits)


# -- the tar format of torch <= 0.1.9 ------------------------------------------------------------

_TAR_BLOCK = 512
_TORCH_TAR_MEMBERS = {"sys_info", "pickle", "storages", "tensors"}


def tar_member_names(file: RangedFile, *, max_members: int = 16) -> list[str]:
    """Names of the first members of a tar file, read from their 512-byte headers (nothing is
    extracted; ``tarfile`` is never used). Stops at the first malformed header."""
    names: list[str] = []
    pos = 0
    while len(names) < max_members and pos + _TAR_BLOCK <= file.size:
        header = file.pread(pos, _TAR_BLOCK)
        if len(header) < _TAR_BLOCK or not header.strip(b"\0"):
            break
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        size_field = header[124:136].strip(b"\0 ")
        try:
            size = int(size_field or b"0", 8)
        except ValueError:
            break
        if header[156:157] not in (b"x", b"g"):  # pax extended headers describe the next member
            names.append(name)
        pos += _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK
    return names


@register("torch-tar")
def open_tar(file: RangedFile, path: str, limits: Limits, head: bytes) -> Reader:
    """Tar files are refused: the pre-0.1.10 torch format is named, and nothing is extracted."""
    names = tar_member_names(file)
    if names and set(names) <= _TORCH_TAR_MEMBERS and "pickle" in names:
        raise UnsupportedFormatError(
            "this is a checkpoint in torch's tar format (PyTorch 0.1.x, before 0.1.10: members "
            + ", ".join(names)
            + "); torch.load(weights_only=True) refuses it and so does ckpt. Nothing in it was "
            "extracted or run. Only if you trust where it came from, re-save it with a current torch",
            path=path,
        )
    listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none readable"
    raise NotACheckpointError(
        f"this is a tar archive (members: {listed}), not a checkpoint; nothing in it was extracted. "
        "Extract it (if you trust it) and point ckpt at the checkpoint inside",
        path=path,
    )
