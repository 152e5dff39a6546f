"""Reader for the zip format ``torch.save`` has written since torch 1.6.

The archive holds one top folder (any name) with ``data.pkl`` (the pickled object), one
``data/<key>`` record per storage, and small records (``version``, ``byteorder``,
``.format_version``, ``.storage_alignment``, ``.data/serialization_id``) that older files may lack.
Storages are referenced from the pickle by persistent ids
``('storage', <storage type>, key, location, numel)``; this reader checks each against its record
before any tensor is made and reads tensor bytes only when asked.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import CorruptCheckpointError, UnsupportedFormatError
from .limits import Limits
from .pickle_vm import Unpickler
from .policy import Finding, Policy, Resolver
from .rebuild import Builder
from .tensors import StorageReader, StorageRef, StorageType
from .values import brief_repr
from .zipread import STORED, ZipArchive, ZipEntry

FORMAT = "torch-zip"
MAX_VERSION = 10  # highest file format version torch 2.13 reads (caffe2 kMaxSupportedFileFormatVersion)


def archive_prefix(archive: ZipArchive) -> str:
    """The archive's top folder (``name/``), taken from the first central-directory entry as torch does."""
    if not archive.entries:
        raise CorruptCheckpointError("the zip archive is empty", path=archive.name)
    first = archive.entries[0].name
    if "/" not in first:
        raise CorruptCheckpointError(
            "records are not inside a top folder, so this is not a torch checkpoint",
            path=archive.name,
            record=first,
        )
    return first.split("/", 1)[0] + "/"


def is_torchscript(archive: ZipArchive, prefix: str) -> bool:
    return f"{prefix}constants.pkl" in archive


class TorchZipReader(StorageReader):
    """One opened torch zip checkpoint: its facts, its pickle, and positioned access to storages."""

    def __init__(self, archive: ZipArchive, *, path: str, limits: Limits) -> None:
        self.archive = archive
        self.path = path
        self.limits = limits
        self.prefix = archive_prefix(archive)
        for entry in archive.entries:
            if not entry.name.startswith(self.prefix):
                raise CorruptCheckpointError(
                    f"record is outside the archive folder {self.prefix!r}; torch refuses such archives",
                    path=path,
                    record=entry.name,
                )
        if is_torchscript(archive, self.prefix):
            raise UnsupportedFormatError(
                "this is a TorchScript archive (torch.jit.save); reading TorchScript is not supported yet. "
                "Nothing in it was run",
                path=path,
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
            "records": len(self.archive.entries),
            "zip64": self.archive.zip64,
            "crc32": "present" if self.archive.has_crcs else "absent",
            "notes": list(self.notes),
        }

    # -- the pickle ------------------------------------------------------------------------

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """Run ``data.pkl`` through the restricted unpickler with ``builder``'s constructors."""
        entry = self.pickle_entry
        assert entry is not None
        data = self.archive.read(entry, max_size=self.limits.max_pickle_bytes)
        resolver = Resolver(policy, builder, path=self.path, record=entry.name, findings=findings)
        finish = builder.finish_storage
        storages = self._storages
        make = self._storage_from_pid

        def persistent_load(pid: Any) -> Any:
            # Fast path for a storage seen before; it must pass every check the slow path makes
            # (kind 'storage', an int numel: 3.0 and True compare equal to 3 and 1).
            if type(pid) is tuple and len(pid) == 5 and type(pid[2]) is str and pid[0] == "storage":
                ref = storages.get(pid[2])
                if (
                    ref is not None and type(pid[1]) is StorageType and ref.dtype is pid[1].dtype
                    and type(pid[4]) is int and ref.numel == pid[4] and ref.location == pid[3]
                ):
                    return finish(ref)
            return finish(make(pid))

        vm = Unpickler(
            data,
            resolve=resolver,
            persistent_load=persistent_load,
            path=self.path,
            record=entry.name,
            limits=self.limits,
        )
        result = vm.load()
        self.pickle_protocol = vm.protocol
        return result

    def _storage_from_pid(self, pid: Any) -> StorageRef:
        record = self.prefix + "data.pkl"
        if type(pid) is not tuple or len(pid) != 5:
            raise CorruptCheckpointError(
                f"a persistent id must be a 5-tuple ('storage', type, key, location, numel), got "
                f"{type(pid).__name__}{'' if type(pid) is not tuple else f' of {len(pid)}'}",
                path=self.path, record=record,
            )
        typename, stype, key, location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", "replace")
        if typename != "storage":
            raise CorruptCheckpointError(f"unknown persistent id kind {brief_repr(typename)}", path=self.path,
                                         record=record)
        if type(stype) is not StorageType:
            raise CorruptCheckpointError("a persistent id's storage type is not a torch storage class",
                                         path=self.path, record=record)
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if isinstance(location, bytes):
            location = location.decode("ascii", "replace")
        if type(key) is not str or type(location) is not str or type(numel) is not int:
            raise CorruptCheckpointError("a persistent id has a malformed key, location or size",
                                         path=self.path, record=record)
        if numel < 0 or len(location) > 128 or not location.isprintable():
            raise CorruptCheckpointError(f"storage {brief_repr(key)} declares an invalid size or location",
                                         path=self.path, record=record)
        entry = self._entry(f"data/{key}")
        if entry is None:
            raise CorruptCheckpointError(
                f"the pickle refers to storage {brief_repr(key)} but the archive has no record for it (truncated "
                "or damaged file)",
                path=self.path, record=f"{self.prefix}data/{key}",
            )
        ref = StorageRef(key, stype.dtype, location, numel=numel, record=entry.name, reader=self)
        if entry.size != ref.nbytes:
            raise CorruptCheckpointError(
                f"record holds {entry.size:,} bytes but the pickle declares {numel:,} × {stype.dtype.name} "
                f"= {ref.nbytes:,} bytes",
                path=self.path, record=entry.name,
            )
        known = self._storages.get(key)
        if known is not None:
            if known.dtype is not ref.dtype or known.numel != ref.numel or known.location != location:
                raise CorruptCheckpointError(
                    f"storage {brief_repr(key)} is declared twice with different types, sizes or devices; the file "
                    "is ambiguous",
                    path=self.path, record=entry.name,
                )
            return known
        self._storages[key] = ref
        return ref

    @property
    def storages(self) -> dict[str, StorageRef]:
        return self._storages

    # -- bytes -----------------------------------------------------------------------------

    def readinto(self, storage: StorageRef, buf: memoryview, *, verify_crc: bool = True) -> None:
        entry = self.archive.entry(storage.record or "")
        self.archive.readinto(entry, buf, verify_crc=verify_crc)

    def data_offset(self, storage: StorageRef) -> int | None:
        entry = self.archive.entry(storage.record or "")
        if entry.method != STORED:
            return None
        return self.archive.data_offset(entry)

    @property
    def needs_byteswap(self) -> bool:
        return self.byteorder != sys.byteorder

