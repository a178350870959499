"""MultiWorkerMirroredStrategy: two local worker processes (127.0.0.1, free ports, TF_CONFIG)
train the toy method a few steps and end with identical weights; the chief alone checkpoints
and evaluates while the other worker waits in the next step's collectives."""

import json
import os
import socket
import subprocess
import sys

import numpy as np


def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_end_with_identical_weights(repo_dir, tmp_path):
    script = repo_dir / "tests" / "unit" / "training" / "toy_method.py"
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    out = tmp_path / "run"
    procs, logs = [], []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.txt", "w")
        logs.append(log)
        # steps_per_epoch 0: the workers agree on the pass length with a collective.
        procs.append(subprocess.Popen(
            [sys.executable, str(script), "--out", str(out), "--strategy", "auto",
             "--epochs", "2", "--checkpoint-every", "2", "--eval-every", "1",
             "--weights", str(tmp_path / f"weights{index}.npz")],
            stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"worker{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(outputs)
    # 12 images sharded over 2 workers, global batch 4: 3 steps per pass, 2 epochs.
    assert all("done step 6 reason done" in o for o in outputs), "\n\n".join(outputs)
    a, b = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert len(a.files) == len(b.files) > 0
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 6  # written by the chief (worker 0) only
    best = json.loads((out / "best" / "latest.json").read_text())
    assert best["step"] in (3, 6) and "AP" in best["metrics"]  # the chief evaluated alone
    assert "epoch 2/2 step 6/6" in outputs[0] and "epoch" not in outputs[1]
