"""Content fingerprints of files: what makes "the same input" mean the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BUFFER = 1 << 20


def file_digest(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file's bytes, read in 1 MiB chunks (OSError passes)."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(READ_BUFFER)
        while n := f.readinto(buf):
            sha.update(memoryview(buf)[:n])
            size += n
    return size, sha.hexdigest()
