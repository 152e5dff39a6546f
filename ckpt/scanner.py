"""``ckpt.scan``: find malicious or suspicious content in files, without executing any of it.

The scanner reads each file by content, whatever its name: torch zip checkpoints (and TorchScript
archives, numpy ``.npz``, any zip), legacy torch files (concatenated pickles then raw storages), the
legacy torch tar format, bare pickles (``.pkl``, ``.pickle``, joblib-style raw pickles, several in a
row), numpy ``.npy`` (object arrays are pickles), safetensors, and gzip/bz2/xz/zlib-compressed
copies of these. Every pickle stream it meets is walked opcode by opcode by :mod:`ckpt.opwalk`
(never unpickled): every zip record that is a pickle whatever its name, every pickle of a
multi-pickle stream, bytes after a STOP, pickles hidden in byte or string literals (also when
base64-, hex- or zlib-encoded), bytes that belong to no zip record. Each global gets a verdict
(:mod:`ckpt.verdicts`): ``safe`` (on ckpt's allowlist), ``unknown`` or ``dangerous``; container
anomalies (CRC mismatches, local/central header disagreements, duplicate or escaping names,
encryption, data outside any record, polyglots, ...) are findings too.

Fail closed: a file whose pickles or container cannot be analysed whole (truncated, damaged, a
resource limit, an encrypted record) gets ``errors`` and the status ``error``, never ``clean``.

>>> report = ckpt.scan("model.pt")                      # doctest: +SKIP
>>> report.files[0].status, [f.name for f in report.findings]   # doctest: +SKIP
('findings', ['posix.system'])
"""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .crc import crc32
from . import dtypes as _dt
from .errors import CheckpointError
from .limits import DEFAULT_LIMITS, Limits
from .opwalk import OPCODES, Made, Ref, Sym, Walk, walk
from .pickle_vm import Unpickler
from .policy import Finding
from .rebuild import Builder, canonical_name
from .sniff import LEGACY_MAGIC_INT, _is_safetensors
from .verdicts import VERDICTS, verdict_for, worst
from .zipread import RangedFile, WindowFile
from .zipsurvey import Record, RecordError, ZipSurvey, outside_ranges, read_headers, read_record, survey, unsafe_name

if TYPE_CHECKING:
    import tarfile

SCHEMA = "ckpt.scan/1"
LEGACY_PROTOCOL_VERSION = 1001
MAX_NESTING = 3
"""How deep pickles inside literals, archives inside archives and compressed copies are followed."""
MAX_LITERALS = 10_000
"""Literals per stream examined for nested pickles (beyond that, the rest is reported as not examined)."""
PEEK = 64

# -- rules: every kind of finding, as data -----------------------------------------------------------


class Rule:
    """One kind of finding: its code, the verdict of its findings, a title and what it means."""

    __slots__ = ("code", "verdict", "title", "help")

    def __init__(self, code: str, verdict: str, title: str, help: str) -> None:
        self.code, self.verdict, self.title, self.help = code, verdict, title, help


RULES: dict[str, Rule] = {r.code: r for r in (
    Rule("global.dangerous", "dangerous", "A global that runs code or touches the system",
         "The pickle names a global known to run code, start processes, touch files, the network or "
         "interpreter state, resolve other names or unpickle nested data. pickle.load and "
         "torch.load(weights_only=False) would import and call it. Do not load the file."),
    Rule("global.unknown", "unknown", "A global outside ckpt's allowlist",
         "The pickle names a global ckpt does not know to be safe. ckpt never runs it, but pickle.load "
         "and torch.load(weights_only=False) would import its module and call it. Load with ckpt "
         "(allow=[...] reads it as inert data) or review the class first."),
    Rule("pickle.unresolved-global", "dangerous", "A global chosen while loading",
         "STACK_GLOBAL takes its module or name from a value that only exists at load time (the result "
         "of a call, a global's value), so which global the file imports cannot be known without running it."),
    Rule("pickle.mutates-global", "dangerous", "The pickle changes a module-level object",
         "BUILD, SETITEM(S), APPEND(S) or ADDITEMS is applied to a global itself (a class, function or "
         "module attribute), not to an object built from it: it changes process state, e.g. to plant "
         "a value a later global lookup picks up."),
    Rule("pickle.calls-computed", "unknown", "A call of a value computed while loading",
         "REDUCE/NEWOBJ/OBJ calls something that is not a global the file names but a value produced "
         "while loading (the result of another call)."),
    Rule("pickle.out-of-band", "unknown", "Out-of-band buffers",
         "NEXT_BUFFER takes data from outside the file (pickle.loads(buffers=...))."),
    Rule("pickle.encoding-dependent-global", "unknown", "A global whose name depends on the encoding",
         "STACK_GLOBAL operands are Python 2 strings with non-ASCII bytes: the name depends on the "
         "unpickler's encoding; every reading was judged."),
    Rule("pickle.nested", "unknown", "A pickle inside a literal",
         "A bytes or string value in the pickle is itself a pickle: code that unpickles it "
         "(pickle.loads, torch.load, ...) runs it. Its globals are listed with this record."),
    Rule("pickle.stacked", "unknown", "Several pickles in a row",
         "More pickles follow the first one. pickle.load reads only the first; loaders that read on "
         "(torch's legacy format, custom loops) run the others."),
    Rule("pickle.trailing-data", "unknown", "Bytes after the last pickle",
         "Bytes follow the last pickle's STOP opcode and are not a pickle: data outside any structure."),
    Rule("pickle.unexpected-record", "unknown", "A pickle where none is expected",
         "A record that torch never unpickles (not data.pkl) holds a pickle."),
    Rule("file.polyglot", "unknown", "The file is valid as several formats",
         "Different loaders would read different content (e.g. a pickle and a zip archive). Every "
         "reading was scanned."),
    Rule("file.unsupported-archive", "unknown", "An archive ckpt cannot open",
         "A 7z or RAR archive: its contents were not scanned."),
    Rule("torchscript.code", "unknown", "TorchScript code",
         "The archive holds TorchScript source that torch.jit.load compiles and runs."),
    Rule("zip.outside-data", "unknown", "Bytes outside any zip record",
         "Bytes before, between or after the records that no record or directory accounts for: a "
         "polyglot, an appended payload or a damaged file. They were scanned for pickles."),
    Rule("zip.comment", "unknown", "A zip comment",
         "The archive carries a comment (torch never writes one): bytes outside any record."),
    Rule("zip.header-mismatch", "unknown", "Local and central zip headers disagree",
         "Readers that trust the local header and readers that trust the central directory see "
         "different names, methods, flags or sizes."),
    Rule("zip.duplicate-name", "unknown", "Two zip records with one name",
         "Zip readers disagree on which record counts. Both were scanned."),
    Rule("zip.unsafe-name", "dangerous", "A zip record that escapes its folder",
         "The record name is absolute or climbs out with '..': extracting the archive writes "
         "outside the target folder."),
    Rule("zip.encrypted", "unknown", "An encrypted zip record",
         "torch never encrypts records; the contents could not be checked."),
    Rule("zip.unsupported-method", "unknown", "An unknown zip compression method",
         "The record uses a compression method ckpt (and torch) cannot read."),
    Rule("zip.overlap", "unknown", "Overlapping zip records",
         "Records share bytes (the zip-bomb technique, or an ambiguous archive)."),
    Rule("zip.truncated", "unknown", "A truncated zip record",
         "A record runs past the end of the file."),
    Rule("zip.count-mismatch", "unknown", "The zip directory and end record disagree",
         "The end record declares a different number of records than the directory holds."),
    Rule("zip.multi-disk", "unknown", "A spanned zip archive", "The archive claims to span several disks."),
    Rule("zip.bad-end-record", "unknown", "A damaged zip64 end record",
         "The zip64 locator does not point to a zip64 end record."),
    Rule("zip.crc-mismatch", "unknown", "A zip CRC-32 mismatch",
         "The record's bytes do not match its CRC: it was changed after it was written (torch loads "
         "it anyway; Python's zipfile refuses it). The bytes as they are were scanned."),
    Rule("zip.compression-bomb", "unknown", "A zip bomb",
         "A compressed record expands far beyond its compressed size."),
    Rule("zip.outside-archive-folder", "unknown", "A record outside the checkpoint's folder",
         "torch reads only the records under the first record's folder; this one lies elsewhere."),
    Rule("zip.unexpected-record", "unknown", "A record torch does not use",
         "The checkpoint holds a record that no part of the torch format refers to."),
    Rule("zip.storage-mismatch", "unknown", "A storage record that does not fit its declaration",
         "A storage record is missing, or its size differs from what the pickle declares."),
    Rule("tar.unsafe-name", "dangerous", "A tar member that escapes its folder",
         "The member name is absolute or climbs out with '..', or it is a link pointing outside: "
         "extracting the archive writes outside the target folder."),
    Rule("tar.special-member", "unknown", "A link or device in a tar archive",
         "The archive holds a link, device or other special member."),
    Rule("npy.object-array", "unknown", "A numpy object array (a pickle)",
         "The array's elements are pickled: np.load(allow_pickle=True) runs that pickle. Its globals "
         "are listed with this file."),
    Rule("npy.size-mismatch", "unknown", "A numpy array whose data does not fit its header",
         "The bytes after the header are more or fewer than the shape and dtype declare."),
    Rule("legacy.storage-mismatch", "unknown", "Legacy storages that do not fit their declaration",
         "The raw storages after the pickles of a legacy torch file do not match what the pickles declare."),
    Rule("legacy.trailing-data", "unknown", "Bytes after the last legacy storage",
         "Bytes follow the storages of a legacy torch file: data outside any structure."),
    Rule("safetensors.outside-data", "unknown", "Bytes outside any safetensors tensor",
         "The data section holds bytes no tensor accounts for."),
)}


# -- results --------------------------------------------------------------------------------------


class GlobalInfo:
    """A global one file names: its verdict, why, how often, whether it is called or mutated, how
    it is named and in which records."""

    def __init__(self, name: str, verdict: str, reason: str, count: int = 0, called: bool = False,
                 mutated: bool = False, opcodes: list[str] | None = None, records: list[str] | None = None) -> None:
        self.name = name
        self.verdict = verdict
        self.reason = reason
        self.count = count
        self.called = called
        self.mutated = mutated
        self.opcodes = opcodes if opcodes is not None else []
        self.records = records if records is not None else []

    def __repr__(self) -> str:
        return f"GlobalInfo({self.name!r}, {self.verdict!r}, count={self.count})"

    def as_json(self) -> dict[str, Any]:
        return {
            "global": self.name, "verdict": self.verdict, "reason": self.reason, "count": self.count,
            "called": self.called, "mutated": self.mutated, "opcodes": list(self.opcodes),
            "records": list(self.records),
        }


