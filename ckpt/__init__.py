"""ckpt: safe reading, inspection and conversion of PyTorch checkpoints.

Nothing in a file is ever executed: pickles run through ckpt's own restricted interpreter, and
every global a file names resolves only to constructors ckpt owns.

>>> import ckpt                                  # doctest: +SKIP
>>> ckpt.inspect("model.pt").totals["tensors"]   # doctest: +SKIP
>>> sd = ckpt.load("model.pt", map_location="cpu")  # doctest: +SKIP
"""

from .checkpoint import Checkpoint, open
from .load import load
from .save import save
from .relocate import relocate
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
]
