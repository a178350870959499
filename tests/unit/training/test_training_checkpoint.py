"""Crash-safe checkpoint store: every interrupted save leaves a loadable latest."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.training import checkpoint as ckpt_lib
from tfpose.training.checkpoint import (CheckpointError, CheckpointStore, resolve_prefix,
                                        restore, restore_model)


class Crash(Exception):
    """Stands for the process dying at that point."""


def _model(units=3):
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(units)(inputs))


def _saved(store, model, step):
    model.layers[-1].kernel.assign(np.full((2, 3), float(step), np.float32))
    return store.save(tf.train.Checkpoint(model=model), step, {"epoch": step})


def _loaded_value(prefix):
    model = _model()
    restore(tf.train.Checkpoint(model=model), prefix)
    return float(model.layers[-1].kernel.numpy()[0, 0])


def test_save_latest_retention_and_resave(tmp_path):
    store, model = CheckpointStore(str(tmp_path), keep=2), _model()
    assert store.latest() is None and store.latest_prefix() is None
    for step in (1, 2, 3):
        _saved(store, model, step)
    assert store.checkpoints() == ["ckpt-2", "ckpt-3"]
    assert store.latest()["step"] == 3 and store.latest()["epoch"] == 3
    assert _loaded_value(store.latest_prefix()) == 3
    _saved(store, model, 3)  # a re-save of the latest step never touches the latest directory
    assert store.latest()["checkpoint"] == "ckpt-3.1"
    assert store.checkpoints() == ["ckpt-3", "ckpt-3.1"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize("target", [
    "_fsync_tree",  # checkpoint files written, not yet durable
    "os.rename",  # complete temporary directory, not yet renamed
    "atomic_write",  # ckpt-N renamed, pointer not yet written
    "os.replace",  # new pointer in its temporary file, not yet swapped in
    "_remove_dir",  # new pointer in place, retention interrupted
])
def test_interrupted_save_leaves_a_loadable_latest(tmp_path, monkeypatch, target):
    store, model = CheckpointStore(str(tmp_path), keep=1), _model()
    _saved(store, model, 1)
    module, name = (os, target[3:]) if target.startswith("os.") else (ckpt_lib, target)
    original = getattr(module, name)

    def crash(*args, **kwargs):
        raise Crash(target)

    monkeypatch.setattr(module, name, crash)
    with pytest.raises(Crash):
        _saved(store, model, 2)
    monkeypatch.setattr(module, name, original)

    again = CheckpointStore(str(tmp_path), keep=1)
    expected = 2 if target == "_remove_dir" else 1
    assert again.latest()["step"] == expected
    assert _loaded_value(again.latest_prefix()) == expected
    again.clean()
    left = sorted(os.listdir(tmp_path))
    assert not [n for n in left if n.startswith(".") or ".tmp-" in n], left
    _saved(again, model, 3)
    assert again.checkpoints() == ["ckpt-3"] and _loaded_value(again.latest_prefix()) == 3


def test_resolve_prefix_and_restore_model(tmp_path):
    run = tmp_path / "run"
    store, model = CheckpointStore(str(run / "checkpoints"), keep=3), _model()
    prefix = _saved(store, model, 5)
    assert resolve_prefix(str(run)) == prefix
    assert resolve_prefix(str(run / "checkpoints")) == prefix
    assert resolve_prefix(str(run / "checkpoints" / "ckpt-5")) == prefix
    assert resolve_prefix(prefix) == prefix
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_prefix(str(tmp_path / "missing"))
    fresh = _model()
    restore_model(fresh, str(run))
    assert float(fresh.layers[-1].kernel.numpy()[0, 0]) == 5


def test_mismatched_model_and_broken_pointer_are_errors(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=3)
    prefix = _saved(store, _model(), 1)
    with pytest.raises(CheckpointError, match="does not match"):
        restore(tf.train.Checkpoint(model=_model(units=4)), prefix)
    with open(tmp_path / "latest.json", "w") as f:
        json.dump({"checkpoint": "ckpt-9", "step": 9}, f)
    with pytest.raises(CheckpointError, match="ckpt-9, which is missing"):
        store.latest_prefix()