class PickleInfo:
    """One pickle stream the scanner walked (``record`` ``(file)`` is the file itself). ``role``:
    ``main`` (the pickle the format loads), ``extra`` (more pickles of the format), ``stacked``,
    ``nested`` (inside a literal), ``embedded`` (outside any record), ``unexpected``."""

    def __init__(self, record: str, offset: int, length: int, protocol: int, complete: bool, globals: int,
                 role: str) -> None:
        self.record = record
        self.offset = offset
        self.length = length
        self.protocol = protocol
        self.complete = complete
        self.globals = globals
        self.role = role

    def __repr__(self) -> str:
        return f"PickleInfo({self.record!r}, {self.offset}, {self.role})"

    def as_json(self) -> dict[str, Any]:
        return {"record": self.record, "offset": self.offset, "length": self.length, "protocol": self.protocol,
                "complete": self.complete, "globals": self.globals, "role": self.role}


class FileReport:
    """What the scanner found in one file: its ``format`` and every format it is valid as
    (``formats``; more than one is a polyglot), ``findings`` (:class:`~ckpt.Finding`), every global
    (``globals``), every pickle walked (``pickles``), ``errors`` (why it could not be analysed
    whole: ``{"record", "offset", "message"}``) and ``notes``."""

    def __init__(self, path: str, size: int = 0, format: str = "unknown", formats: list[str] | None = None) -> None:
        self.path = path
        self.size = size
        self.format = format
        self.formats = formats if formats is not None else []
        self.findings: list[Finding] = []
        self.globals: list[GlobalInfo] = []
        self.pickles: list[PickleInfo] = []
        self.errors: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"<FileReport {self.path!r} {self.format} {self.status}, {len(self.findings)} findings>"

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def verdict(self) -> str:
        """The most severe finding's verdict (``safe`` when there is none)."""
        return worst(*(f.verdict for f in self.findings))

    @property
    def status(self) -> str:
        """``error`` (not analysed whole), ``dangerous``, ``unknown`` or ``clean``."""
        if self.errors:
            return "error"
        v = self.verdict
        return "clean" if v == "safe" else v

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "size": self.size, "format": self.format, "formats": list(self.formats),
            "status": self.status, "verdict": self.verdict, "complete": self.complete,
            "findings": [finding_json(f) for f in self.findings],
            "globals": [g.as_json() for g in self.globals],
            "pickles": [p.as_json() for p in self.pickles],
            "errors": list(self.errors), "notes": list(self.notes),
            "seconds": round(self.seconds, 4),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileReport:
        """Rebuild a report from :meth:`as_json` (used between worker processes)."""
        r = cls(d["path"], d["size"], d["format"], list(d["formats"]))
        r.findings = [Finding(f["verdict"], f["global"] or f["rule"], f["record"], f["offset"], f["message"],
                              f["kind"]) for f in d["findings"]]
        r.globals = [GlobalInfo(g["global"], g["verdict"], g["reason"], g["count"], g["called"], g["mutated"],
                                list(g["opcodes"]), list(g["records"])) for g in d["globals"]]
        r.pickles = [PickleInfo(**p) for p in d["pickles"]]
        r.errors = list(d["errors"])
        r.notes = list(d["notes"])
        r.seconds = d["seconds"]
        return r


def _shown(record: str | None) -> str:
    return record if record is not None else "(file)"


def finding_rule(f: Finding) -> str:
    """The rule code of a finding (``global.dangerous``, ``zip.crc-mismatch``, ...)."""
    return f"global.{f.verdict}" if f.kind == "global" else f.name


def finding_json(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind, "rule": finding_rule(f), "verdict": f.verdict,
        "global": f.name if f.kind == "global" else None,
        "record": f.record, "offset": f.offset, "message": f.message,
    }


class ScanReport:
    """The result of :func:`scan`: one :class:`FileReport` per file (``files``), in the order given."""

    def __init__(self, files: list[FileReport], seconds: float = 0.0) -> None:
        self.files = files
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"<ScanReport {self.summary()}>"

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.files for f in r.findings]

    @property
    def verdict(self) -> str:
        return worst(*(r.verdict for r in self.files))

    @property
    def errors(self) -> list[FileReport]:
        return [r for r in self.files if r.errors]

    def exit_code(self, fail_on: str = "dangerous") -> int:
        """0 clean, 1 a finding at or above ``fail_on`` (``unknown`` or ``dangerous``), 2 a file that
        could not be analysed whole (fail closed: never 0 then)."""
        if fail_on not in ("unknown", "dangerous"):
            raise ValueError("fail_on must be 'unknown' or 'dangerous'")
        if self.errors:
            return 2
        bar = VERDICTS.index(fail_on)
        return 1 if any(VERDICTS.index(f.verdict) >= bar for f in self.findings) else 0

    def summary(self) -> dict[str, int]:
        out = {"files": len(self.files), "clean": 0, "unknown": 0, "dangerous": 0, "error": 0}
        for r in self.files:
            out[r.status] += 1
        return out

    def as_json(self, fail_on: str = "dangerous") -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "fail_on": fail_on,
            "exit_code": self.exit_code(fail_on),
            "summary": self.summary(),
            "files": [r.as_json() for r in self.files],
            "seconds": round(self.seconds, 4),
        }

    def as_sarif(self) -> dict[str, Any]:
        """The report as a SARIF 2.1.0 log (for code-scanning dashboards)."""
        from . import __version__

        used = sorted({finding_rule(f) for f in self.findings} | ({"scan.error"} if self.errors else set()))
        rules = []
        index = {}
        for code in used:
            rule = RULES.get(code) or Rule("scan.error", "error", "The file could not be analysed whole",
                                           "The scanner could not read or parse all of the file (truncated, "
                                           "damaged, a resource limit). It is not reported clean.")
            index[code] = len(rules)
            rules.append({
                "id": code, "name": _camel(code), "shortDescription": {"text": rule.title},
                "fullDescription": {"text": rule.help}, "help": {"text": rule.help},
                "defaultConfiguration": {"level": _sarif_level(rule.verdict)},
                "properties": {"verdict": rule.verdict},
            })
        results = []
        for r in self.files:
            for f in r.findings:
                code = finding_rule(f)
                results.append({
                    "ruleId": code, "ruleIndex": index[code], "level": _sarif_level(f.verdict),
                    "message": {"text": f.message},
                    "locations": [_sarif_location(r.path, f.record, f.offset)],
                    "properties": {"verdict": f.verdict, "record": f.record, "global": f.name if f.kind == "global" else None},
                })
            for e in r.errors:
                results.append({
                    "ruleId": "scan.error", "ruleIndex": index["scan.error"], "level": "error",
                    "message": {"text": e["message"]},
                    "locations": [_sarif_location(r.path, e.get("record"), e.get("offset"))],
                })
        return {
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {
                    "name": "ckpt scan", "version": __version__, "semanticVersion": __version__,
                    "informationUri": "https://github.com/ckpt/ckpt", "rules": rules,
                }},
                "results": results,
                "artifacts": [{"location": {"uri": _uri(r.path)}, "length": r.size} for r in self.files],
            }],
        }


