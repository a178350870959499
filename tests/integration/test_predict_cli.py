"""python -m tfpose.predict on the real mini images with an untrained tiny dekr model, and its
file helpers (globs, output names, image ids, the letterbox round trip)."""

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

# The shipped W32 recipe shrunk to a tiny network (untrained weights are fine: files, JSON
# structure, error lines and exit codes are checked, not poses).
CONFIG = "configs/dekr/dekr_hrnet-w32_512_coco.yaml"
TINY = ["model.width=8", "model.regression_channels=16", "model.offset_branch_channels=4",
        "data.input_size=64", "eval.flip_test=true"]


def _run(repo_dir, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=repo_dir, capture_output=True,
                          text=True, timeout=600)


def _sets():
    return [a for s in TINY for a in ("--set", s)]


@pytest.fixture(scope="module")
def checkpoint(repo_dir, tmp_path_factory):
    """A run directory holding one checkpoint of the untrained tiny model."""
    import tensorflow as tf

    from tfpose.config import load_config
    from tfpose.registry import METHODS
    from tfpose.training.checkpoint import CheckpointStore

    cfg = load_config(str(repo_dir / CONFIG), TINY)
    model = METHODS[cfg.method].build_model(cfg)
    run = tmp_path_factory.mktemp("predict") / "run"
    CheckpointStore(str(run / "checkpoints"), 1).save(tf.train.Checkpoint(model=model), 1)
    return run


def test_predict_draws_and_writes_coco_results(repo_dir, data_dir, checkpoint, tmp_path):
    out = tmp_path / "out"
    one = data_dir / "coco_mini" / "000000000785.jpg"
    proc = _run(repo_dir, "tfpose.predict", "--config", CONFIG, *_sets(),
                "--checkpoint", str(checkpoint), "--out", str(out),
                "--image", str(one), "--image", str(data_dir / "crowdpose_mini" / "*.jpg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = [one] + sorted((data_dir / "crowdpose_mini").glob("*.jpg"))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(images) + 1
    for line, image in zip(lines, images):
        assert line.startswith(f"{image}: ") and line.endswith(f" -> {out / image.stem}.png")
        assert re.search(r": \d+ (people|person), \d+ with pose score >= 0.1 drawn -> ", line)
        drawn = cv2.imread(str(out / (image.stem + ".png")))
        assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape
    assert lines[-1] == f"predictions: {out / 'predictions.json'}"
    results = json.loads((out / "predictions.json").read_text())
    assert isinstance(results, list)
    for r in results:
        assert set(r) == {"image_id", "category_id", "keypoints", "score", "file_name"}
        assert r["file_name"] in {str(p) for p in images}
        assert r["image_id"] == int(os.path.splitext(os.path.basename(r["file_name"]))[0])
        assert len(r["keypoints"]) == 17 * 3 and r["category_id"] == 1
    assert sorted(os.listdir(out)) == sorted([p.stem + ".png" for p in images]
                                             + ["predictions.json"])  # no temporary files


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.jpg", "missing.jpg: image file cannot be opened"),
    (lambda d: (d / "notes.jpg").write_text("not an image") and d / "notes.jpg",
     "notes.jpg: not a JPEG or PNG"),
    (lambda d: d / "none" / "*.png", "none/*.png: no file matches"),
])
def test_bad_image_is_one_line_naming_it(repo_dir, data_dir, checkpoint, tmp_path, make, needle):
    bad = make(tmp_path)
    out = tmp_path / "out"
    proc = _run(repo_dir, "tfpose.predict", "--config", CONFIG, *_sets(),
                "--checkpoint", str(checkpoint), "--out", str(out),
                "--image", str(data_dir / "coco_mini" / "000000000785.jpg"), str(bad))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, last
    assert "Traceback" not in proc.stderr and not out.exists()


def test_missing_checkpoint_flag_is_one_line(repo_dir, data_dir):
    proc = _run(repo_dir, "tfpose.predict", "--config", CONFIG, "--image",
                str(data_dir / "coco_mini" / "000000000785.jpg"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: give --checkpoint")


# -- helpers ----------------------------------------------------------------------------------------

def test_expand_images_globs_and_dedupes(tmp_path):
    from tfpose.data.records import DatasetError
    from tfpose.predict import expand_images

    for name in ("b.jpg", "a.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"")
    got = expand_images([str(tmp_path / "*.jpg"), str(tmp_path / "a.jpg"), "x.png"])
    assert got == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "x.png"]
    with pytest.raises(DatasetError, match=r"\*\.gif: no file matches"):
        expand_images([str(tmp_path / "*.gif")])
    with pytest.raises(DatasetError, match="at least one"):
        expand_images([])


def test_output_names_and_image_ids():
    from tfpose.predict import image_ids, output_names

    paths = ["a/1.jpg", "b/1.jpg", "c/predictions.png", "d/7.png"]
    assert output_names(paths, "png") == ["1.png", "1_1.png", "predictions.png", "7.png"]
    assert output_names(["x/predictions.json"], "json") == ["predictions_1.json"]
    assert output_names(["out/a.png", "b.png"], "png", "out") == ["a_1.png", "b.png"]
    assert image_ids(["x/000000000785.jpg", "y/12.png"]) == [785, 12]
    assert image_ids(paths) == [0, 1, 2, 3]  # a repeated number: positions
    assert image_ids(["a.jpg", "5.jpg"]) == [0, 1]


def test_letterbox_maps_back_to_original_pixels(data_dir):
    from tfpose.evaluate import to_original_pixels
    from tfpose.predict import letterbox, read_image

    image = read_image(str(data_dir / "coco_mini" / "000000000785.jpg"))
    h, w = image.shape[:2]
    warped, transform = letterbox(image, 64)
    assert warped.shape == (64, 64, 3) and warped.dtype == np.float32
    # The input's centre is the image's centre; the input corners of the long side map to the
    # image's corners (the letterbox fits the longer side).
    pts = np.array([[[32.0, 32.0, 1.0], [0.0, 32.0, 1.0], [64.0, 32.0, 1.0]]], np.float32)
    back = to_original_pixels(pts, transform)[0]
    np.testing.assert_allclose(back[0, :2], [w / 2, h / 2], atol=1e-3)
    if w >= h:
        np.testing.assert_allclose(back[1:, 0], [0.0, w], atol=1e-3)


def test_read_image_errors_name_the_file(tmp_path):
    from tfpose.data.records import DatasetError
    from tfpose.predict import read_image

    cut = tmp_path / "cut.png"
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    cut.write_bytes(buf.tobytes()[:-20])
    with pytest.raises(DatasetError, match="cut.png"):
        read_image(str(cut))
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((5, 7), 9, np.uint8))
    rgb = read_image(str(gray))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and (rgb == 9).all()
