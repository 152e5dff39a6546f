"""ckpt: safe reading, inspection and conversion of PyTorch checkpoints.

Nothing in a file is ever executed: pickles run through ckpt's own restricted interpreter, and
every global a file names resolves only to constructors ckpt owns.

>>> import ckpt                                  # doctest: +SKIP
>>> ckpt.inspect("model.pt").totals["tensors"]   # doctest: +SKIP
>>> sd = ckpt.load("model.pt", map_location="cpu")  # doctest: +SKIP
>>> ckpt.save(sd, "copy.pt")                        # doctest: +SKIP
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
    UnsavableObjectError,
    UnsupportedFeatureError,
    UnsupportedFormatError,
)
from .limits import Limits
from .policy import Finding
from .tensors import StorageRef, TensorRef

if TYPE_CHECKING:
    from .differ import DiffReport, diff

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``ckpt.save`` and ``ckpt.relocate`` are imported on first use, so that reading (``ckpt
    inspect``, ``ckpt.load``) never pays for the writer. (Their modules are ``ckpt.saving`` and
    ``ckpt.relocation``: a submodule named ``save`` would replace the function on import.)
    ``ckpt.diff`` and ``ckpt.DiffReport`` likewise import ``ckpt.differ`` on first use."""
    if name == "save":
        from .saving import save as value
    elif name == "relocate":
        from .relocation import relocate as value
    elif name in ("diff", "DiffReport"):
        # ckpt.diff and ckpt.DiffReport: commands that do not compare checkpoints (inspect) do
        # not pay for the differ at start-up
        from . import differ

        value = getattr(differ, name)
    else:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    globals()[name] = value
    return value

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
    "UnsavableObjectError",
    "UnsupportedFeatureError",
    "UnsupportedFormatError",
    "diff",
    "load",
    "inspect",
    "open",
    "relocate",
    "save",
]

