"""kill -9 at random moments of training: the latest checkpoint always loads, resume finishes
with the weights of an uninterrupted run."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import toy_method
from tfpose.training import CheckpointStore, Trainer

SCRIPT = Path(toy_method.__file__)
EPOCHS = 25  # x 3 steps, a checkpoint at every step
KILLS = 3


def _start(out: Path, log, *extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--resume",
               "--epochs", str(EPOCHS), "--checkpoint-every", "1", *extra]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _latest_step(store):
    info = store.latest()
    return info["step"] if info else -1


def _assert_loadable(store):
    reader = tf.train.load_checkpoint(store.latest_prefix())
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def test_kill_minus_9_never_breaks_the_latest_checkpoint(toy, tmp_path):
    out, rng = tmp_path / "run", np.random.default_rng()
    store = CheckpointStore(str(out / "checkpoints"), 3)
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        for _ in range(KILLS):
            before = _latest_step(store)
            proc = _start(out, log)
            while _latest_step(store) <= before and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            proc.wait()
            assert proc.returncode == -9, log_path.read_text()
            _assert_loadable(store)
        proc = _start(out, log, "--weights", str(tmp_path / "resumed.npz"))
        assert proc.wait(timeout=300) == 0, log_path.read_text()
    assert f"done step {EPOCHS * 3} reason done" in log_path.read_text()

    cfg = toy_method.make_config(str(tmp_path / "straight"), epochs=EPOCHS,
                                 checkpoint_every=EPOCHS * 3)
    straight = Trainer(cfg, **toy(cfg), stream=io.StringIO()).fit()
    resumed = np.load(tmp_path / "resumed.npz")
    for i, value in enumerate(toy_method.weights(straight.model)):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], value)
