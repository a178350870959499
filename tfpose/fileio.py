"""Atomic file writes: a file is replaced whole or left as it was."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile


def fsync_path(path) -> None:
    """fsync a file or a directory (a directory: so a rename inside it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory) -> None:
    """fsync every file and folder under `directory` (itself included), e.g. a folder written
    under a temporary name before it is renamed into place."""
    for root, _, files in os.walk(directory):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def temporary_prefix(path) -> str:
    """Name prefix of the temporary files ``atomic_write(path, ...)`` leaves if it is killed."""
    return f".{os.path.basename(os.fspath(path))}."


def atomic_write(path, data: bytes) -> str:
    """Writes `data` to `path` through a temporary file in its folder + fsync + os.replace, then
    fsyncs the folder.

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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temporary_prefix(path), suffix=".tmp")
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
    fsync_path(folder)
    return path
