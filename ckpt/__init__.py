"""ckpt: safe reading, inspection and conversion of PyTorch checkpoints.

Nothing in a file is ever executed: pickles run through ckpt's own restricted interpreter, and
every global a file names resolves only to constructors ckpt owns.

>>> import ckpt                                  # doctest: +SKIP
>>> ckpt.inspect("model.pt").totals["tensors"]   # doctest: +SKIP
>>> sd = ckpt.load("model.pt", map_location="cpu")  # doctest: +SKIP
"""

from .checkpoint import Checkpoint, open
from .load import load
from .summary import Summary, inspect
from .errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotACheckpointError,
    ResourceLimitError,
    UnsafeGlobalError,
    UnsupportedFeatureError,
    UnsupportedFormatError,
)
from .limits import Limits
from .policy import Finding
from .tensors import StorageRef, TensorRef

__version__ = "0.1.0"

# The scanner (``ckpt.scan``) is imported on first use, so that ``import ckpt`` stays light.
_LAZY = {"scan": "scanner", "ScanReport": "scanner", "FileReport": "scanner"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckpt' has no attribute {name!r}")

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "FileReport",
    "Finding",
    "Limits",
    "ScanReport",
    "NotACheckpointError",
    "ResourceLimitError",
    "StorageRef",
    "Summary",
    "TensorRef",
    "UnsafeGlobalError",
    "UnsupportedFeatureError",
    "UnsupportedFormatError",
    "load",
    "inspect",
    "open",
    "scan",
]
