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


# The scanner, the converter and the DCP writer are imported on first use, so that ``import ckpt``
# stays light.
_LAZY = {
    "scan": "scanner", "ScanReport": "scanner", "FileReport": "scanner",
    "convert": "conversion", "verify": "verification", "dcp_save": "dcp_write",
    "diff": "differ", "DiffReport": "differ",
}


def __getattr__(name: str) -> Any:
    """``ckpt.save``, ``ckpt.relocate``, ``ckpt.scan``, ``ckpt.convert``, ``ckpt.verify``,
    ``ckpt.diff`` and ``ckpt.dcp_save`` are imported on first use, so that reading (``ckpt
    inspect``, ``ckpt.load``) never pays for the writers, the scanner, the converter or the differ.
    (Their modules are ``ckpt.saving``, ``ckpt.relocation``, ``ckpt.scanner``, ``ckpt.conversion``,
    ``ckpt.verification``, ``ckpt.differ`` and ``ckpt.dcp_write``: a submodule named ``save`` would
    replace the function on import.)"""
    if name == "save":
        from .saving import save as value
    elif name == "relocate":
        from .relocation import relocate as value
    elif name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    globals()[name] = value
    return value

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "DiffReport",
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
    "UnsavableObjectError",
    "UnsupportedFeatureError",
    "UnsupportedFormatError",
    "diff",
    "convert",
    "load",
    "inspect",
    "open",
    "relocate",
    "save",
    "scan",
    "verify",
    "dcp_save",
]

