"""OKS: numpy version against pycocotools' COCOeval.computeOks, TF version against numpy."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfpose.evaluation.oks import oks
from tfpose.keypoints import get_spec

SIGMAS = np.asarray(get_spec("coco").sigmas)


def _perturbed_predictions(coco_gt, rng):
    """Per image: noisy copies of each person (and points around boxes of unlabelled ones)."""
    results = []
    for img_id in sorted(coco_gt.getImgIds()):
        for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img_id])):
            g = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            x, y, w, h = ann["bbox"]
            for noise in (0.0, 0.03, 0.1, 0.4):
                if ann["num_keypoints"] > 0:
                    xy = g[:, :2] + rng.normal(0, noise * np.sqrt(ann["area"]), (17, 2))
                else:  # spread around (inside and outside) the enlarged box
                    xy = np.stack([rng.uniform(x - 2 * w, x + 3 * w, 17),
                                   rng.uniform(y - 2 * h, y + 3 * h, 17)], -1)
                kpts = np.concatenate([xy, np.ones((17, 1))], 1)
                results.append({"image_id": img_id, "category_id": 1,
                                "keypoints": kpts.reshape(-1).tolist(), "score": 0.0})
    # distinct scores, so that computeOks' score ordering is known
    for i, r in enumerate(results):
        r["score"] = 1.0 - i * 1e-3
    return results


def test_numpy_oks_matches_pycocotools(data_dir):
    ann_file = str(data_dir / "coco_mini" / "test_coco.json")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        results = _perturbed_predictions(coco_gt, np.random.default_rng(0))
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.evaluate()
    checked_box_branch = 0
    for img_id in sorted(coco_gt.getImgIds()):
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img_id], catIds=[1]))
        gt = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(len(anns), 17, 3)
        areas = np.asarray([a["area"] for a in anns])
        boxes = np.asarray([a["bbox"] for a in anns])
        preds = [r for r in results if r["image_id"] == img_id]  # already score-descending
        pred = np.asarray([r["keypoints"] for r in preds]).reshape(len(preds), 17, 3)
        assert len(preds) <= 20  # computeOks keeps maxDets = 20
        reference = np.asarray(ev.ious[(img_id, 1)])
        ours = oks(pred, gt, areas, SIGMAS, boxes=boxes)
        assert ours.shape == reference.shape == (len(preds), len(anns))
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
        # (x, y) only gives the same values
        np.testing.assert_allclose(oks(pred[..., :2], gt, areas, SIGMAS, boxes), ours, atol=0)
        unlabelled = gt[..., 2].max(-1) == 0
        checked_box_branch += int(unlabelled.sum())
        if unlabelled.any():
            assert ours[:, unlabelled].max() > 0  # some predictions fall in the enlarged box
            no_box = oks(pred, gt, areas, SIGMAS)
            assert np.all(no_box[:, unlabelled] == 0)
            np.testing.assert_array_equal(no_box[:, ~unlabelled], ours[:, ~unlabelled])
    assert checked_box_branch == 2  # coco_mini has two persons with no labelled keypoint


def test_numpy_oks_values_and_shapes():
    gt = np.zeros((1, 2, 3))
    gt[0, :, :2] = [[10.0, 10.0], [20.0, 10.0]]
    gt[0, 0, 2] = 2  # only the first keypoint is labelled
    sigmas = np.array([0.1, 0.2])
    pred = gt.copy()
    pred[0, 0, 0] += 3.0  # d = 3 on the labelled keypoint; the other one is ignored
    pred[0, 1, 0] += 1000.0
    area = 50.0
    expected = np.exp(-9.0 / (2 * area * (2 * 0.1) ** 2))
    np.testing.assert_allclose(oks(pred, gt, [area], sigmas), [[expected]], rtol=1e-12)
    assert oks(np.zeros((0, 2, 3)), gt, [area], sigmas).shape == (0, 1)
    assert oks(pred, np.zeros((0, 2, 3)), [], sigmas).shape == (1, 0)
    with pytest.raises(ValueError, match="gt must be"):
        oks(pred, gt[..., :2], [area], sigmas)


def _random_case(rng, b=2, p=6, g=5, k=17):
    gt = np.zeros((b, g, k, 3), np.float32)
    gt[..., :2] = rng.uniform(0, 200, (b, g, k, 2))
    gt[..., 2] = rng.integers(0, 3, (b, g, k))
    gt[0, 1, :, 2] = 0  # persons with no labelled keypoint
    gt[1, 3, :, 2] = 0
    pred = np.concatenate([gt[:, :p - 3, :, :2] + rng.normal(0, 5, (b, p - 3, k, 2)),
                           rng.uniform(0, 200, (b, 3, k, 2))], 1).astype(np.float32)
    pred = np.concatenate([pred, rng.uniform(0, 1, (b, p, k, 1))], -1).astype(np.float32)
    areas = rng.uniform(500, 20000, (b, g)).astype(np.float32)
    boxes = np.concatenate([rng.uniform(0, 100, (b, g, 2)), rng.uniform(20, 100, (b, g, 2))],
                           -1).astype(np.float32)
    return pred, gt, areas, boxes


def test_tf_oks_matches_numpy():
    import tensorflow as tf

    from tfpose.postprocess.oks import oks_tf

    pred, gt, areas, boxes = _random_case(np.random.default_rng(1))
    for with_boxes in (True, False):
        got = oks_tf(pred, gt, areas, SIGMAS, boxes if with_boxes else None).numpy()
        for bi in range(pred.shape[0]):
            want = oks(pred[bi], gt[bi], areas[bi], SIGMAS, boxes[bi] if with_boxes else None)
            np.testing.assert_allclose(got[bi], want, rtol=1e-5, atol=1e-6)
        assert got.shape == (2, 6, 5)

    # graph mode with static shapes; OKS of poses with themselves (the NMS use) is 1
    fn = tf.function(lambda a, g, s: oks_tf(a, g, s, SIGMAS), input_signature=[
        tf.TensorSpec([2, 6, 17, 3], tf.float32), tf.TensorSpec([2, 6, 17, 3], tf.float32),
        tf.TensorSpec([2, 6], tf.float32)])
    ref = np.concatenate([pred[..., :2], np.ones_like(pred[..., :1])], -1)
    self_oks = fn(pred, ref, tf.fill([2, 6], 1000.0))
    assert self_oks.shape == (2, 6, 6)
    np.testing.assert_allclose(np.diagonal(self_oks.numpy(), axis1=1, axis2=2), 1.0, atol=1e-6)
