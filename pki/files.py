"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, private: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync it, rename.

    ``private``: readable by the owner only (0600 from creation on); otherwise 0644.

    The temporary file has an unpredictable name and is created exclusively (``O_EXCL``, which
    also refuses to follow a symbolic link), so another user who can write into the folder cannot
    plant a file or link that receives the data. Concurrent writers never share a temporary; the
    last rename wins. A failed write leaves ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            if not private:
                os.fchmod(fd, 0o644)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