def _camel(code: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[.\-]", code))


def _sarif_level(verdict: str) -> str:
    return {"dangerous": "error", "unknown": "warning"}.get(verdict, "error")


def _uri(path: str) -> str:
    """A SARIF ``artifactLocation.uri`` (a URI reference, RFC 3986): a relative path stays relative
    (dashboards resolve it against the repository), percent-encoded; an absolute one is a file: URI."""
    from pathlib import PurePath
    from urllib.parse import quote

    if os.path.isabs(path):
        return PurePath(os.path.abspath(path)).as_uri()
    return quote(path.replace(os.sep, "/"), safe="/")


def _sarif_location(path: str, record: str | None, offset: int | None) -> dict[str, Any]:
    loc: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": _uri(path)}}}
    if record is not None or offset is not None:
        loc["logicalLocations"] = [{"name": record or "", "kind": "member",
                                     "fullyQualifiedName": f"{record or ''}@{offset if offset is not None else ''}"}]
    return loc


# -- the analysis of one file ----------------------------------------------------------------------

_SAFE: frozenset[str] | None = None


def allowlist() -> frozenset[str]:
    """ckpt's allowlist: every ``module.name`` the restricted unpickler resolves by default (its
    constructors, and the names of the profiles ``ckpt.load`` reads by default)."""
    global _SAFE
    if _SAFE is None:
        from .profiles import BY_NAME

        _SAFE = frozenset(Builder().table) | frozenset(n for n, p in BY_NAME.items() if p.default)
    return _SAFE


def _profile_reason(qualname: str) -> str | None:
    """Why a name with an opt-in profile is ``unknown`` (the reason ``ckpt inspect`` gives), or None."""
    from .profiles import BY_NAME

    profile = BY_NAME.get(qualname)
    if profile is None or profile.default:
        return None
    return (f"{qualname} is shown as data by ckpt's {profile.group!r} profile; ckpt.load reads it only "
            f"when asked (profiles=[{profile.group!r}] or allow=[{qualname!r}])")


TORCHSCRIPT_PREFIXES = ("__torch__.", "torch.jit._pickle.")
_TORCH_SMALL_RECORDS = {"version", ".data/version", "byteorder", ".format_version", ".storage_alignment",
                        ".data/serialization_id"}
_B64 = rb"[A-Za-z0-9+/\r\n]{16,}={0,2}\s*"
_HEX = rb"(?:[0-9a-fA-F]{2}){16,}\s*"


class _Abort(Exception):
    """Stop analysing a file (an error was recorded)."""


class _FileScan:
    """The state of one file's analysis: findings, globals, pickles, errors."""

    def __init__(self, path: str, *, limits: Limits, allow: frozenset[str], fast: bool, light: bool = False) -> None:
        self.path = path
        self.light = light
        self.limits = limits
        self.allow = allow
        self.safe = allowlist() | allow
        self.fast = fast
        self.report = FileReport(path)
        self._findings: dict[tuple[str, str, str | None], Finding] = {}
        self._globals: dict[str, GlobalInfo] = {}
        self.nested_bytes = 0
        self.torchscript = False
        # torch reads a DCP folder's .metadata with plain pickle.load; DCP's own dataclasses there
        # are data (ckpt's DCP reader rebuilds them), anywhere else they are unknown
        self.dcp_metadata = os.path.basename(path).endswith(".metadata")
        self.source: RangedFile | None = None
        """The file being scanned, for reads of a few bytes that should not map its pages."""

    # -- recording ---------------------------------------------------------------------------

    def add(self, code: str, record: str | None, message: str, offset: int | None = None) -> None:
        key = (code, code, record)
        if key not in self._findings:
            self._findings[key] = Finding(RULES[code].verdict, code, record, offset, message, code.split(".")[0])

    def error(self, record: str | None, message: str, offset: int | None = None) -> None:
        entry = {"record": record, "offset": offset, "message": message}
        if entry not in self.report.errors:
            self.report.errors.append(entry)

    def finish(self) -> FileReport:
        r = self.report
        r.globals = sorted(self._globals.values(), key=lambda g: (-VERDICTS.index(g.verdict), g.name))
        order = {"dangerous": 0, "unknown": 1}
        r.findings = sorted(self._findings.values(), key=lambda f: (order.get(f.verdict, 2), f.kind != "global"))
        return r

    # -- pickle streams ------------------------------------------------------------------------

    def stream(self, data: Any, start: int, record: str | None, role: str, depth: int = 0) -> Walk:
        """Walk one pickle stream and record what it holds."""
        if len(data) - start > self.limits.max_pickle_bytes:
            self.error(record, f"the pickle may run for {len(data) - start:,} bytes, more than the "
                               f"{self.limits.max_pickle_bytes:,} a scan walks (Limits.max_pickle_bytes)", start)
        w = walk(data, start, fast=self.fast)
        self.report.pickles.append(PickleInfo(_shown(record), start, w.end - start, w.protocol, w.complete,
                                              len(w.globals), role))
        self.judge(w, record)
        if w.literals and depth < MAX_NESTING:
            self.nested(data, w, record, depth)
        return w

    def judge(self, w: Walk, record: str | None) -> None:
        for use in w.globals.values():
            self.judge_global(use.module, use.name, record, use.offset, use.opcodes, use.count,
                              use.called_at is not None, use.mutated_at is not None)
        for e in w.events:
            self.add(f"pickle.{e.code}", record, e.detail, e.offset)

    def judge_global(
        self, module: str, name: str, record: str | None, offset: int, opcodes: Iterable[str], count: int,
        called: bool, mutated: bool,
    ) -> None:
        if module == "copyreg.extension":
            qual_mod, qual_name = module, name
        else:
            qual_mod, qual_name = canonical_name(module, name)
        qualname = f"{qual_mod}.{qual_name}"
        info = self._globals.get(qualname)
        if info is None:
            if qualname in self.safe:
                verdict, reason = "safe", (
                    "allowed by the caller" if qualname in self.allow and qualname not in allowlist()
                    else "on ckpt's allowlist"
                )
            elif _profile_reason(qualname) is not None:
                verdict, reason = "unknown", _profile_reason(qualname)  # type: ignore[assignment]
            elif self.dcp_metadata and qualname in _dcp_globals():
                verdict, reason = "safe", (
                    f"{qualname} is one of DCP's metadata dataclasses in a .metadata file: ckpt's DCP reader "
                    "rebuilds it as data, never imports it"
                )
            elif self.torchscript and qualname.startswith(TORCHSCRIPT_PREFIXES):
                verdict, reason = "safe", (
                    f"{qualname} is TorchScript: resolved from the archive itself (ckpt reads it as a module "
                    "record; torch.jit.load compiles the archive's code, reported on its own), never imported"
                )
            else:
                verdict, reason = verdict_for(qualname, qual_name)
            info = self._globals[qualname] = GlobalInfo(qualname, verdict, reason)
        info.count += count
        info.called = info.called or called
        info.mutated = info.mutated or mutated
        for op in opcodes:
            if op not in info.opcodes:
                info.opcodes.append(op)
        if _shown(record) not in info.records:
            info.records.append(_shown(record))
        if info.verdict != "safe":
            key = ("global", qualname, record)
            if key not in self._findings:
                how = "/".join(opcodes)
                use = " and calls it" if called else ""
                self._findings[key] = Finding(
                    info.verdict, qualname, record, offset,
                    f"{info.reason} (named by {how} at offset {offset}{use})", "global",
                )
        if mutated:
            self.add("pickle.mutates-global", record, f"the pickle changes {qualname} itself (BUILD/SETITEM/APPEND on the global)", offset)

    # -- pickles inside literals ---------------------------------------------------------------

    def nested(self, data: Any, w: Walk, record: str | None, depth: int) -> None:
        literals = w.literals
        if len(literals) > MAX_LITERALS:
            self.report.notes.append(
                f"{record}: {len(literals):,} long string/bytes values; the first {MAX_LITERALS:,} were "
                "examined for nested pickles"
            )
            literals = literals[:MAX_LITERALS]
        for at, pos, ln, kind in literals:
            raw = bytes(data[pos : pos + ln])
            for blob, how in _literal_candidates(raw, kind):
                self._try_nested(blob, (f"{record} > " if record else "") + f"literal at {at}" + (f" ({how})" if how else ""), depth, how)

    def _try_nested(self, blob: bytes, label: str, depth: int, how: str) -> None:
        if _container_magic(blob[:PEEK]) and len(blob) >= 22:
            # a zip, npy or compressed file inside a literal (torch.load(io.BytesIO(...)) carries one)
            self.nested_bytes += len(blob)
            if self.nested_bytes > self.limits.max_pickle_bytes:
                self.error(label, "nested data exceed the bytes a scan reads (Limits.max_pickle_bytes)")
                return
            before = len(self.report.pickles)
            self.analyze(RangedFile.from_bytes(blob), label + " > ", depth + 1)
            if len(self.report.pickles) > before:
                self.add("pickle.nested", label, "a literal holds an archive or compressed data with pickles in it: "
                         "code that loads it (torch.load(io.BytesIO(...)), np.load, ...) runs them")
            return
        if not _looks_like_pickle(blob):
            return
        self.nested_bytes += len(blob)
        if self.nested_bytes > self.limits.max_pickle_bytes:
            self.error(label, "nested pickles exceed the bytes a scan walks (Limits.max_pickle_bytes)")
            return
        w = walk(blob, 0, fast=self.fast)
        if not is_pickle(w, blob):
            return
        self.report.pickles.append(PickleInfo(_shown(label), 0, w.end, w.protocol, w.complete, len(w.globals), "nested"))
        self.add("pickle.nested", label,
                 f"a {'encoded ' if how else ''}literal holds a pickle with {len(w.globals)} global(s)"
                 + (f" ({how})" if how else "") + ": code that unpickles it runs it")
        self.judge(w, label)
        if w.literals and depth + 1 < MAX_NESTING:
            self.nested(blob, w, label, depth + 1)
        if w.complete and w.end < len(blob):
            # more pickles after the first one's STOP: pickle.loads stops there, torch.load of a
            # legacy stream and custom loops read on
            if self.embedded(blob, w.end, len(blob), f"{label} > bytes at {w.end}", depth + 1):
                self.add("pickle.stacked", label, "the literal holds several pickles in a row; loaders that read on run them all")


_IDENT_PATH = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*")


def plausible(module: str, name: str) -> bool:
    """Whether ``__import__(module)`` and the attribute lookup could find something: both are
    dotted identifiers (text that merely happens to follow a GLOBAL byte is not)."""
    return module == "copyreg.extension" or (
        _IDENT_PATH.fullmatch(module) is not None and _IDENT_PATH.fullmatch(name) is not None
    )


def is_pickle(w: Walk, data: Any) -> bool:
    """Whether a walk found a pickle: it reached STOP, met an event or named an importable-looking
    global, or the bytes start with a PROTO opcode (a damaged pickle is still a pickle)."""
    if w.complete or w.events:
        return True
    if any(plausible(u.module, u.name) for u in w.globals.values()):
        return True
    return len(data) > w.start + 1 and data[w.start] == 0x80 and data[w.start + 1] <= 5


def _looks_like_pickle(b: bytes) -> bool:
    if len(b) < 2:
        return False
    if b[0] == 0x80 and b[1] <= 5:
        return True
    return b[-1] == 0x2E and b[0] in OPCODES and b[0] != 0x2E


def _literal_candidates(raw: bytes, kind: str) -> Iterator[tuple[bytes, str]]:
    """The byte strings a literal may turn into for a loader: as is, latin-1 (``_codecs.encode``), and
    decoded from base64, hex, zlib, gzip, bz2 or xz (bounded)."""
    if kind == "str":
        try:
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return
        try:
            yield text.encode("latin-1"), ""
        except UnicodeEncodeError:
            yield raw, ""
        raw = text.encode("latin-1", "ignore")
    elif kind == "STRING":
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b'"', b"'"):
            import codecs

            try:
                raw = codecs.escape_decode(raw[1:-1])[0]
            except ValueError:
                return
        yield raw, ""
    elif kind == "UNICODE":
        try:
            yield raw.decode("raw-unicode-escape").encode("latin-1", "ignore"), ""
        except UnicodeDecodeError:
            return
    else:
        yield raw, ""
    if len(raw) < 16:
        return
    for decoded, how in _decodings(raw):
        yield decoded, how
        for inner, how2 in _decodings(decoded):
            yield inner, f"{how}, {how2}"


