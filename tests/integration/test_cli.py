"""The entry points as a user runs them: last line JSON, bad input in one line with exit 2."""

import json
import subprocess
import sys

import pytest


def _run(repo_dir, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=repo_dir, capture_output=True,
                          text=True, timeout=600)


def test_oracle_evaluation_prints_table_then_json(repo_dir, tmp_path):
    results = tmp_path / "results.json"
    proc = _run(repo_dir, "tfpose.evaluate", "--config", "configs/oracle/ae_crowdpose.yaml",
                "--oracle", "--results", str(results))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["AP"] >= 0.99 and "AP_medium" in metrics
    assert "AP_hard" in lines[-3]  # the table header
    written = json.loads(results.read_text())
    assert written and all(len(r["keypoints"]) == 14 * 3 for r in written)


@pytest.mark.parametrize("args, needle", [
    (["--set", "data.input_sise=256"], "unknown key 'data.input_sise'"),
    (["--set", "codec.sigma=.nan"], "codec.sigma must be finite"),
    (["--set", "data.val.annotations=/nonexistent/ann.json"], "/nonexistent/ann.json"),
])
def test_bad_input_is_one_line_with_exit_2(repo_dir, args, needle):
    proc = _run(repo_dir, "tfpose.evaluate", "--config", "configs/oracle/ae_coco.yaml",
                "--oracle", *args)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last
    assert "Traceback" not in proc.stderr


def test_pipeline_benchmark_prints_one_json_line(repo_dir):
    proc = _run(repo_dir, "tfpose.benchmark", "pipeline", "--config",
                "configs/oracle/ae_coco.yaml", "--split", "val", "--batches", "2",
                "--set", "data.batch_size=2", "--set", "data.input_size=256", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "pipeline" and result["images"] == 4
    assert result["images_per_s"] > 0 and result["input_size"] == 256


def test_missing_checkpoint_is_one_line(repo_dir, tmp_path):
    proc = _run(repo_dir, "tfpose.evaluate", "--config", "configs/oracle/ae_coco.yaml",
                "--checkpoint", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_model_benchmark_prints_one_json_line(repo_dir):
    proc = _run(repo_dir, "tfpose.benchmark", "model", "--config",
                "configs/dekr/dekr_hrnet-w32_512_coco.yaml", "--runs", "2", "--warmup", "1",
                "--set", "model.width=8", "--set", "model.regression_channels=16",
                "--set", "data.input_size=64",
                "--set", "data.val.annotations=../shared/data/coco_mini/test_coco.json",
                "--set", "data.val.images=../shared/data/coco_mini", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "model" and result["input_size"] == 64
    assert result["params"] > 0 and result["gflops"] > 0
    assert result["gflops"] == pytest.approx(2 * result["gmacs"], abs=2e-3)
    assert 0 < result["forward_ms_min"] <= result["forward_ms_median"]
    assert 0 < result["decode_ms_min"] <= result["decode_ms_median"]
    assert result["decode_input"].startswith("val image ")


def test_model_benchmark_needs_a_method(repo_dir):
    proc = _run(repo_dir, "tfpose.benchmark", "model", "--config", "configs/oracle/ae_coco.yaml")
    assert proc.returncode == 2
    assert "needs a 'method'" in proc.stderr.strip().splitlines()[-1]


def test_graph_flops_counts_multiply_adds_twice():
    import keras
    import tensorflow as tf

    from tfpose.benchmark import graph_flops

    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)  # element-wise: not counted
    x = keras.layers.Conv2DTranspose(4, 4, strides=2, padding="same")(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    fn = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec([1, 16, 16, 3], tf.float32))
    macs = (16 * 16 * 8 * 3 * 9  # conv: output elements x 3x3x3
            + 16 * 16 * 8 * 9  # depthwise 3x3
            + 16 * 16 * 8 * 4 * 16  # transposed conv: input elements x 4x4x4
            + 32 * 32 * 5 * 4)  # dense on [32, 32, 4]
    assert graph_flops(fn) == 2 * macs


@pytest.mark.parametrize("args, needle", [
    (["--images", "0", "--checkpoint", "runs/x"], "--images must be >= 1 (got 0)"),
    ([], "benchmark parity needs --checkpoint"),
])
def test_parity_benchmark_bad_flags_are_one_line(repo_dir, args, needle):
    proc = _run(repo_dir, "tfpose.benchmark", "parity", "--config", "configs/quickstart.yaml",
                *args)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last
    assert "Traceback" not in proc.stderr
