"""tfpose.postprocess.nms and the pose OKS helpers: greedy OKS / IoU NMS against a numpy greedy
reference on crowded synthetic poses (ties, invalid poses, max-output truncation), and the
posedet decode (top-k + NMS tail) converted to TFLite builtins and run in LiteRT."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.evaluation.oks import oks as numpy_coco_oks
from tfpose.keypoints import get_spec
from tfpose.postprocess import nms
from tfpose.postprocess.oks import keypoint_box_areas, keypoint_boxes, pose_oks

SIGMAS = get_spec("coco").sigmas_array
K = len(SIGMAS)


# -- numpy references -----------------------------------------------------------------------------

def np_pairwise_oks(poses, areas, sigmas):
    """Symmetric OKS written out per pair: mean_k exp(-d^2 / (2 s^2 (2 sigma_k)^2)),
    s^2 = (a_i + a_j) / 2."""
    t = len(poses)
    out = np.zeros((t, t))
    var = (2 * np.asarray(sigmas, np.float64)) ** 2
    for i in range(t):
        for j in range(t):
            d2 = ((poses[i, :, :2] - poses[j, :, :2]) ** 2).sum(-1)
            s2 = (areas[i] + areas[j]) / 2
            out[i, j] = np.exp(-d2 / (2 * s2 * var)).mean()
    return out


def np_box_iou(poses):
    t = len(poses)
    lo, hi = poses[:, :, :2].min(1), poses[:, :, :2].max(1)
    out = np.zeros((t, t))
    for i in range(t):
        for j in range(t):
            w = max(0.0, min(hi[i, 0], hi[j, 0]) - max(lo[i, 0], lo[j, 0]))
            h = max(0.0, min(hi[i, 1], hi[j, 1]) - max(lo[i, 1], lo[j, 1]))
            union = np.prod(hi[i] - lo[i]) + np.prod(hi[j] - lo[j]) - w * h
            out[i, j] = w * h / union if union > 0 else 0.0
    return out


def similarity_rows(similarity):
    """``similarity_to`` of nms.greedy_nms reading rows of a [B, T, T] matrix."""
    similarity = tf.convert_to_tensor(similarity, tf.float32)
    return lambda index: tf.gather(similarity, index, batch_dims=1)


def np_greedy(sim, scores, valid, threshold, max_output):
    """Kept indices: by decreasing score (ties: lower index first), keep unless a kept pose has
    similarity above the threshold; at most max_output."""
    order = sorted((i for i in range(len(scores)) if valid[i]), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(sim[j, i] <= threshold for j in kept):
            kept.append(i)
            if len(kept) == max_output:
                break
    return kept


def crowded_poses(rng, t, people=8, size=200.0):
    """t poses: noisy copies (duplicates to suppress) of a few overlapping people, scores on a
    0.05 grid (many ties), a few invalid."""
    base = rng.uniform(0, size, (people, 1, 2)) + rng.normal(0, 25, (people, K, 2))
    who = rng.integers(0, people, t)
    noise = rng.uniform(0.5, 25.0, (t, 1, 1))
    poses = base[who] + rng.normal(0, 1, (t, K, 2)) * noise
    poses = np.concatenate([poses, np.ones((t, K, 1))], -1).astype(np.float32)
    scores = (np.round(rng.uniform(0, 1, t) * 20) / 20).astype(np.float32)
    valid = rng.uniform(size=t) > 0.1
    return poses, scores, valid


def margin_ok(sim, threshold, eps=2e-6):
    """float32 vs float64: no similarity within eps of the threshold (else the test is flaky)."""
    return np.abs(sim - threshold).min() > eps


def check_against_reference(result, sims, scores, valid, threshold, m):
    indices, ok = result.indices.numpy(), result.valid.numpy()
    keep = result.keep.numpy()
    for b in range(len(scores)):
        want = np_greedy(sims[b], scores[b], valid[b], threshold, m)
        n = len(want)
        assert int(result.num_kept[b]) == n
        assert indices[b, :n].tolist() == want
        assert ok[b, :n].all() and not ok[b, n:].any() and not indices[b, n:].any()
        assert np.flatnonzero(keep[b]).tolist() == sorted(want)


# -- pose OKS helpers -----------------------------------------------------------------------------

def test_pose_oks_is_coco_oks_with_the_mean_area():
    rng = np.random.default_rng(0)
    poses, _, _ = crowded_poses(rng, 6)
    areas = rng.uniform(500, 5000, 6).astype(np.float32)
    got = pose_oks(poses[None], areas[None], poses[None], areas[None], SIGMAS).numpy()[0]
    np.testing.assert_allclose(got, np_pairwise_oks(poses, areas, SIGMAS), rtol=1e-5, atol=1e-6)
    # entry (i, j) is the COCO OKS of pose j against pose i (all keypoints labelled), with the
    # pair's mean area: the numpy evaluation reference
    for i, j in [(0, 1), (2, 5), (4, 4)]:
        want = numpy_coco_oks(poses[j:j + 1], poses[i:i + 1], [(areas[i] + areas[j]) / 2],
                              SIGMAS)[0, 0]
        assert got[i, j] == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(got, got.T, rtol=1e-6)
    np.testing.assert_allclose(np.diag(got), 1.0, rtol=1e-6)


def test_keypoint_boxes_and_areas():
    kp = np.array([[[10, 20, 2], [30, 5, 2], [0, 0, 0]],
                   [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], np.float32)
    labelled = kp[..., 2] > 0
    np.testing.assert_allclose(keypoint_boxes(kp, labelled).numpy(), [[10, 5, 30, 20], [0] * 4])
    np.testing.assert_allclose(keypoint_boxes(kp).numpy(), [[0, 0, 30, 20], [0] * 4])
    np.testing.assert_allclose(keypoint_box_areas(kp, labelled).numpy(), [300, 0])
    np.testing.assert_allclose(keypoint_box_areas(kp, labelled, min_area=1024).numpy(),
                               [1024, 1024])


# -- greedy NMS -----------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold,max_output", [(0.2, 100), (0.5, 100), (0.3, 4)])
def test_oks_nms_matches_numpy_greedy(threshold, max_output):
    rng = np.random.default_rng(int(threshold * 100) + max_output)
    b, t = 2, 80
    batch = [crowded_poses(rng, t) for _ in range(b)]
    poses = np.stack([p for p, _, _ in batch])
    scores = np.stack([s for _, s, _ in batch])
    valid = np.stack([v for _, _, v in batch])
    areas = keypoint_box_areas(poses, min_area=1024.0).numpy() * 0.5
    sims = [np_pairwise_oks(poses[i], areas[i], SIGMAS) for i in range(b)]
    assert all(margin_ok(s, threshold) for s in sims)
    result = nms.oks_nms(poses, scores, areas, SIGMAS, threshold, max_output, valid)
    assert result.indices.shape == (b, max_output) and result.keep.shape == (b, t)
    check_against_reference(result, sims, scores, valid, threshold, max_output)
    # crowded: many people survive, their duplicates do not; with M = 4 the output is truncated
    full = np.array([len(np_greedy(sims[i], scores[i], valid[i], threshold, t)) for i in range(b)])
    assert (full > 8).all() and (full < valid.sum(1)).all()
    assert result.num_kept.numpy().tolist() == np.minimum(full, max_output).tolist()


def test_iou_nms_matches_numpy_greedy():
    rng = np.random.default_rng(5)
    b, t, threshold = 2, 60, 0.5
    batch = [crowded_poses(rng, t) for _ in range(b)]
    poses = np.stack([p for p, _, _ in batch])
    scores = np.stack([s for _, s, _ in batch])
    valid = np.stack([v for _, _, v in batch])
    sims = [np_box_iou(poses[i].astype(np.float64)) for i in range(b)]
    assert all(margin_ok(s, threshold) for s in sims)
    np.testing.assert_allclose(nms.box_iou(keypoint_boxes(poses)).numpy(), np.stack(sims),
                               atol=1e-5)
    result = nms.iou_nms(poses, scores, threshold, 10, valid)
    check_against_reference(result, sims, scores, valid, threshold, 10)


def test_five_hundred_poses_in_a_graph():
    """T = 500 (the decode's top-k) inside tf.function, against the numpy reference."""
    rng = np.random.default_rng(11)
    poses, scores, valid = crowded_poses(rng, 500, people=20, size=400.0)
    areas = keypoint_box_areas(poses, min_area=1024.0).numpy()
    sim = np_pairwise_oks(poses, areas, SIGMAS)
    assert margin_ok(sim, 0.3)
    run = tf.function(lambda p, s, a, v: nms.oks_nms(p, s, a, SIGMAS, 0.3, 30, v))
    result = run(poses[None], scores[None], areas[None], valid[None])
    check_against_reference(result, [sim], scores[None], valid[None], 0.3, 30)


def test_greedy_not_all_pairs_ties_and_padding():
    """A > B > C: A ~ B and B ~ C but A !~ C, so greedy keeps A and C (B is gone before it can
    suppress C). D and E tie with A's score and come after it by index; F is invalid."""
    sim = np.eye(6, dtype=np.float32)
    sim[0, 1] = sim[1, 0] = sim[1, 2] = sim[2, 1] = 0.9
    sim[3, 4] = sim[4, 3] = 0.9  # D ~ E: the lower index of the tie wins
    sim[5, 0] = sim[0, 5] = 0.9  # F (invalid, highest score) suppresses nothing
    scores = np.array([[0.9, 0.8, 0.7, 0.9, 0.9, 1.0]], np.float32)
    valid = np.array([[True, True, True, True, True, False]])
    result = nms.greedy_nms(similarity_rows(sim[None]), scores, 0.5, 8, valid)
    assert result.indices.numpy().tolist() == [[0, 3, 2, 0, 0, 0, 0, 0]]
    assert result.valid.numpy().tolist() == [[True] * 3 + [False] * 5]
    assert result.keep.numpy().tolist() == [[True, False, True, True, False, False]]
    assert int(result.num_kept[0]) == 3
    # nothing valid: nothing kept
    none = nms.greedy_nms(similarity_rows(sim[None]), scores, 0.5, 2, np.zeros((1, 6), bool))
    assert int(none.num_kept[0]) == 0 and not none.keep.numpy().any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_output"):
        nms.greedy_nms(similarity_rows(np.eye(3, dtype=np.float32)[None]),
                       np.ones((1, 3), np.float32), 0.5, 0)
    with pytest.raises(ValueError, match="poses must be"):
        poses, areas = np.zeros((1, 2, 3, 2), np.float32), np.ones((1, 2), np.float32)
        pose_oks(poses, areas, poses, areas, SIGMAS)


# -- TFLite ---------------------------------------------------------------------------------------

def test_posedet_decode_converts_to_builtin_ops_and_matches_litert(tmp_path):
    """The decode tail (sigmoid, top-k over the levels, gathers, OKS NMS in a while loop)
    converts with builtin ops only (no Flex / Select TF ops) and LiteRT gives TF's poses."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    from tfpose.codecs.posedet import PosedetCodec, PosedetConfig
    from tfpose.export.tflite import operator_names

    spec = get_spec("coco")
    codec = PosedetCodec(PosedetConfig(top_k=100, max_people=10), spec, 128)
    n = codec.num_candidates
    rng = np.random.default_rng(3)
    # duplicates around a few people: coarse displacements towards the same poses
    people = rng.uniform(20, 108, (4, 1, 2)) + rng.normal(0, 12, (4, K, 2))
    who = rng.integers(0, 4, n)
    centres = codec.candidate_centers()[:, None]
    strides = codec.candidate_strides()[:, None, None]
    coarse = (people[who] + rng.normal(0, 3, (n, K, 2)) - centres) / strides
    inputs = [coarse[None].astype(np.float32),
              rng.normal(0, 0.05, (1, n, K, 2)).astype(np.float32),
              rng.normal(-1, 2, (1, n)).astype(np.float32)]

    @tf.function(input_signature=[tf.TensorSpec([1, n, K, 2], tf.float32),
                                  tf.TensorSpec([1, n, K, 2], tf.float32),
                                  tf.TensorSpec([1, n], tf.float32)])
    def decode(coarse, refine, logits):
        return codec.decode({"coarse": coarse, "refine": refine, "logits": logits})

    want = {k: v.numpy() for k, v in decode(*inputs).items()}
    assert 1 < want["num_people"][0] < 10
    module = tf.Module()  # no variables: a plain SavedModel has nothing to freeze
    module.decode = decode
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": decode})
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path)).convert()
    ops = operator_names(content)
    assert "TOPK_V2" in ops and "WHILE" in ops
    assert not [op for op in ops if op in ("CUSTOM", "DELEGATE") or op.startswith("FLEX")]

    interpreter = interpreter_module.Interpreter(model_content=content)
    runner = interpreter.get_signature_runner()
    got = runner(coarse=inputs[0], refine=inputs[1], logits=inputs[2])
    assert int(got["num_people"][0]) == int(want["num_people"][0])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["keypoints"], want["keypoints"], rtol=1e-5, atol=1e-3)
