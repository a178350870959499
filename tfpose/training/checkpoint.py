"""Crash-safe checkpoints: a kill -9 or power loss at any moment never leaves an unloadable latest.

Layout of a checkpoint directory (``<out_dir>/checkpoints``, and ``<out_dir>/best`` for the
best-metric checkpoint)::

    latest.json          {"checkpoint": "ckpt-1200", "step": 1200, ...}: the ONLY source of truth
    ckpt-1200/ckpt.index, ckpt-1200/ckpt.data-*, ckpt-1200/info.json
    ckpt-1000/...        older checkpoints, the newest ``keep`` are kept

Why not ``tf.train.CheckpointManager``: it writes ``ckpt-N.index``, ``ckpt-N.data-*`` and the
``checkpoint`` state file as separate files in one directory and fsyncs none of them (the state
file is only renamed into place), so after a machine crash or power loss the state file can name
a checkpoint whose data never reached the disk; its retention deletes index and data files one
by one next to the live checkpoints.

Protocol of :meth:`CheckpointStore.save`:
    1. ``tf.train.Checkpoint.write`` into a fresh ``.tmp-*`` directory, plus ``info.json``;
    2. fsync every file and the directory;
    3. rename the directory to ``ckpt-<step>`` (atomic) and fsync the parent;
    4. write ``latest.json`` to a temporary file, fsync, ``os.replace`` it over the pointer
       (atomic), fsync the parent;
    5. delete checkpoints beyond ``keep`` (renamed to ``.trash-*`` first, then removed).
A crash before 4 leaves the pointer on the previous, complete checkpoint; ``.tmp-*``, ``.trash-*``
and unreferenced newer ``ckpt-*`` directories are debris that the next writer removes.
Atomic renames need a POSIX file system (local disk, NFS): ``train.out_dir`` must be one, shared by
all workers in multi-worker training.

A checkpoint holds ``model``, ``optimizer`` (with its ``iterations``: the LR-schedule position),
``state`` (:class:`TrainState`: step, epoch, data position, best metric) and ``rng`` (the model's
keras SeedGenerator states). Reading (the pointer, :func:`resolve_prefix`, :func:`restore`,
:func:`restore_model`, which loads only the model) lives in tfpose.checkpoints, which evaluation,
prediction and export use without importing the training engine.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import uuid

import tensorflow as tf

# reading checkpoints (one implementation, outside the training engine), re-exported here
from tfpose.checkpoints import (POINTER, PREFIX, CheckpointError, latest_prefix, read_pointer,
                                resolve_prefix, restore, restore_model)
from tfpose.fileio import atomic_write, fsync_path, temporary_prefix
from tfpose.fileio import fsync_tree as _fsync_tree  # module-level: the crash tests patch it

__all__ = ["POINTER", "PREFIX", "CheckpointError", "CheckpointStore", "TrainState",
           "resolve_prefix", "restore", "restore_model"]

_NAME = re.compile(r"^ckpt-(\d+)(?:\.(\d+))?$")  # ckpt-<step>[.<re-save>]


def _order(name: str) -> tuple:
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else (-1, -1)


class TrainState(tf.Module):
    """Loop counters saved with every checkpoint.

    Attributes (tf.Variable, read them with ``int(...)``/``float(...)``):
        step: optimizer steps taken.
        epoch: epochs completed.
        data_stream: index of the current training data stream (its seed is cfg.seed + index).
        stream_steps: steps already taken from that stream (skipped on resume).
        best_metric: best evaluation metric so far (-inf before the first evaluation).
    """

    def __init__(self):
        super().__init__(name="train_state")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.data_stream = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_stream")
        self.stream_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="stream_steps")
        self.best_metric = tf.Variable(-math.inf, dtype=tf.float64, trainable=False,
                                       name="best_metric")

    def as_dict(self) -> dict:
        return {"step": int(self.step.numpy()), "epoch": int(self.epoch.numpy()),
                "data_stream": int(self.data_stream.numpy()),
                "stream_steps": int(self.stream_steps.numpy()),
                "best_metric": float(self.best_metric.numpy())}


def _remove_dir(path: str):
    """Removes a directory so that no half-deleted ``ckpt-*`` is ever visible."""
    trash = os.path.join(os.path.dirname(path), f".trash-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


class CheckpointStore:
    """A directory of atomically written checkpoints (protocol in the module docstring).

    Args:
        directory: str, where ``latest.json`` and ``ckpt-<step>/`` live.
        keep: int, number of checkpoints kept (the one ``latest.json`` names is always kept).
    """

    def __init__(self, directory: str, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be >= 1. Received: keep={keep}")
        self.directory = directory
        self.keep = int(keep)

    # -- reading -------------------------------------------------------------------------------
    def latest(self) -> dict | None:
        """The pointer's content (``checkpoint`` name, ``step``, ...) or None without one."""
        return read_pointer(self.directory)

    def latest_prefix(self) -> str | None:
        """The ``tf.train.Checkpoint`` prefix of the latest checkpoint, or None."""
        return latest_prefix(self.directory)

    def checkpoints(self) -> list[str]:
        """Names of the complete ``ckpt-*`` directories, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        names = [n for n in os.listdir(self.directory)
                 if _NAME.match(n) and os.path.isdir(os.path.join(self.directory, n))]
        return sorted(names, key=_order)

    # -- writing -------------------------------------------------------------------------------
    def clean(self):
        """Removes debris of interrupted saves: temporary/trash directories, temporary pointers
        and checkpoints newer than the pointer (written, but never made latest)."""
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(temporary_prefix(POINTER)):
                os.remove(path)
        info = self.latest()
        current = _order(info["checkpoint"]) if info else (-1, -1)
        for name in self.checkpoints():
            if _order(name) > current:
                _remove_dir(os.path.join(self.directory, name))

    def save(self, checkpoint: tf.train.Checkpoint, step: int, info: dict | None = None) -> str:
        """Writes ``checkpoint`` as ``ckpt-<step>`` and makes it the latest; returns its prefix."""
        os.makedirs(self.directory, exist_ok=True)
        name = self._free_name(int(step))
        tmp = os.path.join(self.directory, f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        checkpoint.write(os.path.join(tmp, PREFIX))
        record = {**(info or {}), "checkpoint": name, "step": int(step), "time": time.time()}
        with open(os.path.join(tmp, "info.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        _fsync_tree(tmp)
        final = os.path.join(self.directory, name)
        os.rename(tmp, final)
        fsync_path(self.directory)
        atomic_write(os.path.join(self.directory, POINTER),
                     json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
        self._retain(name)
        return os.path.join(final, PREFIX)

    def _free_name(self, step: int) -> str:
        """``ckpt-<step>``, or ``ckpt-<step>.<k>`` when that step was saved before (a re-save never
        touches a directory the pointer may name)."""
        name, k = f"ckpt-{step}", 0
        while os.path.exists(os.path.join(self.directory, name)):
            k += 1
            name = f"ckpt-{step}.{k}"
        return name

    def _retain(self, current: str):
        for name in self.checkpoints()[:-self.keep]:
            if name != current:
                _remove_dir(os.path.join(self.directory, name))
