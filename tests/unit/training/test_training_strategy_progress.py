"""Strategy selection, the global batch split, the progress line and the CLI's one-line errors."""

import io
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tfpose.config import ConfigError
from tfpose.training.progress import Progress, format_duration
from tfpose.training.strategy import is_chief, make_strategy, per_replica_batch


def test_auto_is_one_device_without_tpu_tf_config_or_gpus(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    strategy = make_strategy("auto")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy) and is_chief(strategy)
    assert per_replica_batch(8, strategy) == 8


def test_unavailable_strategies_are_config_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multi_worker")
    with pytest.raises(ConfigError, match="no TPU"):
        make_strategy("tpu")
    with pytest.raises(ConfigError, match="not one of"):
        make_strategy("horovod")


def test_global_batch_must_divide_over_replicas():
    class TwoReplicas:
        num_replicas_in_sync = 2

    assert per_replica_batch(8, TwoReplicas()) == 4
    with pytest.raises(ConfigError, match="batch_size = 7 .*global.* 2 replicas"):
        per_replica_batch(7, TwoReplicas())


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_refreshes_one_line_on_a_tty_and_logs_lines_elsewhere():
    tty = _Terminal()
    progress = Progress(total_steps=10, steps_per_epoch=5, epochs=2, log_every=5, stream=tty)
    progress.start(1)
    for step in range(1, 4):
        progress.update(step, {"heatmap": 0.5, "tag": 0.25}, 1e-3, images_per_step=8)
    progress.message("eval: AP 0.5")
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 2
    assert "heatmap 0.5 tag 0.25" in text and "img/s" in text and "ETA" in text

    log = io.StringIO()
    progress = Progress(10, 5, 2, log_every=5, stream=log)
    for step in range(1, 11):
        progress.update(step, {"loss": 1.0}, 1e-3, 8)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2 step 5/10")
    assert lines[1].startswith("epoch 2/2 step 10/10")
    assert format_duration(3725) == "1:02:05"


def test_cli_reports_bad_input_in_one_line(repo_dir):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "tfpose.train", "--config",
         str(repo_dir / "configs" / "oracle" / "ae_coco.yaml"), "--stage", "scorer"],
        capture_output=True, text=True, env=env, cwd=repo_dir, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "'method' is empty" in last
