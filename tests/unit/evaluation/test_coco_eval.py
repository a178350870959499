"""COCO keypoint evaluation: pycocotools is the oracle; results files; bad input; report table."""

import contextlib
import hashlib
import io
import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfpose.evaluation import EvaluationError, evaluate
from tfpose.evaluation.coco import (COCO_METRIC_NAMES, evaluate_coco, read_coco_results,
                                    write_coco_results)
from tfpose.evaluation.report import format_table


def _gt_results(ann_file, noise=0.0, seed=0):
    """Ground-truth persons (with labelled keypoints) as predictions, optionally perturbed."""
    rng = np.random.default_rng(seed)
    with open(ann_file) as f:
        data = json.load(f)
    out = []
    for ann in data["annotations"]:
        if ann.get("num_keypoints", 0) == 0:
            continue
        kpts = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        scale = np.sqrt(ann["bbox"][2] * ann["bbox"][3])
        kpts[:, :2] += rng.normal(0, noise * scale, kpts[:, :2].shape)
        kpts[:, 2] = 1.0
        out.append({"image_id": ann["image_id"], "category_id": 1,
                    "keypoints": kpts.reshape(-1).tolist(), "score": float(rng.uniform(0.5, 1))})
    return out


@pytest.fixture
def coco_file(data_dir):
    return str(data_dir / "coco_mini" / "test_coco.json")


@pytest.fixture
def crowdpose_file(data_dir):
    return str(data_dir / "crowdpose_mini" / "test_crowdpose.json")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_ground_truth_gives_ap_one(coco_file, crowdpose_file):
    m = evaluate_coco(coco_file, _gt_results(coco_file), "coco")
    assert list(m) == list(COCO_METRIC_NAMES)
    assert all(v == pytest.approx(1.0) for v in m.values()), m

    # CrowdPose lacks 'area': completed from the box in memory, the file is not touched
    before = _sha(crowdpose_file)
    m = evaluate_coco(crowdpose_file, _gt_results(crowdpose_file), "crowdpose")
    assert _sha(crowdpose_file) == before
    assert m["AP"] == m["AP50"] == m["AR"] == pytest.approx(1.0)
    assert m["APm"] == -1.0  # all CrowdPose-mini persons are large (> 96^2): no medium GT


def test_perturbed_matches_pycocotools_and_is_lower(coco_file):
    results = _gt_results(coco_file, noise=0.04, seed=3)
    ours = evaluate_coco(coco_file, results, "coco")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(coco_file)
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [ours[n] for n in COCO_METRIC_NAMES] == pytest.approx(list(ev.stats), abs=1e-12)
    assert 0.0 < ours["AP"] < 1.0 and ours["AP75"] < 1.0


def test_image_ids_subset(coco_file):
    results = _gt_results(coco_file, noise=0.04, seed=3)
    ours = evaluate_coco(coco_file, results, "coco", image_ids=[785, 40083])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(coco_file)
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "keypoints")
        ev.params.imgIds = [785, 40083]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [ours[n] for n in COCO_METRIC_NAMES] == pytest.approx(list(ev.stats), abs=1e-12)
    with pytest.raises(EvaluationError, match="image_id 12345 is not in .*test_coco.json"):
        evaluate_coco(coco_file, results, "coco", image_ids=[785, 12345])


def test_empty_results_give_zeros(coco_file, tmp_path):
    assert evaluate_coco(coco_file, [], "coco") == {n: 0.0 for n in COCO_METRIC_NAMES}
    empty = tmp_path / "empty.json"
    write_coco_results([], empty)
    assert read_coco_results(empty) == []
    assert evaluate_coco(coco_file, str(empty), "coco")["AP"] == 0.0


def test_results_file_round_trip_and_atomic_write(coco_file, tmp_path, monkeypatch):
    results = _gt_results(coco_file, noise=0.02, seed=5)
    # keypoints may be given as [K, 3] arrays; written flat
    poses = [dict(r, keypoints=np.asarray(r["keypoints"]).reshape(17, 3)) for r in results]
    path = tmp_path / "sub" / "results.json"
    assert write_coco_results(poses, path) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    back = read_coco_results(path)
    assert back == results
    assert evaluate_coco(coco_file, str(path), "coco") == evaluate_coco(coco_file, results)

    # a failing rewrite leaves the previous file whole and no temporary file behind
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_coco_results(results[:1], path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["results.json"]

    bad = [dict(results[0], score=float("nan"))]
    with pytest.raises(EvaluationError, match=r"\(image_id 785\) has a non-finite"):
        write_coco_results(bad, path)
    assert path.read_bytes() == before


def test_bad_input_is_one_line_error(coco_file, crowdpose_file, tmp_path):
    results = _gt_results(coco_file)
    not_json = tmp_path / "results.json"
    not_json.write_text("{not json")
    with pytest.raises(EvaluationError, match=r"results file .*results.json is not valid JSON"):
        evaluate_coco(coco_file, str(not_json), "coco")
    with pytest.raises(EvaluationError, match=r"\(image_id 40083\) has 42 keypoint values"):
        evaluate_coco(coco_file, [dict(results[1], keypoints=results[1]["keypoints"][:42])])
    with pytest.raises(EvaluationError, match=r"image_id 999 is not in .*test_coco.json"):
        evaluate_coco(coco_file, [dict(results[0], image_id=999)])
    with pytest.raises(EvaluationError, match=r"test_crowdpose.json: annotation \d+ has 42 "
                                              r"keypoint values, spec 'coco' needs 51"):
        evaluate_coco(crowdpose_file, [], "coco")
    with pytest.raises(EvaluationError, match="annotation file .*missing.json not found"):
        evaluate_coco(str(tmp_path / "missing.json"), [], "coco")
    with pytest.raises(EvaluationError) as info:
        evaluate_coco(coco_file, [dict(results[0], image_id=999)])
    assert "\n" not in str(info.value)


def test_verbose_flag(coco_file, capsys):
    evaluate_coco(coco_file, _gt_results(coco_file), "coco")
    assert capsys.readouterr().out == ""
    evaluate_coco(coco_file, _gt_results(coco_file), "coco", verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_dispatcher_and_table(coco_file):
    split = SimpleNamespace(annotations=coco_file, format="coco")
    results = _gt_results(coco_file, noise=0.04, seed=3)
    m = evaluate("coco", split, results, "coco")
    assert m == evaluate_coco(coco_file, results, "coco")
    with pytest.raises(EvaluationError, match="unknown metric 'pck'"):
        evaluate("pck", coco_file, results)
    with pytest.raises(EvaluationError, match="needs a mpii-format annotation file"):
        evaluate("mpii", split, results)

    table = format_table(m).splitlines()
    assert len(table) == 2 and len(table[0]) == len(table[1])
    assert table[0].split() == " | ".join(COCO_METRIC_NAMES).split()
    assert table[1].split(" | ")[0].strip() == f"{m['AP']:.3f}"
    # columns line up: every separator sits at the same offset in both rows
    assert [i for i, c in enumerate(table[0]) if c == "|"] == \
        [i for i, c in enumerate(table[1]) if c == "|"]