def _decodings(raw: bytes) -> Iterator[tuple[bytes, str]]:
    limit = 64 << 20
    head = raw[:2]
    if head[:1] == b"\x78" and len(raw) > 2:
        try:
            d = zlib.decompressobj()
            out = d.decompress(raw, limit)
            yield out, "zlib"
        except zlib.error:
            pass
    if head == b"\x1f\x8b":
        try:
            d = zlib.decompressobj(31)
            yield d.decompress(raw, limit), "gzip"
        except zlib.error:
            pass
    if raw[:3] == b"BZh":
        import bz2

        try:
            yield bz2.BZ2Decompressor().decompress(raw, limit), "bz2"
        except (OSError, ValueError, EOFError):
            pass
    if raw[:6] == b"\xfd7zXZ\x00":
        import lzma

        try:
            yield lzma.LZMADecompressor().decompress(raw, limit), "xz"
        except lzma.LZMAError:
            pass
    if re.fullmatch(_B64, raw):
        import base64
        import binascii

        try:
            yield base64.b64decode(raw), "base64"
        except (binascii.Error, ValueError):
            pass
    if re.fullmatch(_HEX, raw):
        try:
            yield bytes.fromhex(raw.decode("ascii")), "hex"
        except ValueError:
            pass


# -- formats ---------------------------------------------------------------------------------------


def _storage_itemsize(value: Any) -> int | None:
    """Bytes per element of a storage type named in a persistent id (a ``Ref`` to ``torch.FloatStorage`` ...)."""
    if type(value) is not Ref or value.module is None:
        return None
    module, name = canonical_name(value.module, value.name)
    if module == "torch.storage" and name == "UntypedStorage" or (module, name) == ("torch", "UntypedStorage"):
        return 1
    if module in ("torch", "torch.cuda"):
        try:
            return _dt.by_storage_class(name).itemsize
        except KeyError:
            return None
    return None


def _storage_refs(pids: list[Any], base: str) -> tuple[list[str], list[int | None], list[int]]:
    """Record names, item sizes and element counts of every torch storage persistent id: in one
    step when all are the usual ``('storage', <storage type>, key, location, numel)`` tuples,
    else pid by pid."""
    if pids and set(map(type, pids)) == {tuple} and set(map(len, pids)) == {5}:
        kinds, types, keys, _locs, numels = zip(*pids)
        distinct = {id(t): t for t in types}
        if (set(kinds) == {"storage"} and set(map(type, keys)) == {str} and set(map(type, numels)) == {int}
                and len(distinct) < 64):
            sizes = {i: _storage_itemsize(t) for i, t in distinct.items()}
            return [base + k for k in keys], list(map(sizes.__getitem__, map(id, types))), list(numels)
    names: list[str] = []
    itemsizes: list[int | None] = []
    counts: list[int] = []
    for pid in pids:
        found = _torch_storage_pid(pid)
        if found is not None:
            names.append(base + found[0])
            itemsizes.append(found[1])
            counts.append(found[2])
    return names, itemsizes, counts


def _zero_indices(flags: bytearray) -> list[int]:
    import numpy as np

    return np.flatnonzero(np.frombuffer(bytes(flags), dtype=np.uint8) == 0).tolist()


_TEXT_PID = re.compile(r"\('storage', <class 'torch\.(?:cuda\.|storage\.)?(\w+)'>, '([^']*)', '[^']*', (\d+)[,)]")


def _torch_storage_pid(pid: Any) -> tuple[str, int | None, int] | None:
    """``(key, itemsize, numel)`` of a torch zip or legacy storage persistent id, or None. A
    protocol-0 pickle spells a tuple pid as its ``str()`` (which torch cannot read back); its
    storage is still accounted for."""
    if type(pid) is str:
        m = _TEXT_PID.match(pid)
        if m is None:
            return None
        try:
            itemsize: int | None = _dt.by_storage_class(m.group(1)).itemsize
        except KeyError:
            itemsize = 1 if m.group(1) == "UntypedStorage" else None
        return m.group(2), itemsize, int(m.group(3))
    if type(pid) is not tuple or len(pid) < 5:
        return None
    kind = pid[0]
    if type(kind) is bytes:
        kind = kind.decode("ascii", "replace")
    if kind != "storage":
        return None
    key = pid[2]
    if type(key) is bytes:
        key = key.decode("ascii", "replace")
    numel = pid[4]
    if type(key) is not str or type(numel) is not int:
        return None
    return key, _storage_itemsize(pid[1]), numel


