"""MPII PCKh and multi-person mAP against hand-computed values."""

import json
import logging

import cv2
import numpy as np
import pytest

from tfpose.config import SplitConfig
from tfpose.data.mpii import read_mpii
from tfpose.data.records import DatasetError
from tfpose.evaluation import EvaluationError, evaluate
from tfpose.evaluation.mpii import (assign_predictions, evaluate_mpii, evaluate_mpii_map,
                                    evaluate_pckh, multi_person_ap, pckh_per_joint, voc_ap)
from tfpose.keypoints import get_spec, spec_from_dict

SPEC = get_spec("mpii")
J = {n: i for i, n in enumerate(SPEC.names)}
HEAD_SIZES = np.array([40.0, 20.0, 30.0, 50.0, 25.0])  # chosen per person (mpii_mini has no boxes)


@pytest.fixture
def mpii(data_dir):
    path = data_dir / "mpii_mini" / "test_mpii.json"
    with open(path) as f:
        entries = json.load(f)
    gt = np.stack([np.concatenate([np.asarray(e["joints"], np.float64),
                                   np.asarray(e["joints_vis"], np.float64)[:, None]], 1)
                   for e in entries])
    return str(path), entries, gt  # gt [5, 16, 3]


def test_pckh_ground_truth_and_hand_computed_perturbation(mpii):
    _, _, gt = mpii
    # persons 2 and 3 have both ankles unannotated
    assert gt[:, [J["right_ankle"], J["left_ankle"]], 2].sum() == 6
    perfect = evaluate_pckh(gt[..., :2], gt, HEAD_SIZES)
    assert perfect == {"Head": 1.0, "Shoulder": 1.0, "Elbow": 1.0, "Wrist": 1.0, "Hip": 1.0,
                       "Knee": 1.0, "Ankle": 1.0, "Mean": 1.0}

    pred = gt[..., :2].copy()
    pred[0] += [0.45 * HEAD_SIZES[0], 0.0]                       # all within 0.5 h: correct
    pred[1, J["right_wrist"]] += [0.6 * HEAD_SIZES[1], 0.0]      # wrong
    pred[1, J["left_wrist"]] += [0.25 * HEAD_SIZES[1], 0.0]      # correct
    pred[2, J["head_top"]] += [0.4 * HEAD_SIZES[2]] * 2          # 0.566 h: wrong
    pred[2, J["right_ankle"]] += [500.0, 500.0]                  # not annotated: ignored
    pred[3, J["pelvis"]] += [10 * HEAD_SIZES[3], 0.0]            # wrong, not in the mean
    pred[4, J["left_knee"]] = np.nan                             # missing: wrong
    per_joint, counts = pckh_per_joint(pred, gt, HEAD_SIZES)
    expected = np.ones(16)
    for name in ("right_wrist", "head_top", "pelvis", "left_knee"):
        expected[J[name]] = 4 / 5
    np.testing.assert_allclose(per_joint, expected)
    assert counts[J["right_ankle"]] == counts[J["left_ankle"]] == 3 and counts.sum() == 76
    table = evaluate_pckh(pred, gt, HEAD_SIZES)
    assert table == pytest.approx({"Head": 0.8, "Shoulder": 1.0, "Elbow": 1.0, "Wrist": 0.9,
                                   "Hip": 1.0, "Knee": 0.9, "Ankle": 1.0,
                                   # 14 joints x 5 persons - 4 unannotated ankles = 66; 3 wrong
                                   "Mean": 63 / 66})
    # PCKh@0.3: the 0.45 h shifts of person 0 fail too (all 14 scored joints of that person)
    assert evaluate_pckh(pred, gt, HEAD_SIZES, threshold=0.3)["Mean"] == pytest.approx(49 / 66)


