"""ckpt: safe reading, inspection and conversion of PyTorch checkpoints.

Nothing in a file is ever executed: pickles run through ckpt's own restricted interpreter, and
every global a file names resolves only to constructors ckpt owns.

>>> import ckpt                                  # doctest: +SKIP
>>> ckpt.inspect("model.pt").totals["tensors"]   # doctest: +SKIP
>>> sd = ckpt.load("model.pt", map_location="cpu")  # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .differ import DiffReport, diff

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "DiffReport",
    "Finding",
    "Limits",
    "NotACheckpointError",
    "ResourceLimitError",
    "StorageRef",
    "Summary",
    "TensorRef",
    "UnsafeGlobalError",
    "UnsupportedFeatureError",
    "UnsupportedFormatError",
    "diff",
    "load",
    "inspect",
    "open",
]


def __getattr__(name: str) -> Any:
    # ckpt.diff and ckpt.DiffReport import their module on first use: commands that do not
    # compare checkpoints (inspect) do not pay for it at start-up
    if name in ("diff", "DiffReport"):
        from . import differ

        value = getattr(differ, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
