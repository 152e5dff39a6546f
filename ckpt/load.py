"""``ckpt.load``: the object ``torch.load(weights_only=True)`` returns, read by ckpt's own unpickler."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .checkpoint import PathLike, open_reader
from .limits import DEFAULT_LIMITS, Limits
from .policy import Finding, Policy

FLAVORS = ("torch", "numpy")


def load(
    path: PathLike,
    map_location: Any = None,
    *,
    mmap: bool = False,
    allow: Iterable[str] = (),
    trust: Mapping[str, Callable[..., Any]] | None = None,
    profiles: str | Iterable[str] | None = None,
    as_: str = "torch",
    unsupported_dtype: str = "upcast",
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """Load a checkpoint as ``torch.load(path, weights_only=True, map_location=..., mmap=...)`` would.

    Returns the same object: same container types, dtypes, shapes, strides, values, devices and
    storage sharing (two views of one storage stay views of one storage). The pickle runs through
    ckpt's restricted interpreter under the strict policy: the first global outside the
    allowlist raises :class:`~ckpt.UnsafeGlobalError`, nothing is imported or executed.

    * ``map_location``: None, a string, a ``torch.device``, a dict of tag -> tag, or a callable
      ``(storage, tag) -> storage``, with torch's semantics.
    * ``mmap``: map the file instead of reading it (tensors share the file's pages, copy on
      write); CRCs of mapped records are not checked (that would read them).
    * ``allow``: globals to accept as inert data (``ckpt.values.InertObject``), never imported.
    * ``trust``: ``{"pkg.Name": constructor}``: call your own constructor for that global.
    * ``profiles``: which :mod:`profiles <ckpt.profiles>` rebuild non-tensor objects without being
      named in ``allow``. The default reads plain values (numpy scalars/arrays/dtypes, datetime,
      pathlib, frozenset/slice/range, defaultdict with a built-in factory); add record groups such
      as ``"argparse"``, ``"lightning"``, ``"omegaconf"``, ``"deepspeed"`` (or ``"all"``) to get
      their objects as :class:`~ckpt.values.Record` data; ``"none"`` accepts only what torch does.
    * ``as_="numpy"``: numpy arrays instead of torch tensors (no torch needed); dtypes numpy lacks
      follow ``unsupported_dtype`` (``upcast``, ``raw`` or ``error``; see :mod:`ckpt.numpy_out`).

    >>> sd = ckpt.load("model.pt", map_location="cpu")                 # doctest: +SKIP
    >>> arrays = ckpt.load("model.pt", as_="numpy")                     # doctest: +SKIP
    >>> ck = ckpt.load("last.ckpt", profiles=["default", "lightning", "omegaconf"])  # doctest: +SKIP
    """
    if as_ not in FLAVORS:
        raise ValueError(f"as_ must be one of {FLAVORS}, not {as_!r}")
    policy = Policy("strict", allow=allow, trust=trust, profiles=profiles)
    reader = open_reader(path, limits=limits)
    try:
        builder: Any
        if as_ == "torch":
            from .torch_out import TorchBuilder

            builder = TorchBuilder(reader, map_location=map_location, mmap=mmap, limits=limits)
        else:
            if map_location not in (None, "cpu"):
                raise ValueError("numpy arrays live on the CPU: map_location must be None or 'cpu' with as_='numpy'")
            from .numpy_out import NumpyBuilder

            builder = NumpyBuilder(reader, mmap=mmap, unsupported_dtype=unsupported_dtype, limits=limits)
        findings: list[Finding] = []
        reader.defer_crc_checks()
        result = reader.load(builder, policy, findings)
        if as_ == "torch":
            from .torch_out import holds_storage_handle

            if holds_storage_handle(result):
                # The file stores a bare storage: torch returns it as a TypedStorage, which ckpt
                # makes only when needed, so this rare file is read once more making them.
                builder = TorchBuilder(
                    reader, map_location=map_location, mmap=mmap, limits=limits, typed_storages=True
                )
                result = reader.load(builder, policy, findings)
        reader.finish_crc_checks()
        return result
    finally:
        reader.close()