def test_pckh_threshold_is_inclusive():
    gt = np.array([[[0.0, 0.0, 1.0], [10.0, 0.0, 1.0]]])
    pred = np.array([[[20.0, 0.0], [10.0, 20.0001]]])  # exactly 0.5 * 40, then just beyond
    pckh, counts = pckh_per_joint(pred, gt, [40.0])
    np.testing.assert_array_equal(pckh, [1.0, 0.0])
    np.testing.assert_array_equal(counts, [1, 1])


def test_voc_ap():
    assert voc_ap(np.array([]), np.array([])) == 0.0
    # precision 0, 1/2, 2/3, 3/4 at recall 0, 1/3, 2/3, 1 -> envelope 3/4 everywhere
    assert voc_ap(np.array([0, 1, 2, 3]) / 3, np.array([0, 1 / 2, 2 / 3, 3 / 4])) == \
        pytest.approx(0.75)


def test_multi_person_hand_made_two_images():
    # image 1: persons A (head 10) and B (head 10); image 2: person C (head 20); two joints
    gt = [np.array([[[10, 10, 1], [10, 20, 1]], [[100, 100, 1], [100, 110, 1]]], float),
          np.array([[[50, 50, 1], [50, 60, 1]]], float)]
    heads = [np.array([10.0, 10.0]), np.array([20.0])]
    pred = [np.array([[[11, 10, .90], [10, 21, .8]],     # p1: both joints of A
                      [[100, 100, .70], [130, 130, .6]],  # p2: joint 0 of B only
                      [[10, 10, .95], [40, 40, .5]]],     # p3: half of A, loses A to p1
                     float),
            np.array([[[55, 50, .85], [50, 75, .4]]], float)]  # p4: joint 0 of C (0.25 h)
    match, pred_for_gt = assign_predictions(gt[0], heads[0], pred[0])
    np.testing.assert_array_equal(pred_for_gt, [0, 1])
    assert match[2, 0].tolist() == [True, False]
    # joint 0: scores .95 FP, .90 TP, .85 TP, .70 TP of 3 positives -> AP 3/4
    # joint 1: scores .8 TP, .6 FP, .5 FP, .4 FP of 3 positives -> AP 1/3
    ap = multi_person_ap(gt, heads, pred)
    np.testing.assert_allclose(ap, [0.75, 1 / 3])
    spec = spec_from_dict({"names": ["left_wrist", "right_wrist"], "sigmas": [0.062, 0.062]})
    table = evaluate_mpii_map(gt, heads, pred, spec)
    assert table == pytest.approx({"Wrist": (0.75 + 1 / 3) / 2, "mAP": (0.75 + 1 / 3) / 2})


def _per_image(entries, gt):
    """mpii_mini: one person per image; the image ids of the file's numeric names."""
    ids = [int(e["image"].split(".")[0]) for e in entries]
    return ids, [gt[i:i + 1] for i in range(len(gt))], [HEAD_SIZES[i:i + 1] for i in range(5)]


