"""MirroredStrategy on two logical CPUs trains like one device: the per-replica loss is divided
by the global batch, gradients are summed over replicas once and clipped by the global norm."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import toy_method
from tfpose.training import Trainer


# SGD: unlike Adam, its update scales with the gradient, so a wrong loss scale or a second
# all-reduce shows. clip_norm 1.0 is below the toy's gradient norms: clipping is active.
@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_two_replicas_match_one_device(toy, tmp_path, clip_norm):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, toy_method.__file__, "--out", str(tmp_path / "mirrored"),
         "--strategy", "mirrored", "--cpus", "2", "--no-batch-norm", "--epochs", "2",
         "--optimizer", "sgd", "--clip-norm", str(clip_norm),
         "--weights", str(tmp_path / "mirrored.npz")],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done step 6 reason done" in proc.stdout

    cfg = toy_method.make_config(str(tmp_path / "one"), epochs=2, clip_norm=clip_norm,
                                 optimizer="sgd")
    kwargs = toy(cfg, method=toy_method.make_method(batch_norm=False))
    result = Trainer(cfg, **kwargs, stream=io.StringIO()).fit()
    assert result.step == 6
    mirrored = np.load(tmp_path / "mirrored.npz")
    weights = toy_method.weights(result.model)
    assert len(mirrored.files) == len(weights)
    for i, value in enumerate(weights):
        np.testing.assert_allclose(mirrored[f"arr_{i}"], value, rtol=1e-4, atol=1e-6)
