"""Reader for the zip format ``torch.save`` has written since torch 1.6.

The archive holds one top folder (any name) with ``data.pkl`` (the pickled object), one
``data/<key>`` record per storage, and small records (``version``, ``byteorder``,
``.format_version``, ``.storage_alignment``, ``.data/serialization_id``) that older files may lack.
Storages are referenced from the pickle by persistent ids
``('storage', <storage type>, key, location, numel)``; this reader checks each against its record
before any tensor is made and reads tensor bytes only when asked.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

from .errors import CorruptCheckpointError, UnsupportedFormatError
from .limits import Limits
from .pickle_vm import Unpickler
from .policy import Finding, Policy, Resolver
from .rebuild import Builder
from .errors import NotACheckpointError
from .reader import Reader, register
from .tensors import StorageRef, StorageType
from .zipread import STORED, RangedFile, ZipArchive, ZipEntry
from .values import brief_repr

FORMAT = "torch-zip"
MAX_VERSION = 10  # highest file format version torch 2.13 reads (caffe2 kMaxSupportedFileFormatVersion)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a pickle builds many (acyclic) objects: its
    generational passes over a growing heap cost ~15% of a large load."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def archive_prefix(archive: ZipArchive) -> str:
    """The archive's top folder (``name/``), taken from the first central-directory entry as torch does."""
    if not len(archive):
        raise CorruptCheckpointError("the zip archive is empty", path=archive.name)
    first = archive.entry_at(0).name
    if "/" not in first:
        raise CorruptCheckpointError(
            "records are not inside a top folder, so this is not a torch checkpoint",
            path=archive.name,
            record=first,
        )
    return first.split("/", 1)[0] + "/"


def is_torchscript(archive: ZipArchive, prefix: str) -> bool:
    return f"{prefix}constants.pkl" in archive