def test_multi_person_map_on_mpii_mini(mpii):
    _, entries, gt = mpii
    _, gts, heads = _per_image(entries, gt)
    preds = [g.copy() for g in gts]
    for i, p in enumerate(preds):
        p[..., 2] = 0.9 - 0.1 * i  # joint scores: person 0 highest
    # a predicted joint that the ground truth does not annotate is a false positive: the
    # ankles of persons 2 and 3 (scores .7, .6) rank before person 4's (.5), 3 positives:
    # precision 1, 1, 2/3, 1/2, 3/5 at recall 1/3, 2/3, 2/3, 2/3, 1 -> AP 2/3 + 0.6 / 3
    ap = multi_person_ap(gts, heads, preds)
    assert ap[J["right_ankle"]] == ap[J["left_ankle"]] == pytest.approx(2 / 3 + 0.2)
    for p, g in zip(preds, gts):  # ground truth as predictions: only the annotated joints
        p[g[..., 2] == 0] = np.nan
    table = evaluate_mpii_map(gts, heads, preds)
    assert table == {"Head": 1.0, "Shoulder": 1.0, "Elbow": 1.0, "Wrist": 1.0, "Hip": 1.0,
                     "Knee": 1.0, "Ankle": 1.0, "mAP": 1.0}

    missing = [p.copy() for p in preds]
    for i in (1, 3):  # left wrist not predicted for two of five persons: recall 3/5
        missing[i][0, J["left_wrist"]] = np.nan
    ap = multi_person_ap(gts, heads, missing)
    assert ap[J["left_wrist"]] == pytest.approx(0.6)
    assert np.delete(ap, J["left_wrist"]) == pytest.approx(np.ones(15))

    shifted = [p.copy() for p in preds]
    shifted[0][0, J["right_elbow"], :2] += 100.0  # the highest-scored elbow becomes a FP
    shifted[4][0, J["left_elbow"], :2] += 100.0   # the lowest-scored one too
    ap = multi_person_ap(gts, heads, shifted)
    # FP first: precision 0, 1/2, 2/3, 3/4, 4/5 at recall 0..4/5 -> envelope 4/5 -> AP 0.64
    assert ap[J["right_elbow"]] == pytest.approx(0.64)
    # FP last: precision 1 up to recall 4/5 -> AP 0.8
    assert ap[J["left_elbow"]] == pytest.approx(0.8)
    table = evaluate_mpii_map(gts, heads, shifted)
    assert table["Elbow"] == pytest.approx(0.72)
    assert table["mAP"] == pytest.approx((12 + 0.64 + 0.8) / 14)


def _results(records, skip=()):
    """The records' people as COCO results: (x, y, v) keypoints, v as the joint score."""
    return [{"image_id": r.image_id, "category_id": 1, "keypoints": k.reshape(-1).tolist(),
             "score": 1.0} for r in records for k in r.keypoints if r.image_id not in skip]


def _with_headboxes(tmp_path, entries, sizes=HEAD_SIZES):
    """mpii_mini entries with head boxes of 0.6 * diagonal = sizes (3-4-5 boxes)."""
    data = [dict(e, headbox=[100, 50, 100 + 0.8 * h / 0.6, 50 + 0.6 * h / 0.6])
            for e, h in zip(entries, sizes)]
    path = tmp_path / "mpii_headbox.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_evaluate_mpii_file(tmp_path, mpii, data_dir):
    _, entries, gt = mpii
    ids, _, _ = _per_image(entries, gt)
    images = str(data_dir / "mpii_mini")
    path = _with_headboxes(tmp_path, entries)
    records = read_mpii(path, images, "mpii")
    by_id = {r.image_id: r for r in records}
    np.testing.assert_allclose([by_id[i].head_size[0] for i in ids], HEAD_SIZES, rtol=1e-5)
    results = _results(records)
    m = evaluate_mpii(path, images, results)
    assert m["mAP"] == m["PCKh"] == 1.0 and m["Head"] == 1.0

    # PCKh threshold in the reader's coordinates: person 0 (head 40) shifted by exactly 0.5 * 40
    # is still correct, a little more loses its 14 scored joints
    def shifted(dx):
        return [dict(r, keypoints=(np.asarray(r["keypoints"]).reshape(16, 3) + [dx, 0, 0])
                     .reshape(-1).tolist()) if r["image_id"] == ids[0] else r for r in results]

    assert evaluate_mpii(path, images, shifted(20.0))["PCKh"] == 1.0
    assert evaluate_mpii(path, images, shifted(20.01))["PCKh"] == pytest.approx(52 / 66)

    # drop person 2's prediction: PCKh loses its 12 annotated scored joints (of 66); AP recall
    # 4/5, but 3/3 for the ankles (person 2 has none annotated)
    partial = _results(records, skip={ids[2]})
    m = evaluate_mpii(path, images, partial)
    assert m["PCKh"] == pytest.approx(54 / 66)
    assert m["Shoulder"] == pytest.approx(0.8) and m["Ankle"] == pytest.approx(1.0)
    assert evaluate_mpii(path, images, []) == pytest.approx(
        {"Head": 0.0, "Shoulder": 0.0, "Elbow": 0.0, "Wrist": 0.0, "Hip": 0.0, "Knee": 0.0,
         "Ankle": 0.0, "mAP": 0.0, "PCKh": 0.0})
    only = evaluate_mpii(path, images, partial, image_ids=[ids[0], ids[1]])
    assert only["mAP"] == only["PCKh"] == 1.0

    first = next(r for r in results if r["image_id"] == ids[0])
    with pytest.raises(EvaluationError, match=r"image_id 7 is not in .*mpii_headbox.json"):
        evaluate_mpii(path, images, [dict(first, image_id=7)])
    with pytest.raises(EvaluationError, match=r"image_id 7 is not in .*mpii_headbox.json"):
        evaluate_mpii(path, images, results, image_ids=[7])
    with pytest.raises(EvaluationError, match=r"image_id 5808361\) has 45 keypoint values"):
        evaluate_mpii(path, images, [dict(first, keypoints=first["keypoints"][:45])])
    with pytest.raises(DatasetError, match=r"nowhere/004645041.jpg: image file cannot be opened"):
        evaluate_mpii(path, str(tmp_path / "nowhere"), results)