class _Scanner(_FileScan):
    """Format dispatch: every reading of a file's bytes."""

    # -- entry ---------------------------------------------------------------------------------

    def scan_path(self) -> FileReport:
        t0 = time.perf_counter()
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                # a FIFO or device would block or never end: an error, never clean
                self.error(None, "not a regular file (a FIFO, device or socket): it was not scanned")
                self.report.seconds = time.perf_counter() - t0
                return self.finish()
            file = RangedFile.open(self.path)
        except OSError as e:
            self.error(None, f"cannot open the file ({e.strerror or e})")
            self.report.seconds = time.perf_counter() - t0
            return self.finish()
        import gc

        collecting = gc.isenabled()
        gc.disable()  # a scan makes many small acyclic objects (zip records, symbolic values)
        try:
            self.report.size = file.size
            self.source = file
            if not self.distcp(file):
                self.analyze(file, "", 0)
        except _Abort:
            pass
        except CheckpointError as e:
            self.error(e.record, e.message)
        except (OSError, MemoryError) as e:
            self.error(None, f"the file could not be read whole ({type(e).__name__}: {e})")
        except Exception as e:  # noqa: BLE001 -- a scanner bug must not pass a file as clean, nor stop a folder's scan
            self.error(None, f"internal error while scanning ({type(e).__name__}: {e}); please report it. "
                             "The file is not reported clean")
        finally:
            file.close()
            if collecting:
                gc.enable()
        self.report.seconds = time.perf_counter() - t0
        return self.finish()

    def distcp(self, file: RangedFile) -> bool:
        """A ``.distcp`` file of a DCP folder is ``torch.save`` archives laid end to end, located by
        the folder's ``.metadata``: scan each as a file of its own, and report bytes that belong
        to none. False (scan the file as any other) when no readable DCP ``.metadata`` lies beside
        it or the file is not in torch.save serialization."""
        if not self.path.endswith(".distcp"):
            return False
        folder = os.path.dirname(os.path.abspath(self.path))
        name = os.path.basename(self.path)
        try:
            ranges, serialization = _dcp_blobs(folder, self.limits)
        except (CheckpointError, OSError) as e:
            self.report.notes.append(f"no readable DCP .metadata beside this .distcp file ({e}); scanned as a plain file")
            return False
        kind = serialization.get(name)
        if kind not in ("torch_save", "safetensors"):
            return False
        self._set_format("", "distcp", ["distcp"])
        end = 0
        for offset, length, fqn in ranges.get(name, []):
            if offset < end or offset + length > file.size:
                self.error(None, f"the blob of {fqn} at bytes {offset:,}..{offset + length:,} overlaps another "
                                 "or runs past the file: .metadata and the file disagree")
                return True
            if offset > end:
                self.outside_blobs(file, end, offset)
            self.analyze(WindowFile(file, offset, length), f"{fqn}@{offset} > ", 1)
            end = offset + length
        if end < file.size:
            tail = WindowFile(file, end, file.size - end)
            if kind == "safetensors" and _is_safetensors(tail.pread(0, 512), tail.size):
                # SerializationFormat.SAFETENSORS: the tensor chunks form one safetensors blob at the end
                self.analyze(tail, f"safetensors@{end} > ", 1)
            else:
                self.outside_blobs(file, end, file.size)
        return True

    def outside_blobs(self, file: RangedFile, start: int, end: int) -> None:
        """Bytes of a .distcp file that no blob covers: torch never reads them, another tool might."""
        self.add("zip.outside-data", None, f"{end - start:,} bytes at {start:,} belong to no blob .metadata names", start)
        self.analyze(WindowFile(file, start, end - start), f"outside@{start} > ", 1)

    def label(self, prefix: str, name: str) -> str:
        return f"{prefix}{name}" if prefix else name

    def analyze(self, file: RangedFile, prefix: str, depth: int) -> None:
        """Every reading of ``file`` (the whole file, or a record/member/decompressed copy)."""
        size = file.size
        head = file.pread(0, 512)
        formats: list[str] = []
        if size == 0:
            self._set_format(prefix, "empty", [])
            return
        zip_like = head[:4] in (b"PK\x03\x04", b"PK\x05\x06")
        # zip: an end record anywhere at the end (also after other data: a polyglot)
        light = self.light and not prefix  # inspect's scan: metadata reads only (no tail search, no data)
        zs = survey(file, limits=self.limits, headers=not (zip_like and light)) if zip_like or not light else None
        if zs is not None and (zip_like or (zs.complete and any(e.local_ok for e in zs.entries))):
            formats.append("zip")
        else:
            zs = None  # no end record, or a stray one inside other data
        if zip_like and zs is None:
            self._set_format(prefix, "zip", ["zip"])
            self.error(prefix.rstrip(" >") or None, "a zip archive without its end record: the file is truncated "
                                                   "(an incomplete download?) or damaged")
            self.salvage_zip(file, prefix)
            return
        if head.startswith(b"\x93NUMPY"):
            formats.append("npy")
        compressed = _compression(head)
        if compressed in ("zlib", "bz2", "joblib-zlib") and not _starts_compressed(file, compressed):
            compressed = None  # text that happens to begin like a zlib or bz2 header
        if compressed:
            formats.append(compressed)
        if head[:6] == b"7z\xbc\xaf\x27\x1c" or head[:6] == b"Rar!\x1a\x07":
            formats.append("7z" if head[:2] == b"7z" else "rar")
        tar = _open_tar(file) if len(head) >= 512 and not zip_like else None
        if tar is not None:
            formats.append("tar")
        safetensors = _is_safetensors(head, size)
        # a pickle at byte 0 (never for a zip start: PERSID without persistent_load fails at once)
        first: Walk | None = None
        data = None
        if not zip_like and head[0] in OPCODES and head[0] not in (0x93,) and not (light and safetensors):
            data = _view(file)
            first = walk(data, 0, fast=self.fast)
            if is_pickle(first, data):
                formats.append("pickle")
            else:
                first = None
        if safetensors:
            formats.append("safetensors")
        kind = formats[0] if formats else "other"
        if len(formats) > 1:
            self.add("file.polyglot", prefix.rstrip(" >") or None,
                     f"the {'file' if not prefix else 'record'} is valid as {', '.join(formats)}: different "
                     "loaders read different content; every reading was scanned")
        self._set_format(prefix, kind, formats)
        if zs is not None:
            self.zip(file, zs, prefix, depth)
        if "npy" in formats:
            self.npy(file, prefix)
        if compressed:
            self.compressed(file, compressed, prefix, depth)
        if "7z" in formats or "rar" in formats:
            self.add("file.unsupported-archive", prefix.rstrip(" >") or None, f"a {formats[-1]} archive: its contents were not scanned")
            self.error(prefix.rstrip(" >") or None, f"a {formats[-1]} archive: ckpt cannot look inside it (extract it and scan the contents)")
        if tar is not None:
            self.tar(file, tar, prefix, depth)
        if first is not None:
            self.pickle_file(data, first, prefix)
        if safetensors:
            self.safetensors(file, prefix)

    def _set_format(self, prefix: str, kind: str, formats: list[str]) -> None:
        if not prefix:
            self.report.format = kind
            self.report.formats = formats
        elif kind not in ("other", "empty"):
            self.report.notes.append(f"{prefix.rstrip(' >')}: {'+'.join(formats) or kind}")

    # -- bare pickles and legacy torch files -----------------------------------------------------

    def pickle_file(self, data: Any, first: Walk, prefix: str) -> None:
        record = prefix.rstrip(" >") or None
        base = f"{record} > " if record else ""

        def label(off: int) -> str:
            return f"{base}pickle at {off}"

        self.report.pickles.append(PickleInfo(_shown(record), 0, first.end, first.protocol, first.complete,
                                              len(first.globals), "main"))
        self.judge(first, record)
        self.over_limit(first, record)
        if first.literals:
            self.nested(data, first, record, 0)
        if not first.complete:
            self.error(record, f"the pickle cannot be parsed whole: {first.error}", first.error_offset)
            return
        walks = [first]
        pos = first.end
        size = len(data)
        legacy = type(first.root) is int and first.root == LEGACY_MAGIC_INT
        expected = 5 if legacy else 1
        while pos < size:
            role = "extra" if len(walks) < expected else "stacked"
            w = walk(data, pos, fast=self.fast)
            if not is_pickle(w, data):
                break
            self.report.pickles.append(PickleInfo(label(pos), pos, w.end - pos, w.protocol, w.complete,
                                                  len(w.globals), role))
            self.judge(w, label(pos))
            self.over_limit(w, label(pos))
            if w.literals:
                self.nested(data, w, label(pos), 0)
            if not w.complete:
                self.error(label(pos), f"the pickle cannot be parsed whole: {w.error}", w.error_offset)
                return
            walks.append(w)
            pos = w.end
            if legacy and len(walks) == 5:
                break
        if legacy and len(walks) == 5 and type(walks[1].root) is int and walks[1].root == LEGACY_PROTOCOL_VERSION:
            if prefix == "":
                self.report.format = "torch-legacy"
                self.report.formats[self.report.formats.index("pickle")] = "torch-legacy"
            pos = self.legacy_storages(data, walks, record)
            if pos is None:
                return
            if pos < size:
                self.add("legacy.trailing-data", record, f"{size - pos:,} bytes follow the last storage", pos)
                self.embedded(data, pos, size, label(pos).replace("pickle at", "bytes at"))
            return
        if len(walks) > 1:
            self.add("pickle.stacked", record,
                     f"{len(walks)} pickles follow one another; pickle.load reads only the first, other loaders run them all",
                     walks[1].start)
        if pos < size:
            if legacy:
                self.error(record, "a legacy torch file whose five pickles cannot all be read", pos)
                return
            self.add("pickle.trailing-data", record, f"{size - pos:,} bytes follow the last pickle's STOP and are not a pickle", pos)

    def over_limit(self, w: Walk, record: str | None) -> None:
        """A pickle longer than ``Limits.max_pickle_bytes`` makes the file an error (fail closed), as
        for the records and members that are not read at all past that size."""
        if w.end - w.start > self.limits.max_pickle_bytes:
            self.error(record, f"a pickle of {w.end - w.start:,} bytes, more than the {self.limits.max_pickle_bytes:,} "
                               "a scan walks (Limits.max_pickle_bytes)", w.start)

    def legacy_storages(self, data: Any, walks: list[Walk], record: str | None) -> int | None:
        """Account for the raw storages after a legacy file's pickles; returns where they end."""
        keys_walk = walks[4]
        try:
            keys = Unpickler(bytes(data[keys_walk.start : keys_walk.end]), resolve=None, persistent_load=None,
                             limits=self.limits).load()
        except CheckpointError as e:
            self.error(record, f"the legacy storage-key list cannot be read ({e.message})", keys_walk.start)
            return None
        if type(keys) is not list or any(type(k) not in (str, bytes) for k in keys):
            self.error(record, "the legacy storage-key list is not a list of keys", keys_walk.start)
            return None
        declared: dict[str, tuple[int | None, int]] = {}
        for pid in walks[3].pids:
            found = _torch_storage_pid(pid)
            if found is not None:
                key, itemsize, numel = found
                declared.setdefault(key, (itemsize, numel))
        pos = keys_walk.end
        size = len(data)
        source = self.source
        if type(data) is not bytes and source is not None and source.size == size:
            # the whole file, memory-mapped: a read through the map would map the large page-cache
            # folios around each storage's 8-byte header (tens of MB for a 1 GB file)
            def head(at: int) -> bytes:
                return source.pread(at, 8)  # type: ignore[union-attr]
        else:
            def head(at: int) -> bytes:
                return bytes(data[at : at + 8])
        for raw_key in keys:
            key = raw_key.decode("ascii", "replace") if type(raw_key) is bytes else raw_key
            if key not in declared or declared[key][0] is None:
                self.error(record, f"legacy storage {key!r} is not declared by the pickle with a known storage type; "
                                   "the bytes after it cannot be accounted for", pos)
                return None
            itemsize, numel = declared[key]
            if pos + 8 > size:
                self.error(record, f"the file ends inside legacy storage {key!r} (truncated)", pos)
                return None
            (count,) = struct.unpack_from("<q", head(pos))
            if count < 0 or pos + 8 + count * itemsize > size:  # type: ignore[operator]
                self.error(record, f"legacy storage {key!r} declares {count:,} elements, past the end of the file", pos)
                return None
            if count != numel:
                self.add("legacy.storage-mismatch", record,
                         f"storage {key!r} holds {count:,} elements but the pickle declares {numel:,}", pos)
            pos += 8 + count * itemsize  # type: ignore[operator]
        return pos

    def embedded(self, data: Any, start: int, end: int, label: str, depth: int = 0) -> int:
        """Bytes outside any structure: scanned for pickles starting at their first byte, and for
        more pickles after each one's STOP (a loader that reads on would run them). Returns how
        many pickles were found."""
        if end - start > self.limits.max_pickle_bytes:
            if data[start] in OPCODES:
                self.error(label, f"{end - start:,} bytes that may hold a pickle, more than the "
                                  f"{self.limits.max_pickle_bytes:,} a scan reads (Limits.max_pickle_bytes)")
            return 0
        chunk = bytes(data[start:end])
        pos = found = 0
        while pos < len(chunk) and chunk[pos] in OPCODES:
            w = walk(chunk, pos, fast=self.fast)
            if not is_pickle(w, chunk):
                break
            at = label if pos == 0 else f"{label} > pickle at {pos}"
            self.report.pickles.append(PickleInfo(_shown(at), pos, w.end - pos, w.protocol, w.complete,
                                                  len(w.globals), "embedded"))
            self.judge(w, at)
            if w.literals and depth < MAX_NESTING:
                self.nested(chunk, w, at, depth)
            found += 1
            if not w.complete or w.end <= pos:
                break
            pos = w.end
        return found

    # -- zip archives ----------------------------------------------------------------------------

    def zip(self, file: RangedFile, zs: ZipSurvey, prefix: str, depth: int) -> None:
        if not zs.complete:
            self.error(prefix.rstrip(" >") or None, f"the zip archive cannot be read whole: {zs.error}")
        count = len(zs)
        crcs = zs.has_crcs  # once: the property looks at every record
        names = zs.names if zs.arrays is not None else [e.name for e in zs.entries]
        by_name = dict(zip(reversed(names), range(count - 1, -1, -1)))  # the first of duplicates
        folder = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
        is_torch = bool(folder) and folder + "data.pkl" in by_name
        self.torchscript = self.torchscript or (is_torch and folder + "constants.pkl" in by_name)
        has_dirs = any(name.endswith("/") for name in names) if count < 4096 else "/\n" in "\n".join(names) + "\n"
        files = [i for i, name in enumerate(names) if not name.endswith("/")] if has_dirs else range(count)
        is_npz = bool(files) and all(names[i].endswith(".npy") for i in files)
        kind = "torchscript" if is_torch and self.torchscript else "torch-zip" if is_torch else "npz" if is_npz else "zip"
        if not prefix:
            if self.report.formats and self.report.formats[0] == "zip":
                self.report.formats[0] = kind
            self.report.format = self.report.formats[0] if self.report.formats else kind
        done = bytearray(count)
        if is_torch:
            main_names = {folder + r for r in (("data.pkl", "constants.pkl") if self.torchscript else ("data.pkl",))}
            if len(by_name) == count:
                main_idx = sorted(by_name[m] for m in main_names if m in by_name)
            else:  # duplicate names: every record that bears a main record's name
                main_idx = [i for i, name in enumerate(names) if name in main_names]
            mains = [zs.record(i) for i in main_idx]
            if not zs.coverage:
                read_headers(zs, file, mains)
            refs: tuple[list[str], list[int | None], list[int]] = ([], [], [])
            for e in mains:
                done[e.index] = 1
                if not self._readable(e, prefix):
                    continue
                w, data = self.zip_record(file, e, prefix, "main", depth, crcs=crcs)
                if w is None:
                    continue
                if not w.complete:
                    self.error(self.label(prefix, e.name), f"the pickle cannot be parsed whole: {w.error}", w.error_offset)
                elif w.end < e.size:
                    self.add("pickle.trailing-data", self.label(prefix, e.name),
                             f"{e.size - w.end:,} bytes follow the pickle's STOP", w.end)
                    self.embedded(data, w.end, e.size, f"{self.label(prefix, e.name)} > bytes at {w.end}")
                base = folder + ("data/" if e.name.endswith("data.pkl") else "constants/")
                for have, more in zip(refs, _storage_refs(w.pids, base)):
                    have.extend(more)  # type: ignore[arg-type]
            self.zip_storages(zs, refs, by_name, done, prefix, folder)
        if count < 4096:
            rest = [i for i in files if not done[i]]
        else:
            rest = [i for i in _zero_indices(done) if not (has_dirs and names[i].endswith("/"))]
        records = [zs.record(i) for i in rest]
        if not zs.coverage:
            read_headers(zs, file, records)
        code_files = 0
        for e in records:
            if not self._readable(e, prefix):
                continue
            rel = e.name[len(folder):] if folder and e.name.startswith(folder) else None
            if is_torch:
                if rel is None:
                    self.add("zip.outside-archive-folder", self.label(prefix, e.name),
                             f"the record lies outside the archive folder {folder!r}; torch never reads it")
                elif self.torchscript:
                    if rel.startswith("code/") and rel.endswith(".py"):
                        code_files += 1
                elif rel not in _TORCH_SMALL_RECORDS:
                    self.add("zip.unexpected-record", self.label(prefix, e.name),
                             "no part of the torch format refers to this record")
            if e.method != 0 and e.size > (1 << 20) and e.size > self.limits.max_compression_ratio * max(e.compressed_size, 1):
                self.add("zip.compression-bomb", self.label(prefix, e.name),
                         f"the record inflates {e.compressed_size:,} bytes to {e.size:,}")
            if e.name.endswith(".npy") and not is_torch:
                self.zip_npy(file, e, prefix)
                continue
            if self.light and self.torchscript and e.name.endswith(".debug_pkl"):
                continue  # inspect reads no debug pickle (torch's own debug info); `ckpt scan` walks them
            role = "extra" if self.torchscript and rel is not None and rel.endswith(("pkl", ".debug_pkl")) else "unexpected"
            self.zip_record(file, e, prefix, role, depth, peek=True, crcs=crcs)
        if code_files:
            self.add("torchscript.code", prefix.rstrip(" >") or None,
                     f"the archive holds {code_files} TorchScript source file(s) that torch.jit.load compiles and runs")
        for code, rec_name, message in zs.anomalies:
            self.add(code, self.label(prefix, rec_name) if rec_name else (prefix.rstrip(" >") or None), message)
        if not zs.coverage:
            self.report.notes.append(
                f"{prefix.rstrip(' >') or 'the archive'}: the zip headers of storage records were not read "
                "(they sit next to tensor data); `ckpt scan` reads them"
            )
            return
        # bytes outside any record: scan them for pickles
        for start, end in outside_ranges(zs, file.size):
            if start == 0 and not prefix and "pickle" in self.report.formats:
                continue  # the pickle at byte 0 is scanned as its own reading of the file
            where = f"{prefix}<bytes {start}-{end} outside any record>"
            if end - start > self.limits.max_pickle_bytes:
                if file.pread(start, 1)[:1] and file.pread(start, 1)[0] in OPCODES:
                    self.error(where, f"{end - start:,} bytes that may hold a pickle, more than the "
                                      f"{self.limits.max_pickle_bytes:,} a scan reads (Limits.max_pickle_bytes)")
            elif end - start >= 2:
                self.embedded(file.pread(start, end - start), 0, end - start, where)

    def zip_storages(
        self, zs: ZipSurvey, refs: tuple[list[str], list[int | None], list[int]], by_name: dict[str, int],
        done: bytearray, prefix: str, folder: str,
    ) -> None:
        """Check the storage records the pickles refer to (``refs``: record names, item sizes,
        element counts) against the directory, without reading them: present, of the declared
        size, readable, no zip bomb. Marks them in ``done``."""
        names, itemsizes, counts = refs
        if not names:
            return
        where = list(map(by_name.get, names))
        if None in where or None in itemsizes:
            found, wanted = [], []
            for name, i, size, numel in zip(names, where, itemsizes, counts):
                if i is None:
                    if not (self.torchscript and name.startswith(folder + "constants/")):
                        self.add("zip.storage-mismatch", self.label(prefix, name),
                                 "the pickle refers to this storage but the archive has no record for it")
                    continue
                found.append(i)
                wanted.append(-1 if size is None else size * numel)
        else:
            found, wanted = where, None  # type: ignore[assignment]
        if not found:
            return
        ratio = self.limits.max_compression_ratio
        if zs.arrays is not None:
            import numpy as np

            A = zs.arrays
            idx = np.asarray(found, dtype=np.int64)
            want = (np.asarray(itemsizes, dtype=np.int64) * np.asarray(counts, dtype=np.int64)) if wanted is None \
                else np.asarray(wanted, dtype=np.int64)
            size, csize, method, flags = A["usize"][idx], A["csize"][idx], A["method"][idx], A["flags"][idx]
            odd = ((want >= 0) & (size != want)) | ((flags & 0x41) != 0) | ~np.isin(method, (0, 8, 12, 14))
            odd |= (method != 0) & (size > (1 << 20)) & (size > ratio * np.maximum(csize, 1))
            np.frombuffer(done, dtype=np.uint8)[idx] = 1
            check = sorted(set(zip(idx[odd].tolist(), want[odd].tolist())))
        else:
            if wanted is None:
                wanted = [s * c for s, c in zip(itemsizes, counts)]  # type: ignore[operator]
            for i in found:
                done[i] = 1
            check = sorted(set(zip(found, wanted)))
        for i, want_bytes in check:
            e = zs.record(i)
            if e.encrypted or e.method not in (0, 8, 12, 14):
                self._readable(e, prefix)
            if want_bytes >= 0 and e.size != want_bytes:
                self.add("zip.storage-mismatch", self.label(prefix, e.name),
                         f"the record holds {e.size:,} bytes but the pickle declares {want_bytes:,}")
            if e.method != 0 and e.size > (1 << 20) and e.size > ratio * max(e.compressed_size, 1):
                self.add("zip.compression-bomb", self.label(prefix, e.name),
                         f"the record inflates {e.compressed_size:,} bytes to {e.size:,}")

    def _readable(self, e: Record, prefix: str) -> bool:
        """Whether a record's bytes can be read; an error (fail closed) when not."""
        if e.encrypted or e.method not in (0, 8, 12, 14) or e.data_offset < 0:
            why = "encrypted" if e.encrypted else f"compressed with method {e.method}" if e.data_offset >= 0 else "unreadable (damaged local header)"
            self.error(self.label(prefix, e.name), f"the record is {why}: its contents cannot be scanned")
            return False
        return True

    def salvage_zip(self, file: RangedFile, prefix: str) -> None:
        """A zip without its directory: find records by their local headers and walk the pickles
        among them, so a truncated file still shows what it would run."""
        data = _view(file)
        pos = data.find(b"PK\x03\x04")
        while pos >= 0 and len(self.report.pickles) < 1000:
            head = bytes(data[pos : pos + 30])
            if len(head) == 30:
                flags, method = struct.unpack_from("<2H", head, 6)
                nlen, xlen = struct.unpack_from("<2H", head, 26)
                name = bytes(data[pos + 30 : pos + 30 + nlen]).decode("utf-8", "replace")
                start = pos + 30 + nlen + xlen
                if method == 0 and start < len(data) and data[start] in OPCODES:
                    w = walk(data, start, fast=self.fast)
                    if is_pickle(w, data) and (w.globals or w.events or name.endswith(".pkl")):
                        label = self.label(prefix, name)
                        self.report.pickles.append(PickleInfo(_shown(label), start, w.end - start, w.protocol, w.complete,
                                                              len(w.globals), "main" if name.endswith("data.pkl") else "extra"))
                        self.judge(w, label)
            pos = data.find(b"PK\x03\x04", pos + 4)

    def zip_record(
        self, file: RangedFile, e: Record, prefix: str, role: str, depth: int, *, peek: bool = False, crcs: bool = True,
    ) -> tuple[Walk | None, bytes]:
        """Read one record (checking its CRC) and scan it: as a pickle when it is one, else by format.
        ``crcs`` is False for archives saved without CRCs (every CRC 0)."""
        label = self.label(prefix, e.name)
        if peek:
            try:
                head = read_record(file, e, max_size=self.limits.max_pickle_bytes, limit_prefix=PEEK)
            except RecordError as err:
                self.error(label, f"the record cannot be read: {err}")
                return None, b""
            if not head or (head[0] not in OPCODES and not _container_magic(head)):
                return None, b""  # not a pickle (its first byte is no opcode) nor an archive
        try:
            data = read_record(file, e, max_size=self.limits.max_pickle_bytes)
        except RecordError as err:
            self.error(label, f"the record cannot be read: {err}")
            return None, b""
        if crcs:
            crc = crc32(data)
            if crc != e.crc:
                self.add("zip.crc-mismatch", label,
                         f"CRC-32 mismatch (stored {e.crc:08x}, computed {crc:08x}): the record was changed after it "
                         "was written; torch loads it anyway, Python's zipfile refuses it")
        if role == "main":
            return self.stream(data, 0, label, "main"), data
        if depth < MAX_NESTING and _container_magic(data[:PEEK]):
            self.analyze(RangedFile.from_bytes(data), label + " > ", depth + 1)
            return None, data
        w = walk(data, 0, fast=self.fast)
        if not is_pickle(w, data):
            return None, data
        self.report.pickles.append(PickleInfo(_shown(label), 0, w.end, w.protocol, w.complete, len(w.globals), role))
        self.judge(w, label)
        if w.literals:
            self.nested(data, w, label, 0)
        if role == "unexpected":
            self.add("pickle.unexpected-record", label,
                     f"the record holds a pickle ({len(w.globals)} global(s)) although torch never unpickles it")
        if not w.complete and data[:1] == b"\x80":
            self.error(label, f"a pickle that cannot be parsed whole: {w.error}", w.error_offset)
        elif w.complete and w.end < len(data):
            self.add("pickle.trailing-data", label, f"{len(data) - w.end:,} bytes follow the pickle's STOP", w.end)
            self.embedded(data, w.end, len(data), f"{label} > bytes at {w.end}", depth)
        return w, data

    def zip_npy(self, file: RangedFile, e: Record, prefix: str) -> None:
        label = self.label(prefix, e.name)
        try:
            head = read_record(file, e, max_size=self.limits.max_pickle_bytes, limit_prefix=1 << 16)
        except RecordError as err:
            self.error(label, f"the record cannot be read: {err}")
            return
        parsed = _npy_header(head)
        if parsed is None or parsed[1]:
            # an object array (a pickle), or not a valid .npy: scan the whole record
            try:
                data = read_record(file, e, max_size=self.limits.max_pickle_bytes)
            except RecordError as err:
                self.error(label, f"the record cannot be read: {err}")
                return
            self.npy(RangedFile.from_bytes(data), label + " > ")
            return
        self.npy_size(parsed, e.size, label)

    # -- numpy -----------------------------------------------------------------------------------

    def npy(self, file: RangedFile, prefix: str) -> None:
        label = prefix.rstrip(" >") or None
        head = file.pread(0, 1 << 16)
        parsed = _npy_header(head)
        if parsed is None:
            self.error(label, "a .npy file whose header cannot be parsed")
            return
        data_start, has_object, _itemsize, _count = parsed
        if not has_object:
            self.npy_size(parsed, file.size, label)
            return
        data = _view(file)
        self.add("npy.object-array", label, "the array holds Python objects, stored as a pickle that np.load(allow_pickle=True) runs")
        w = self.stream(data, data_start, label, "main")
        if not w.complete:
            self.error(label, f"the object array's pickle cannot be parsed whole: {w.error}", w.error_offset)
        elif w.end < file.size:
            self.add("npy.size-mismatch", label, f"{file.size - w.end:,} bytes follow the object array's pickle", w.end)
            self.embedded(data, w.end, file.size, (f"{label} > " if label else "") + f"bytes at {w.end}")

    def npy_size(self, parsed: tuple[int, bool, int | None, int], size: int, label: str | None) -> None:
        data_start, _obj, itemsize, count = parsed
        if itemsize is None:
            return
        want = data_start + itemsize * count
        if want != size:
            self.add("npy.size-mismatch", label,
                     f"the header declares {itemsize * count:,} data bytes but {size - data_start:,} follow it")

    # -- compressed copies ---------------------------------------------------------------------

    def compressed(self, file: RangedFile, kind: str, prefix: str, depth: int) -> None:
        label = prefix.rstrip(" >") or None
        if depth >= MAX_NESTING:
            self.error(label, f"{kind} data nested {depth} levels deep (not followed further)")
            return
        try:
            data = _decompress(file, kind, self.limits.max_pickle_bytes)
        except ValueError as e:
            self.error(label, f"the {kind} data cannot be decompressed whole: {e}")
            return
        self.analyze(RangedFile.from_bytes(data), f"{prefix or ''}<{kind}> > ", depth + 1)

    # -- tar archives ---------------------------------------------------------------------------

    def tar(self, file: RangedFile, tar: tarfile.TarFile, prefix: str, depth: int) -> None:
        import tarfile

        try:
            members = []
            for i, m in enumerate(tar):
                if i >= self.limits.max_records:
                    self.error(prefix.rstrip(" >") or None, f"the tar archive holds more than {self.limits.max_records:,} members")
                    return
                members.append(m)
        except (tarfile.TarError, OSError, ValueError, EOFError) as e:
            self.error(prefix.rstrip(" >") or None, f"the tar archive cannot be read whole ({e})")
            return
        names = {m.name for m in members}
        legacy = {"pickle", "storages", "tensors"} <= names
        if legacy and not prefix:
            self.report.format = "torch-tar"
            self.report.formats[self.report.formats.index("tar")] = "torch-tar"
        for m in members:
            label = self.label(prefix, m.name)
            why = unsafe_name(m.name)
            if why:
                self.add("tar.unsafe-name", label, f"the member name {why}: extracting the archive writes outside its folder")
            if m.issym() or m.islnk():
                target = m.linkname
                bad = unsafe_name(target) or (m.issym() and ".." in re.split(r"[\\/]", target))
                if bad:
                    self.add("tar.unsafe-name", label, f"a link to {target!r}, outside the archive folder")
                else:
                    self.add("tar.special-member", label, f"a {'symbolic' if m.issym() else 'hard'} link to {target!r}")
                continue
            if not m.isfile():
                if not m.isdir():
                    self.add("tar.special-member", label, "a device, FIFO or other special member")
                continue
            if m.offset_data + m.size > file.size:
                self.error(label, "the member runs past the end of the file (truncated)")
                continue
            if m.size > self.limits.max_pickle_bytes:
                peek = file.pread(m.offset_data, PEEK)
                if peek and peek[0] in OPCODES:
                    self.error(label, f"a {m.size:,}-byte member that may be a pickle is larger than a scan reads")
                continue
            data = file.pread(m.offset_data, m.size)
            if legacy and m.name in ("storages", "tensors"):
                self.legacy_tar_member(data, m.name, label)
            elif data:
                self.analyze(RangedFile.from_bytes(data), label + " > ", depth + 1)

    def legacy_tar_member(self, data: bytes, name: str, label: str) -> None:
        """torch's pre-1.0 tar format: ``storages`` and ``tensors`` interleave pickles with raw data."""
        pos = 0

        def next_pickle(role: str) -> Walk | None:
            nonlocal pos
            w = self.stream(data, pos, f"{label} > pickle at {pos}", role)
            if not w.complete:
                self.error(label, f"a pickle cannot be parsed whole: {w.error}", w.error_offset)
                return None
            pos = w.end
            return w

        first = next_pickle("main")
        if first is None:
            return
        count = first.root if type(first.root) is int else None
        if count is None or count < 0:
            self.error(label, "the member does not start with a count of its entries", 0)
            return
        for _ in range(count):
            w = next_pickle("extra")
            if w is None:
                return
            root = w.root
            if type(root) is not tuple or len(root) != 3:
                self.error(label, "an entry is not the (key, location, type) tuple torch writes", w.start)
                return
            if name == "storages":
                itemsize = _storage_itemsize(root[2])
                if itemsize is None or pos + 8 > len(data):
                    self.error(label, "a storage of unknown type or past the end of the member", pos)
                    return
                (numel,) = struct.unpack_from("<q", data, pos)
                if numel < 0 or pos + 8 + numel * itemsize > len(data):
                    self.error(label, "a storage runs past the end of the member", pos)
                    return
                pos += 8 + numel * itemsize
            else:
                if pos + 8 > len(data):
                    self.error(label, "a tensor header runs past the end of the member", pos)
                    return
                (ndim,) = struct.unpack_from("<i", data, pos)
                if ndim < 0 or pos + 8 + 16 * ndim + 8 > len(data):
                    self.error(label, "a tensor header runs past the end of the member", pos)
                    return
                pos += 8 + 16 * ndim + 8
        if name == "storages":
            if next_pickle("extra") is None:
                return
        if pos < len(data):
            self.add("legacy.trailing-data", label, f"{len(data) - pos:,} bytes follow the member's last entry", pos)
            self.embedded(data, pos, len(data), f"{label} > bytes at {pos}")

    # -- safetensors -----------------------------------------------------------------------------

    def safetensors(self, file: RangedFile, prefix: str) -> None:
        import json

        label = prefix.rstrip(" >") or None
        (n,) = struct.unpack("<Q", file.pread(0, 8))
        if n > 100 << 20:
            self.error(label, f"a safetensors header of {n:,} bytes (over 100 MB)")
            return
        try:
            header = json.loads(file.pread(8, n))
        except (ValueError, UnicodeDecodeError) as e:
            self.error(label, f"the safetensors header is not valid JSON ({e})")
            return
        if type(header) is not dict:
            self.error(label, "the safetensors header is not a JSON object")
            return
        ends = []
        for key, t in header.items():
            if key == "__metadata__":
                continue
            offsets = t.get("data_offsets") if type(t) is dict else None
            if type(offsets) is not list or len(offsets) != 2 or not all(type(x) is int for x in offsets):
                self.error(label, f"tensor {key!r} has no valid data_offsets")
                return
            ends.append(offsets)
        data_size = file.size - 8 - n
        covered = 0
        for begin, end in sorted(ends):
            if begin < 0 or end < begin or end > data_size:
                self.error(label, "a tensor's bytes lie outside the file")
                return
            covered = max(covered, end)
        if covered < data_size:
            self.add("safetensors.outside-data", label, f"{data_size - covered:,} bytes after the last tensor")


