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
