"""``ckpt.open``: a checkpoint as a tree of plain values whose tensors are lazy references.

>>> import ckpt                                          # doctest: +SKIP
>>> with ckpt.open("model.pt") as ck:                   # doctest: +SKIP
...     for name, t in ck.tensors():
...         print(name, t.dtype.name, t.shape)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .errors import CheckpointError, NotACheckpointError, UnsupportedFormatError
from .limits import DEFAULT_LIMITS, Limits
from .policy import Finding, Policy
from .rebuild import Builder
from .sniff import HEAD_BYTES, explain, sniff
from .tensors import StorageRef, TensorRef
from . import torch_zip  # noqa: F401  (registers the zip reader)
from . import torch_legacy  # noqa: F401  (registers the legacy reader)
from . import safetensors_reader  # noqa: F401  (registers the safetensors reader)
from . import sharded  # noqa: F401  (registers the sharded-index reader)
from .reader import READERS, Reader
from .walk import iter_tensors
from .zipread import RangedFile

PathLike = str | os.PathLike[str]


class Checkpoint:
    """An opened checkpoint. Nothing but its metadata has been read: the zip directory and the
    pickle, a legacy file's pickles, a safetensors header, a sharded index and its shards' headers.

    Attributes: ``path``; ``format`` (``"torch-zip"``, ``"torch-legacy"``, ``"torchscript"``,
    ``"safetensors"`` or ``"sharded"``); ``facts`` (format details: archive name,
    version, byte order, pickle protocol, ...); ``root`` (the object the file holds, tensors as
    :class:`~ckpt.tensors.TensorRef`); ``findings`` (globals outside the allowlist, in inspect
    mode); ``storages`` (key -> :class:`~ckpt.tensors.StorageRef`).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: str,
        reader: Reader,
        root: Any,
        findings: list[Finding],
        policy: Policy,
    ) -> None:
        self.path = path
        self.reader = reader
        self.root = root
        self.findings = findings
        self.policy = policy

    @property
    def format(self) -> str:
        return str(self.reader.facts()["format"])

    @property
    def facts(self) -> dict[str, Any]:
        return self.reader.facts()

    @property
    def storages(self) -> dict[str, StorageRef]:
        return self.reader.storages

    def tensors(self) -> Iterator[tuple[str, TensorRef]]:
        """Every tensor with its dotted path from the root (``model.layers.0.weight``), in file order.

        A tensor object reachable by several paths is yielded at each path; an object shared
        between containers is walked once.
        """
        for path, _keys, ref in iter_tensors(self.root, max_depth=self.reader.limits.max_walk_depth):
            yield path, ref

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Checkpoint {self.path!r} {self.format}, {len(self.storages)} storages>"


def open_reader(path: PathLike, *, limits: Limits = DEFAULT_LIMITS) -> Reader:
    """Detect the format of ``path`` by content and return its reader (the file stays open).

    A folder is the sharded checkpoint whose index it holds (:func:`ckpt.sharded.open_folder`)."""
    name = os.fspath(path)
    if os.path.isdir(name):
        return sharded.open_folder(name, limits)
    try:
        file = RangedFile.open(name)
    except FileNotFoundError:
        raise CheckpointError("no such file", path=name) from None
    except IsADirectoryError:
        raise UnsupportedFormatError("is a directory", path=name) from None
    except OSError as e:
        raise CheckpointError(f"cannot open the file ({e.strerror})", path=name) from None
    try:
        head = file.pread(0, HEAD_BYTES)
        kind = sniff(head, file.size)
        factory = READERS.get(kind)
        if factory is not None:
            return factory(file, name, limits, head)
        raise NotACheckpointError(explain(kind, head, file.size), path=name)
    except BaseException:
        file.close()
        raise


def open(
    path: PathLike,
    *,
    policy: str = "strict",
    allow: Iterable[str] = (),
    trust: Mapping[str, Callable[..., Any]] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    profiles: str | Iterable[str] | None = None,
) -> Checkpoint:
    """Open a checkpoint lazily: read its directory and pickle, no tensor bytes.

    ``policy="strict"`` raises :class:`~ckpt.UnsafeGlobalError` at the first global outside the
    allowlist; ``policy="inspect"`` turns such globals into inert stand-ins listed in
    ``Checkpoint.findings``. ``allow`` names globals to accept as inert data; ``trust`` maps names
    to real constructors to call (an explicit choice to run code). ``profiles`` selects the
    :mod:`profiles <ckpt.profiles>` read without ``allow``, as in :func:`ckpt.load`.

    >>> with ckpt.open("model.pt") as ck:                 # doctest: +SKIP
    ...     sd = ck.root                                   # tensors are TensorRef
    """
    pol = Policy(policy, allow=allow, trust=trust, profiles=profiles)
    reader = open_reader(path, limits=limits)
    try:
        findings: list[Finding] = []
        root = reader.load(Builder(mode=pol.mode, limits=limits), pol, findings)
    except BaseException:
        reader.close()
        raise
    return Checkpoint(os.fspath(path), reader, root, findings, pol)