# -- helpers -------------------------------------------------------------------------------------


class _ViewIO(io.RawIOBase):
    """A read-only file object over a :class:`RangedFile` (for tarfile)."""

    def __init__(self, file: RangedFile) -> None:
        self.file = file
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.file.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        data = self.file.pread(self.pos, len(b))
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _open_tar(file: RangedFile) -> tarfile.TarFile | None:
    head = file.pread(0, 512)
    if len(head) < 512 or not _tar_checksum_ok(head):
        return None
    import tarfile

    try:
        return tarfile.open(fileobj=io.BufferedReader(_ViewIO(file)), mode="r:")  # type: ignore[arg-type]
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return None


def _tar_checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    total = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    return stored == total


def _compression(head: bytes) -> str | None:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    if head[:2] == b"ZF":
        return "joblib-zlib"
    if head[:1] == b"\x78" and len(head) > 1 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return None


def _starts_compressed(file: RangedFile, kind: str) -> bool:
    """Whether the file's first 64 KiB decompress as ``kind`` (a header alone proves little for
    zlib and bz2, whose magic bytes text can begin with)."""
    try:
        _decompress(RangedFile.from_bytes(file.pread(0, 1 << 16)), kind, 1 << 16, partial=True)
    except ValueError:
        return False
    return True


