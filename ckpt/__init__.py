"""ckpt: safe reading, inspection and conversion of PyTorch checkpoints.

Nothing in a file is ever executed: pickles run through ckpt's own restricted interpreter, and
every global a file names resolves only to constructors ckpt owns.

>>> import ckpt                                  # doctest: +SKIP
>>> ckpt.inspect("model.pt").totals["tensors"]   # doctest: +SKIP
>>> sd = ckpt.load("model.pt", map_location="cpu")  # doctest: +SKIP
>>> ckpt.save(sd, "copy.pt")                        # doctest: +SKIP
"""

from typing import Any

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

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``ckpt.save``, ``ckpt.relocate`` and ``ckpt.dcp_save`` are imported on first use, so that reading (``ckpt
    inspect``, ``ckpt.load``) never pays for the writer. (Their modules are ``ckpt.saving`` and
    ``ckpt.relocation``: a submodule named ``save`` would replace the function on import.)"""
    if name == "save":
        from .saving import save as value
    elif name == "relocate":
        from .relocation import relocate as value
    elif name == "dcp_save":
        from .dcp_write import dcp_save as value
    else:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    globals()[name] = value
    return value

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
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
    "load",
    "inspect",
    "open",
    "relocate",
    "save",
    "dcp_save",
]