def test_mpii_mini_ground_truth_through_dispatcher(mpii, data_dir):
    path, _, _ = mpii
    split = SplitConfig(annotations=path, images=str(data_dir / "mpii_mini"), format="mpii")
    records = read_mpii(split.annotations, split.images, "mpii")
    assert np.isfinite(np.concatenate([r.head_size for r in records])).all()  # fallback sizes
    results = _results(records)
    m = evaluate("mpii", split, results, "mpii")
    assert m["mAP"] == 1.0 and m["PCKh"] == 1.0
    # an empty images folder (or a plain path) means the annotation file's folder
    assert evaluate("mpii", SplitConfig(annotations=path, format="mpii"), results) == m
    assert evaluate("mpii", path, results) == m


def test_file_level_ids_people_and_unknown_head_sizes(tmp_path, caplog):
    """Non-numeric names (ids 1..N sorted), two people in one image, a NaN head size."""
    for name in ("b.jpg", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((200, 300, 3), np.uint8))
    base = np.array([[10.0 + 10 * j, 20.0 + 5 * j] for j in range(16)])

    def person(image, shift, headbox=None, vis=None):
        entry = {"image": image, "joints": (base + shift).tolist(),
                 "joints_vis": vis or [1] * 16, "center": [50.0, 60.0], "scale": 0.5}
        return dict(entry, headbox=headbox) if headbox else entry

    no_top = [1] * 16
    no_top[J["head_top"]] = 0
    data = [person("b.jpg", 0, [0, 0, 8, 6]), person("b.jpg", 100, [0, 0, 16, 12]),
            person("a.jpg", 0, [0, 0, 8, 6]), person("a.jpg", 50, vis=no_top)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    records = read_mpii(str(ann), str(tmp_path), "mpii")
    assert [(r.image_id, r.num_people) for r in records] == [(1, 2), (2, 2)]
    assert np.isnan(records[0].head_size[1])
    # MATLAB index p -> p - 0.5: the results are the file's joints minus 0.5
    np.testing.assert_allclose(records[1].keypoints[1, :, :2], base + 100 - 0.5)
    scored = _results(records)[:1] + _results(records)[2:]  # without the unscorable person
    with caplog.at_level(logging.WARNING):
        m = evaluate("mpii", str(ann), scored)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 of 4 persons without a head size" in warnings[0]
    assert m["mAP"] == m["PCKh"] == 1.0
    # the person with no head size is no ground truth: its prediction is a false positive that
    # ties with the true positives and sorts before image 2's (stable order): AP < 1
    assert evaluate("mpii", str(ann), _results(records))["mAP"] < 1.0