def _container_magic(head: bytes) -> bool:
    return (
        head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or head.startswith(b"\x93NUMPY") or _compression(head) is not None
    )


def _decompress(file: RangedFile, kind: str, limit: int, *, partial: bool = False) -> bytes:
    """The decompressed bytes (at most ``limit``; ``partial`` accepts data cut short)."""
    import bz2
    import lzma

    data = file.pread(0, file.size)
    if kind == "joblib-zlib":
        data = data[21:]
        kind = "zlib"
    try:
        if kind in ("gzip", "zlib"):
            d: Any = zlib.decompressobj(31 if kind == "gzip" else 15)
        elif kind == "bz2":
            d = bz2.BZ2Decompressor()
        else:
            d = lzma.LZMADecompressor()
        out = d.decompress(data, limit + 1)
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as e:
        raise ValueError(str(e)) from None
    if partial:
        if not out and not d.eof:
            raise ValueError("no data")
        return out
    if len(out) > limit:
        raise ValueError(f"it expands past {limit:,} bytes (Limits.max_pickle_bytes)")
    if not d.eof:
        raise ValueError("the compressed data is truncated")
    return out


def _view(file: RangedFile) -> Any:
    """The file's bytes for a walk, memory-mapped (only the pages a walk touches are read) or, for
    in-memory data and tiny files, as bytes."""
    if file.size <= 4096 or file.fileno() is None:
        return file.pread(0, file.size)
    import mmap

    return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # type: ignore[arg-type]