class TorchZipReader(Reader):
    """One opened torch zip checkpoint: its facts, its pickle, and positioned access to storages."""

    def __init__(self, archive: ZipArchive, *, path: str, limits: Limits) -> None:
        self.archive = archive
        self.path = path
        self.limits = limits
        self.prefix = archive_prefix(archive)
        raw_prefix = self.prefix.encode("utf-8", "surrogateescape")
        for raw in archive.raw_names():
            if not raw.startswith(raw_prefix):
                raise CorruptCheckpointError(
                    f"record is outside the archive folder {self.prefix!r}; torch refuses such archives",
                    path=path,
                    record=raw.decode("utf-8", "replace"),
                )
        self.pickle_entry = self._entry("data.pkl")
        if self.pickle_entry is None:
            raise CorruptCheckpointError(
                f"no {self.prefix}data.pkl record: a zip archive, but not a torch checkpoint", path=path
            )
        self.notes: list[str] = []
        self.version = self._read_version()
        self.byteorder = self._read_byteorder()
        self.format_version = self._small_text(".format_version")
        alignment = self._small_text(".storage_alignment")
        self.storage_alignment = int(alignment) if alignment and alignment.isdigit() else None
        self.serialization_id = self._small_text(".data/serialization_id")
        self._storages: dict[str, StorageRef] = {}
        self.pickle_protocol: int | None = None
        self.fast_path = True
        """Decode torch's usual tensor records in one step (tests turn it off to compare)."""

    # -- small records ---------------------------------------------------------------------

    def _entry(self, record: str) -> ZipEntry | None:
        return self.archive.get(self.prefix + record)

    def _small_text(self, record: str, limit: int = 64) -> str | None:
        entry = self._entry(record)
        if entry is None:
            return None
        if entry.size > limit:
            raise CorruptCheckpointError(f"record is {entry.size} bytes; at most {limit} expected",
                                         path=self.path, record=entry.name)
        raw = self.archive.read(entry)
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CorruptCheckpointError("record is not ASCII text", path=self.path, record=entry.name) from None

    def _read_version(self) -> int | None:
        text = self._small_text("version")
        if text is None:
            text = self._small_text(".data/version")
        if text is None:
            self.notes.append("no version record (torch itself refuses such files; ckpt reads them)")
            return None
        try:
            version = int(text)
        except ValueError:
            raise CorruptCheckpointError(f"version record {text!r} is not a number", path=self.path) from None
        if not 1 <= version <= MAX_VERSION:
            raise UnsupportedFormatError(
                f"file format version {version} is outside the range torch reads (1..{MAX_VERSION})",
                path=self.path,
            )
        return version

    def _read_byteorder(self) -> str:
        text = self._small_text("byteorder")
        if text is None:
            return "little"  # torch's default for files written before the record existed
        if text not in ("little", "big"):
            raise CorruptCheckpointError(f"unknown byte order {text!r}", path=self.path, record=self.prefix + "byteorder")
        return text

    def facts(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "archive_name": self.prefix.rstrip("/"),
            "version": self.version,
            "format_version": self.format_version,
            "byteorder": self.byteorder,
            "storage_alignment": self.storage_alignment,
            "serialization_id": self.serialization_id,
            "pickle_protocol": self.pickle_protocol,
            "records": len(self.archive),
            "zip64": self.archive.zip64,
            "crc32": "present" if self.archive.has_crcs else "absent",
            "notes": list(self.notes),
        }

    # -- the pickle ------------------------------------------------------------------------

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """Run ``data.pkl`` through the restricted unpickler with ``builder``'s constructors."""
        entry = self.pickle_entry
        assert entry is not None
        result, protocol = self.run_pickle(entry, builder, policy, findings)
        self.pickle_protocol = protocol
        return result

    def run_pickle(
        self, entry: ZipEntry, builder: Builder, policy: Policy, findings: list[Finding], *,
        folder: str = "data/", resolve: Any = None,
    ) -> tuple[Any, int]:
        """Run one pickle record; its storages are the records ``<folder><key>``.

        ``resolve`` wraps the policy's resolver (``resolve(module, name, offset, default)``) for
        readers that give some globals their own meaning (TorchScript). Returns the object and
        the pickle's protocol."""
        data = self.archive.read(entry, max_size=self.limits.max_pickle_bytes)
        resolver: Any = Resolver(policy, builder, path=self.path, record=entry.name, findings=findings)
        if resolve is not None:
            default = resolver
            resolver = lambda module, name, offset: resolve(module, name, offset, default)  # noqa: E731
        finish = builder.finish_storage
        storages = self._storages
        key_prefix = self.key_prefix + (folder if folder != "data/" else "")
        make = self._storage_from_pid

        def persistent_load(pid: Any) -> Any:
            # Fast path for a storage seen before; it must pass every check the slow path makes
            # (kind 'storage', an int numel: 3.0 and True compare equal to 3 and 1).
            if type(pid) is tuple and len(pid) == 5 and type(pid[2]) is str and pid[0] == "storage":
                ref = storages.get(key_prefix + pid[2] if key_prefix else pid[2])
                if (
                    ref is not None and type(pid[1]) is StorageType and ref.dtype is pid[1].dtype
                    and type(pid[4]) is int and ref.numel == pid[4] and ref.location == pid[3]
                ):
                    return finish(ref)
            return finish(make(pid, folder))

        record_prefix = f"{self.prefix}{folder}"
        sizes_of = self.archive.sizes_of

        same_object = type(builder).finish_storage is Builder.finish_storage  # storages are their own value

        def persistent_load_many(names: Any, types: Any, keys: Any, locations: Any, numels: Any) -> list[Any]:
            # The storages of a run of tensor records, each new and named once (a state dict's
            # usual shape), are made at once after the checks _storage_from_pid makes one by one;
            # any other run goes through persistent_load, id by id.
            skeys = [key_prefix + k for k in keys] if key_prefix else list(keys)
            if (
                set(names) == {"storage"} and set(map(type, types)) == {StorageType}
                and set(map(type, keys)) == {str} and set(map(type, numels)) == {int} and min(numels) >= 0
                and all(type(x) is str and len(x) <= 128 and x.isprintable() for x in set(locations))
                and len(set(skeys)) == len(skeys) and storages.keys().isdisjoint(skeys)
            ):
                records = [record_prefix + k for k in keys]
                refs = list(map(StorageRef, skeys, [t.dtype for t in types], locations, numels, records, repeat(self)))
                if sizes_of(records) == [r.nbytes for r in refs]:
                    storages.update(zip(skeys, refs))
                    return refs if same_object else list(map(finish, refs))
            return list(map(persistent_load, zip(names, types, keys, locations, numels)))

        vm = Unpickler(
            data,
            resolve=resolver,
            persistent_load=persistent_load,
            path=self.path,
            record=entry.name,
            limits=self.limits,
        )
        if self.fast_path:
            vm.fast_tensor_op = builder.table.get("torch._utils._rebuild_tensor_v2")
            vm.persistent_load_many = persistent_load_many
        with gc_paused():
            result = vm.load()
        return result, vm.protocol

    def _storage_from_pid(self, pid: Any, folder: str = "data/") -> StorageRef:
        if type(pid) is not tuple or len(pid) != 5:
            raise self._corrupt_pid(
                f"a persistent id must be a 5-tuple ('storage', type, key, location, numel), got a "
                f"{type(pid).__name__}" + (f" of {len(pid)}" if type(pid) is tuple else "")
            )
        typename, stype, key, location, numel = pid
        if type(typename) is not str:
            typename = typename.decode("ascii", "replace") if type(typename) is bytes else typename
        if typename != "storage":
            raise self._corrupt_pid(f"unknown persistent id kind {brief_repr(typename)}")
        if type(stype) is not StorageType:
            raise self._corrupt_pid("a persistent id's storage type is not a torch storage class")
        if type(key) is bytes:
            key = key.decode("ascii", "replace")
        if type(location) is bytes:
            location = location.decode("ascii", "replace")
        if type(key) is not str or type(location) is not str or type(numel) is not int:
            raise self._corrupt_pid("a persistent id has a malformed key, location or size")
        if numel < 0 or len(location) > 128 or not location.isprintable():
            raise self._corrupt_pid(f"storage {brief_repr(key)} declares an invalid size or location")
        record = f"{self.prefix}{folder}{key}"
        name, key = key, self.key_prefix + (folder if folder != "data/" else "") + key
        size = self.archive.size_of(record)
        if size is None:
            raise CorruptCheckpointError(
                f"the pickle refers to storage {brief_repr(name)} but the archive has no record for it (truncated "
                "or damaged file)",
                path=self.path, record=record,
            )
        ref = StorageRef(key, stype.dtype, location, numel, record, self)
        if size != ref.nbytes:
            raise CorruptCheckpointError(
                f"record holds {size:,} bytes but the pickle declares {numel:,} x {stype.dtype.name} "
                f"= {ref.nbytes:,} bytes",
                path=self.path, record=record,
            )
        known = self._storages.get(key)
        if known is not None:
            if known.dtype is not ref.dtype or known.numel != numel or known.location != location:
                raise CorruptCheckpointError(
                    f"storage {brief_repr(name)} is declared twice with different types, sizes or devices; the file "
                    "is ambiguous",
                    path=self.path, record=record,
                )
            return known
        self._storages[key] = ref
        return ref

    def _corrupt_pid(self, message: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(message, path=self.path, record=self.prefix + "data.pkl")

    @property
    def storages(self) -> dict[str, StorageRef]:
        return self._storages

    # -- bytes -----------------------------------------------------------------------------

    def readinto(self, storage: StorageRef, buf: memoryview, *, verify_crc: bool = True) -> None:
        entry = self.archive.entry(storage.record or "")
        self.archive.readinto(entry, buf, verify_crc=verify_crc, readahead=True)

    def read_small(self, storage: StorageRef) -> bytes | None:
        """A small storage's bytes read ahead in file order, or None (then use :meth:`readinto`)."""
        return self.archive.read_small(storage.record or "")

    def data_offset(self, storage: StorageRef) -> int | None:
        entry = self.archive.entry(storage.record or "")
        if entry.method != STORED:
            return None
        return self.archive.data_offset(entry)

    @property
    def file_size(self) -> int:
        return self.archive.file.size

    def fileno(self) -> int | None:
        return self.archive.file.fileno()

    def defer_crc_checks(self) -> None:
        self.archive.defer_crc_checks()

    def finish_crc_checks(self) -> None:
        self.archive.finish_crc_checks()

    def close(self) -> None:
        self.archive.close()


@register("zip")
def open_zip(file: RangedFile, path: str, limits: Limits, head: bytes) -> Reader:
    """A zip file: a torch checkpoint (or TorchScript archive) unless it is plainly something else."""
    archive = ZipArchive(file, name=path, limits=limits)
    if len(archive) and all(raw.endswith(b".npy") for raw in archive.raw_names()):
        raise NotACheckpointError("this is a numpy .npz archive, not a torch checkpoint", path=path)
    if len(archive) and is_torchscript(archive, archive_prefix(archive)):
        from .torchscript import TorchScriptReader

        return TorchScriptReader(archive, path=path, limits=limits)
    return TorchZipReader(archive, path=path, limits=limits)

