"""CrowdPose evaluation: crowdIndex levels, toolkit OKS scale (0.53 * box area), AP of GT."""

import json

import numpy as np
import pytest

from tfpose.evaluation import EvaluationError, evaluate
from tfpose.evaluation.crowdpose import (BOX_AREA_FACTOR, CROWD_INDEX_SPLIT,
                                         CROWDPOSE_METRIC_NAMES, crowd_levels,
                                         evaluate_crowdpose)
from tfpose.evaluation.oks import oks
from tfpose.keypoints import get_spec

SPEC = get_spec("crowdpose")


@pytest.fixture
def ann_file(data_dir):
    return str(data_dir / "crowdpose_mini" / "test_crowdpose.json")


def _load(path):
    with open(path) as f:
        return json.load(f)


def _gt_results(data, shift=None):
    """Labelled GT persons as predictions; `shift` maps annotation id -> (dx, dy)."""
    out = []
    for ann in data["annotations"]:
        if ann["num_keypoints"] == 0:
            continue
        kpts = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kpts[:, :2] += (shift or {}).get(ann["id"], (0.0, 0.0))
        kpts[:, 2] = 1.0
        out.append({"image_id": ann["image_id"], "category_id": 1,
                    "keypoints": kpts.reshape(-1).tolist(), "score": 0.9})
    return out


def test_ground_truth_ap_one_and_levels_of_the_mini_set(ann_file):
    data = _load(ann_file)
    # crowdpose_mini: crowdIndex 0.33 and 0.39 -> both images are "medium"
    assert sorted(img["crowdIndex"] for img in data["images"]) == [0.33, 0.39]
    assert crowd_levels(data["images"]) == {"easy": [], "medium": [103319, 106848], "hard": []}
    m = evaluate_crowdpose(ann_file, _gt_results(data))
    assert list(m) == list(CROWDPOSE_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_medium"):
        assert m[name] == pytest.approx(1.0), name
    assert m["AP_easy"] == m["AP_hard"] == -1.0  # empty levels, as the toolkit reports them
    assert evaluate("crowdpose", ann_file, _gt_results(data), "crowdpose") == m


def test_level_boundaries():
    values = [0.05, 0.1, 0.19, 0.2, 0.5, 0.79, 0.8, 0.95]
    images = [{"id": i, "crowdIndex": v} for i, v in enumerate(values)]
    # the toolkit's summarize: easy < 0.2 <= medium < 0.8 <= hard
    assert CROWD_INDEX_SPLIT == (0.2, 0.8)
    assert crowd_levels(images) == {"easy": [0, 1, 2], "medium": [3, 4, 5], "hard": [6, 7]}
    assert crowd_levels(images, (0.1, 0.8)) == {"easy": [0], "medium": [1, 2, 3, 4, 5],
                                                "hard": [6, 7]}
    with pytest.raises(EvaluationError, match="image 3 has no 'crowdIndex'"):
        crowd_levels(images + [{"id": 3}])


def test_levels_split_the_images(ann_file, tmp_path):
    data = _load(ann_file)
    for img in data["images"]:  # 106848 -> easy, 103319 -> hard
        img["crowdIndex"] = 0.05 if img["id"] == 106848 else 0.9
    path = tmp_path / "crowdpose_levels.json"
    path.write_text(json.dumps(data))
    # shift the persons of the hard image only
    results = _gt_results(data, shift={127068: (6.0, 4.0), 129014: (-5.0, 7.0)})
    m = evaluate_crowdpose(path, results)
    assert m["AP_easy"] == pytest.approx(1.0)
    assert m["AP_medium"] == -1.0
    assert 0.0 < m["AP_hard"] < 1.0
    hard_only = evaluate_crowdpose(path, results, image_ids=[103319])
    assert m["AP_hard"] == pytest.approx(hard_only["AP"])
    assert m["AP_hard"] < m["AP"] < 1.0
    # the levels follow the image_ids subset
    sub = evaluate_crowdpose(path, results, image_ids=[106848])
    assert sub["AP_easy"] == pytest.approx(1.0) and sub["AP_hard"] == -1.0


def test_oks_scale_is_053_box_area(ann_file):
    """One shifted prediction among two labelled persons: AP = passed thresholds/10 * 51/101."""
    data = _load(ann_file)
    anns = [a for a in data["annotations"] if a["image_id"] == 106848]
    target = next(a for a in anns if a["id"] == 123803)
    results = [r for r in _gt_results(data, shift={123803: (25.0, 0.0)})
               if r["image_id"] == 106848 and r["keypoints"][3] == target["keypoints"][3] + 25.0]
    assert len(results) == 1
    pred = np.asarray(results[0]["keypoints"]).reshape(1, 14, 3)
    labelled = [a for a in anns if a["num_keypoints"] > 0]
    gt = np.asarray([a["keypoints"] for a in labelled], np.float64).reshape(-1, 14, 3)
    box_area = np.asarray([a["bbox"][2] * a["bbox"][3] for a in labelled])
    thresholds = np.linspace(0.5, 0.95, 10)

    oks_053 = oks(pred, gt, BOX_AREA_FACTOR * box_area, SPEC.sigmas)[0]
    oks_full = oks(pred, gt, box_area, SPEC.sigmas)[0]
    on = [a["id"] for a in labelled].index(123803)
    assert np.delete(oks_053, on).max() < 0.5  # no match with the other person
    passed = int(np.sum(oks_053[on] >= thresholds))
    assert passed != int(np.sum(oks_full[on] >= thresholds))  # the test tells the scales apart
    # pycocotools' 101-point interpolation: precision 1 up to recall 1/2 (51 points), 0 after
    m = evaluate_crowdpose(ann_file, results, image_ids=[106848])
    assert m["AP"] == pytest.approx(passed / 10 * 51 / 101, abs=1e-12)
    assert m["AR"] == pytest.approx(passed / 10 * 0.5, abs=1e-12)


def test_empty_and_bad_input(ann_file, tmp_path):
    m = evaluate_crowdpose(ann_file, [])
    assert m["AP"] == m["AR"] == m["AP_medium"] == 0.0
    assert m["AP_easy"] == m["AP_hard"] == -1.0
    with pytest.raises(EvaluationError, match=r"spec 'coco' needs 51"):
        evaluate_crowdpose(ann_file, [], "coco")
    data = _load(ann_file)
    del data["images"][0]["crowdIndex"]
    path = tmp_path / "no_index.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EvaluationError, match=r"no_index.json: image 106848 has no 'crowdIndex'"):
        evaluate_crowdpose(path, [])