def _npy_header(head: bytes) -> tuple[int, bool, int | None, int] | None:
    """``(data offset, object dtype?, itemsize or None, element count)`` of a .npy header, or None."""
    if not head.startswith(b"\x93NUMPY") or len(head) < 10:
        return None
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack_from("<H", head, 8)
        start = 10
    elif major in (2, 3):
        if len(head) < 12:
            return None
        (hlen,) = struct.unpack_from("<I", head, 8)
        start = 12
    else:
        return None
    if hlen > len(head) - start:
        return None
    text = head[start : start + hlen].decode("utf-8" if major == 3 else "latin-1", "replace")
    import ast

    try:
        meta = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        return None
    if type(meta) is not dict or "descr" not in meta or "shape" not in meta:
        return None
    shape = meta["shape"]
    if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
        return None
    count = 1
    for d in shape:
        count *= d
    descr = meta["descr"]
    return start + hlen, _has_object(descr), _itemsize(descr), count


def _has_object(descr: Any, depth: int = 0) -> bool:
    if depth > 32:
        return True
    if type(descr) is str:
        kind = descr[1:2] if descr[:1] in "<>|=" else descr[:1]
        return kind == "O"
    if type(descr) is list:
        return any(type(f) is tuple and len(f) >= 2 and _has_object(f[1], depth + 1) for f in descr)
    return True


def _itemsize(descr: Any) -> int | None:
    if type(descr) is not str:
        return None
    m = re.fullmatch(r"[<>|=]?([biufcSUV?])(\d*)", descr)
    if not m:
        return None
    kind, digits = m.groups()
    if kind == "?":
        return 1
    if not digits:
        return None
    n = int(digits)
    return n * 4 if kind == "U" else n


# -- the public API -------------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files to scan: each file given, and every file under each folder given (recursively, sorted;
    symbolic links to folders are not followed, dangling links are left out; FIFOs, devices and
    sockets are listed, and their reports say they were not scanned)."""
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if os.path.exists(full):  # not a dangling link; FIFOs and devices are reported as errors
                        out.append(full)
        else:
            out.append(p)
    return out


def scan_file(
    path: str | os.PathLike[str], *, allow: Iterable[str] = (), limits: Limits = DEFAULT_LIMITS, fast: bool = True,
    storage_headers: bool = True,
) -> FileReport:
    """Scan one file (see :func:`scan`). ``storage_headers=False`` (what ``ckpt.inspect`` uses) does
    not read the zip headers of a torch checkpoint's storage records, which sit next to tensor data
    (the checks that need them, such as bytes outside any record, are then skipped)."""
    s = _Scanner(os.fspath(path), limits=limits, allow=frozenset(allow), fast=fast, light=not storage_headers)
    return s.scan_path()


def _send(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a pipe (a worker's report to its parent)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _parallel(files: list[str], workers: int, allow: tuple[str, ...], limits: Limits, fast: bool,
              progress: Callable[[int, int, str], None] | None) -> list[FileReport]:
    """Scan ``files`` in ``workers`` forked processes. Workers take file numbers from a shared pipe
    (small, atomic writes) and send each report back as one JSON line on their own pipe: nothing is
    pickled between the processes."""
    import json
    import selectors

    results: list[FileReport | None] = [None] * len(files)
    task_r, task_w = os.pipe()
    children: dict[int, int] = {}
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    try:
        for _ in range(min(workers, len(files))):
            res_r, res_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                code = 0
                try:
                    os.close(task_w)
                    os.close(res_r)
                    while True:
                        raw = os.read(task_r, 4)
                        if len(raw) < 4:
                            break
                        (i,) = struct.unpack("<I", raw)
                        report = scan_file(files[i], allow=allow, limits=limits, fast=fast).as_json()
                        _send(res_w, json.dumps({"i": i, "r": report}, separators=(",", ":")).encode() + b"\n")
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            os.close(res_w)
            children[pid] = res_r
            buffers[res_r] = bytearray()
            sel.register(res_r, selectors.EVENT_READ)
        os.close(task_r)
        task_r = -1
        # hand out the work; a writer thread keeps the pipe fed when it holds more than its buffer
        import threading

        def feed() -> None:
            try:
                for i in range(len(files)):
                    os.write(task_w, struct.pack("<I", i))
            except OSError:
                pass
            finally:
                os.close(task_w)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        done = 0
        open_pipes = len(children)
        while open_pipes:
            for key, _ in sel.select():
                fd = key.fd
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    os.close(fd)
                    open_pipes -= 1
                    continue
                buf = buffers[fd]
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    msg = json.loads(bytes(buf[:nl]))
                    del buf[: nl + 1]
                    results[msg["i"]] = FileReport.from_json(msg["r"])
                    done += 1
                    if progress:
                        progress(done, len(files), files[msg["i"]])
        feeder.join()
    finally:
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if task_r >= 0:
            os.close(task_r)
    out = []
    for f, r in zip(files, results):
        if r is None:  # a worker died: scan what it left here (never report a file clean unscanned)
            r = scan_file(f, allow=allow, limits=limits, fast=fast)
        out.append(r)
    return out


class BackgroundScan:
    """:func:`scan_file` of one file running in a forked process while this one works on; see
    :func:`scan_file_in_background`. :meth:`result` waits for the report; :meth:`cancel` stops
    the child (for when the caller gives up)."""

    def __init__(self, path: str, allow: Iterable[str], limits: Limits, storage_headers: bool) -> None:
        self._args = (path, tuple(allow), limits, storage_headers)
        self._pid = 0
        self._pipe = -1
        if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
            return
        import threading

        if threading.active_count() > 1:  # forking beside other threads is unsafe: scan here later
            return
        import json

        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return
        if pid == 0:  # the child: one JSON document on the pipe, nothing pickled
            code = 0
            try:
                os.close(r)
                os.nice(10)  # the caller's work is the one waited for: where the two share a CPU, it goes first
                _send(w, json.dumps(self._here().as_json(), separators=(",", ":")).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        self._pid, self._pipe = pid, r

    def _here(self) -> FileReport:
        path, allow, limits, storage_headers = self._args
        return scan_file(path, allow=allow, limits=limits, storage_headers=storage_headers)

    def result(self) -> FileReport:
        """The report: the child's, or (when there is no child or it failed) a scan made here."""
        if not self._pid:
            return self._here()
        import json

        parts = []
        try:
            while True:
                part = os.read(self._pipe, 1 << 20)
                if not part:
                    break
                parts.append(part)
        finally:
            status = self._reap()
        if status != 0:
            return self._here()
        try:
            return FileReport.from_json(json.loads(b"".join(parts)))
        except (ValueError, KeyError, TypeError):
            return self._here()

    def cancel(self) -> None:
        """Stop the child, if it still runs."""
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except OSError:
                pass
            self._reap()

    def _reap(self) -> int:
        pid, self._pid = self._pid, 0
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return -1


def scan_file_in_background(path: str | os.PathLike[str], *, allow: Iterable[str] = (),
                            limits: Limits = DEFAULT_LIMITS, storage_headers: bool = True) -> BackgroundScan:
    """Start :func:`scan_file` of ``path`` in a forked process (on another CPU, while the caller
    reads the same file); ``.result()`` returns its report. Where forking is unavailable or unsafe
    (no ``os.fork``, one CPU, other threads running) or the child fails, ``.result()`` scans in
    this process instead: a report is never lost. The report comes back as JSON, never pickled.
    The child runs at nice 10: where the two share a CPU, the caller's work goes first.

    >>> job = scan_file_in_background("model.pt")   # doctest: +SKIP
    >>> summary = ...                                # other work on the file meanwhile
    >>> job.result().status                          # doctest: +SKIP
    'clean'
    """
    return BackgroundScan(os.fspath(path), allow, limits, storage_headers)


def scan(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    allow: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    jobs: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    fast: bool = True,
) -> ScanReport:
    """Scan files and folders for malicious or suspicious content, without executing anything.

    ``paths`` is one path or several; folders are scanned recursively, every file whatever its
    extension. ``allow`` names globals to treat as safe. ``jobs`` is the number of worker processes
    for many files (default: one per CPU; 1 scans in this process). ``progress(done, total, path)``
    is called after each file.

    >>> report = ckpt.scan("models/")                     # doctest: +SKIP
    >>> report.exit_code("dangerous"), report.summary()   # doctest: +SKIP
    (0, {'files': 3, 'clean': 3, 'unknown': 0, 'dangerous': 0, 'error': 0})
    """
    t0 = time.perf_counter()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = expand_paths(paths)
    allow_t = tuple(sorted(set(allow)))
    workers = jobs if jobs is not None else (os.cpu_count() or 1)
    reports: list[FileReport] = []
    if workers <= 1 or len(files) < 8 or not hasattr(os, "fork"):
        for i, f in enumerate(files):
            reports.append(scan_file(f, allow=allow_t, limits=limits, fast=fast))
            if progress:
                progress(i + 1, len(files), f)
    else:
        reports = _parallel(files, workers, allow_t, limits, fast, progress)
    return ScanReport(reports, time.perf_counter() - t0)


def _dcp_globals() -> frozenset[str]:
    from .dcp import DCP_GLOBALS

    return DCP_GLOBALS


_DCP_BLOBS: dict[tuple[str, int, int], Any] = {}


def _dcp_blobs(folder: str, limits: Limits) -> Any:
    """:func:`ckpt.dcp.blob_ranges` of ``folder``, read once per scan of a folder's many files."""
    from .dcp import METADATA, blob_ranges

    st = os.stat(os.path.join(folder, METADATA))
    key = (folder, st.st_mtime_ns, st.st_size)
    if key not in _DCP_BLOBS:
        if len(_DCP_BLOBS) > 16:
            _DCP_BLOBS.clear()
        _DCP_BLOBS[key] = blob_ranges(folder, limits=limits)
    return _DCP_BLOBS[key]
