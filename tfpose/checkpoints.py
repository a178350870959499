"""Reading training checkpoints: the pointer, prefix resolution and restoring a built model.

Evaluation, prediction and export restore checkpoints through this module, so none of them
imports the training engine (DESIGN.md section 2: export never imports training code). The
writer, with its crash-safe protocol, is tfpose.training.checkpoint.CheckpointStore. A checkpoint
directory (a *store*: ``<out_dir>/checkpoints`` or ``<out_dir>/best``) holds::

    latest.json          {"checkpoint": "ckpt-1200", "step": 1200, ...}: the ONLY source of truth
    ckpt-1200/ckpt.index, ckpt-1200/ckpt.data-*, ckpt-1200/info.json
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

POINTER = "latest.json"
PREFIX = "ckpt"  # file prefix inside a checkpoint directory


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or does not match the model; names the path."""


def read_pointer(directory: str) -> dict | None:
    """The pointer's content (``checkpoint`` name, ``step``, ...) of a store, or None without
    one."""
    path = os.path.join(directory, POINTER)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint pointer ({e})") from None


def latest_prefix(directory: str) -> str | None:
    """The ``tf.train.Checkpoint`` prefix the pointer of a store names, or None without one."""
    info = read_pointer(directory)
    if info is None:
        return None
    prefix = os.path.join(directory, info["checkpoint"], PREFIX)
    if not tf.io.gfile.exists(prefix + ".index"):
        raise CheckpointError(f"{os.path.join(directory, POINTER)} names "
                              f"{info['checkpoint']}, which is missing")
    return prefix


def resolve_prefix(path: str) -> str:
    """The checkpoint prefix for a user-given path.

    Accepts a run's ``out_dir`` (its latest checkpoint), a store directory (``checkpoints`` or
    ``best``), a ``ckpt-<step>`` directory or a prefix; raises CheckpointError otherwise.
    """
    for store_dir in (os.path.join(path, "checkpoints"), path):
        if os.path.isfile(os.path.join(store_dir, POINTER)):
            return latest_prefix(store_dir)
    for prefix in (os.path.join(path, PREFIX), path):
        if tf.io.gfile.exists(prefix + ".index"):
            return prefix
    raise CheckpointError(f"no checkpoint at {path} (expected a run directory, a checkpoint "
                          f"directory with {POINTER}, or a ckpt-<step> directory)")


def restore(checkpoint: tf.train.Checkpoint, prefix: str, partial: bool = False):
    """Reads ``prefix`` into ``checkpoint``; every object must find its values.

    Args:
        checkpoint: tf.train.Checkpoint whose objects (model, optimizer...) are already built.
        prefix: str, from :func:`resolve_prefix` or :func:`latest_prefix`.
        partial: bool, allow the file to hold more objects than ``checkpoint`` (model only).
    """
    try:
        status = checkpoint.read(prefix)
        status.assert_existing_objects_matched()
        if partial:
            status.expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{prefix}: does not match this model/optimizer ({first})") from None
    return status


def restore_model(model, path: str) -> str:
    """Loads the model weights of a training checkpoint (:func:`resolve_prefix` of `path`) into
    a built model; returns the prefix read."""
    prefix = resolve_prefix(path)
    restore(tf.train.Checkpoint(model=model), prefix, partial=True)
    return prefix
