"""CRC-32, the zip format's checksum, as fast as this machine computes it.

Every record ckpt reads from a zip is checked against its CRC-32, and every record it writes gets
one, so the checksum's speed bounds loading, saving, converting and verifying big files. zlib's
``crc32`` runs at about 2.4 GB/s on one core of the development machine; ISA-L's (the ``isal``
package, Intel's assembly implementation, a core dependency on the platforms it has wheels for)
at about 9.6 GB/s. Both compute the same function:

>>> crc32(b"123456789") == 0xCBF43926
True
>>> crc32(b"6789", crc32(b"12345")) == crc32(b"123456789")
True

``RELEASES_GIL`` says whether the function lets other threads run while it works (zlib does for
buffers over 5 KiB; ISA-L's binding does not), which decides whether spreading one checksum over
several threads pays.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

crc32: Callable[..., int]
try:  # pragma: no cover - which branch runs depends on the platform
    from isal.isal_zlib import crc32 as _isal_crc32

    crc32 = _isal_crc32  # type: ignore[assignment]
    BACKEND = "isal"
    RELEASES_GIL = False
except ImportError:  # pragma: no cover
    crc32 = zlib.crc32  # type: ignore[assignment]
    BACKEND = "zlib"
    RELEASES_GIL = True

__all__ = ["BACKEND", "RELEASES_GIL", "crc32"]
