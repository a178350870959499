"""Atomic file writes: a file is replaced whole or left as it was."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile


def atomic_write(path, data: bytes) -> str:
    """Writes `data` to `path` through a temporary file in its folder + fsync + os.replace.

    The folder is created; a replaced file keeps its permission bits (new files get 0644).
    Returns the path written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
