"""DekrCodec: encode against a numpy reference, oracle round trips, flip / resize hooks, pose NMS,
the learned scorer hook, zero-person images and the oracle AP on the real mini sets."""

import numpy as np
import pytest
import tensorflow as tf
from codec_cases import batch, encode, match_people, oracle_metrics, synthetic_people

from tfpose.codecs.dekr import DekrCodec, DekrConfig
from tfpose.config import ConfigError
from tfpose.keypoints import get_spec, spec_from_dict

TINY = spec_from_dict({"name": "tiny", "names": ["a", "b", "c"], "sigmas": [0.5, 0.5, 0.5],
                       "flip_pairs": [["a", "b"]], "skeleton": [["a", "b"], ["b", "c"]]})
KEYS = ("heatmaps", "center", "heatmap_weights", "offsets", "offset_weights")


def codec_for(spec=TINY, size=64, **kw):
    return DekrCodec(DekrConfig(**kw), spec, size)


def numpy_encode(keypoints, size, stride, sigma, center_sigma, radius, bg, mask):
    """Reference targets written from the class docstring / paper, one pixel at a time."""
    keypoints = np.asarray(keypoints, np.float64)
    n, k = size // stride, keypoints.shape[1]
    heat = np.zeros((n, n, k))
    centre = np.zeros((n, n, 1))
    region = np.zeros((n, n, k + 1))
    offsets = np.zeros((n, n, k, 2))
    weights = np.zeros((n, n, k))
    closest = np.full((n, n), np.inf)
    valid = mask.reshape(n, stride, n, stride).min(axis=(1, 3))
    for person in keypoints:
        x, y, v = person[:, 0], person[:, 1], person[:, 2]
        lab = (v > 0) & (x >= 0) & (x < size) & (y >= 0) & (y < size)
        if not lab.any():
            continue
        pts = np.stack([x, y], axis=-1) / stride
        c = pts[lab].mean(axis=0)
        box = pts[lab].max(axis=0) - pts[lab].min(axis=0)
        z = max(1.0, float(np.hypot(*box)))
        for i in range(n):
            for j in range(n):
                p = np.array([j + 0.5, i + 0.5])
                for t in np.flatnonzero(lab):
                    d = p - pts[t]
                    heat[i, j, t] = max(heat[i, j, t], np.exp(-(d @ d) / (2 * sigma ** 2)))
                    if np.abs(d).max() <= 3 * sigma:
                        region[i, j, t] = 1
                d = p - c
                centre[i, j, 0] = max(centre[i, j, 0], np.exp(-(d @ d) / (2 * center_sigma ** 2)))
                if np.abs(d).max() <= 3 * center_sigma:
                    region[i, j, k] = 1
                if np.abs(d).max() <= radius and d @ d < closest[i, j]:
                    closest[i, j] = d @ d
                    offsets[i, j] = np.where(lab[:, None], pts - p, 0.0)
                    weights[i, j] = lab / z
    return {"heatmaps": heat, "center": centre,
            "heatmap_weights": (bg + (1 - bg) * region) * valid[..., None],
            "offsets": offsets.reshape(n, n, 2 * k), "offset_weights": weights * valid[..., None]}


# -- encode ---------------------------------------------------------------------------------------

def test_signature_matches_encode():
    codec = codec_for()
    sig = codec.target_signature()
    out = codec.encode(tf.zeros([2, 3, 3]), tf.ones([64, 64]))
    assert set(out) == set(sig) == set(KEYS)
    for k, spec in sig.items():
        assert out[k].dtype == spec.dtype and out[k].shape == spec.shape, k
    assert sig["offsets"].shape == (16, 16, 6) and sig["heatmap_weights"].shape == (16, 16, 4)


# Two overlapping people (centres 5.5 map pixels apart, regions of 8 pixels a side overlap), a
# third whose only labelled keypoint is inside, one unlabelled and one outside keypoint.
PEOPLE = [[[13.3, 20.7, 2], [30.2, 18.9, 2], [20.1, 41.0, 1]],
          [[40.9, 30.1, 2], [0, 0, 0], [33.0, 50.5, 2]],
          [[58.2, 61.7, 2], [64.0, 10.0, 2], [70.0, 3.0, 2]]]


def test_encode_matches_numpy_reference():
    codec = codec_for(sigma=1.5, center_sigma=3.0, center_radius=4, bg_weight=0.1)
    mask = np.ones((64, 64), np.float32)
    mask[44:47, 2:11] = 0  # ignored: rows 11, columns 0..2 of the map
    out = encode(codec, PEOPLE, mask)
    want = numpy_encode(PEOPLE, 64, 4, 1.5, 3.0, 4, 0.1, mask)
    for key in KEYS:
        np.testing.assert_allclose(out[key], want[key], atol=1e-5, err_msg=key)


def test_centre_ownership_offsets_and_weights_by_hand():
    codec = codec_for()
    out = encode(codec, PEOPLE[:2])
    # centres (map px): A = mean of its three keypoints / 4, B = mean of its two labelled ones
    ca = np.array([(13.3 + 30.2 + 20.1) / 3, (20.7 + 18.9 + 41.0) / 3]) / 4  # (5.30, 6.72)
    cb = np.array([(40.9 + 33.0) / 2, (30.1 + 50.5) / 2]) / 4  # (9.24, 10.08)
    centre = out["center"][..., 0]
    i, j = np.unravel_index(centre.argmax(), centre.shape)
    assert (i, j) in ((6, 5), (10, 9))
    assert centre[6, 5] == pytest.approx(np.exp(-np.sum((np.array([5.5, 6.5]) - ca) ** 2) / 32))
    # pixels (row 7, col 6) and (row 9, col 8) lie in both regions (within 4 map px of both
    # centres along x and y); the first is closer to A, the second to B
    for p in ([6.5, 7.5], [8.5, 9.5]):
        assert np.abs(np.array(p) - ca).max() <= 4 and np.abs(np.array(p) - cb).max() <= 4
    assert np.sum((np.array([6.5, 7.5]) - ca) ** 2) < np.sum((np.array([6.5, 7.5]) - cb) ** 2)
    assert np.sum((np.array([8.5, 9.5]) - ca) ** 2) > np.sum((np.array([8.5, 9.5]) - cb) ** 2)
    np.testing.assert_allclose(out["offsets"][7, 6], [13.3 / 4 - 6.5, 20.7 / 4 - 7.5,
                                                      30.2 / 4 - 6.5, 18.9 / 4 - 7.5,
                                                      20.1 / 4 - 6.5, 41.0 / 4 - 7.5], atol=1e-5)
    za = np.hypot(30.2 - 13.3, 41.0 - 18.9) / 4
    np.testing.assert_allclose(out["offset_weights"][7, 6], 1 / za, rtol=1e-5)
    # B's keypoint 1 is unlabelled: offset and weight 0
    zb = np.hypot(40.9 - 33.0, 50.5 - 30.1) / 4
    np.testing.assert_allclose(out["offsets"][9, 8], [40.9 / 4 - 8.5, 30.1 / 4 - 9.5, 0, 0,
                                                      33.0 / 4 - 8.5, 50.5 / 4 - 9.5], atol=1e-5)
    np.testing.assert_allclose(out["offset_weights"][9, 8], [1 / zb, 0, 1 / zb], rtol=1e-5)
    # outside every centre region: no offsets, no weights
    assert not out["offsets"][0, 15].any() and not out["offset_weights"][0, 15].any()
    owned = out["offset_weights"][..., 0] > 0
    assert owned.sum() == len(set(map(tuple, np.argwhere(owned))))
    assert 64 < owned.sum() < 128  # two 8 x 8 squares, overlapping


def test_tradeoff_mask_regions():
    codec = codec_for(sigma=1.0, bg_weight=0.25)
    out = encode(codec, [[[10.0, 10.0, 2], [0, 0, 0], [0, 0, 0]]])["heatmap_weights"]
    # keypoint at map (2.5, 2.5): pixels with centres within 3 map px along both axes
    np.testing.assert_array_equal(np.argwhere(out[..., 0] == 1.0).min(axis=0), [0, 0])
    np.testing.assert_array_equal(np.argwhere(out[..., 0] == 1.0).max(axis=0), [5, 5])
    assert set(np.unique(out[..., 0])) == {0.25, 1.0}
    assert (out[..., 1] == 0.25).all() and (out[..., 2] == 0.25).all()
    assert out[2, 2, 3] == 1.0  # the centre channel (centre = the only keypoint)


def test_no_people_and_ignored_regions():
    codec = codec_for()
    mask = np.ones((64, 64), np.float32)
    mask[:4, :4] = 0
    out = encode(codec, np.zeros((0, 3, 3)), mask)
    for key in ("heatmaps", "center", "offsets", "offset_weights"):
        assert not out[key].any(), key
    assert out["heatmap_weights"][0, 0].tolist() == [0.0] * 4
    assert np.allclose(out["heatmap_weights"][1:], 0.1)


def test_encode_in_tf_data():
    codec = codec_for()
    counts = [0, 2, 1]
    data = tf.data.Dataset.from_generator(
        lambda: (np.full((n, 3, 3), 18.0, np.float32) for n in counts),  # a pixel centre
        output_signature=tf.TensorSpec([None, 3, 3], tf.float32))
    data = data.map(lambda kp: codec.encode(kp, tf.ones([64, 64]))).batch(3)
    out = next(iter(data))
    assert out["offsets"].shape == (3, 16, 16, 6)
    assert out["center"].numpy().max(axis=(1, 2, 3)).tolist() == pytest.approx([0.0, 1.0, 1.0])


# -- config ---------------------------------------------------------------------------------------

def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="nms_kernel"):
        codec_for(nms_kernel=4)
    with pytest.raises(ConfigError, match="center_nms_kernel"):
        codec_for(center_nms_kernel=2)
    with pytest.raises(ConfigError, match="center_sigma"):
        codec_for(center_sigma=0.0)
    with pytest.raises(ConfigError, match="nms_overlap"):
        codec_for(nms_overlap=1.5)
    with pytest.raises(ConfigError, match="stride"):
        codec_for(size=66)


def test_default_config_is_the_paper_and_reference():
    cfg = DekrConfig()
    assert (cfg.stride, cfg.sigma, cfg.center_sigma, cfg.center_radius) == (4, 2.0, 4.0, 4)
    assert (cfg.bg_weight, cfg.max_people, cfg.num_candidates, cfg.nms_kernel) == (0.1, 30, 30, 5)
    assert cfg.center_nms_kernel == 3  # reference group.py: 3 x 3 on maps up to 200 px
    assert (cfg.keypoint_threshold, cfg.absorb_distance) == (0.01, 75.0)
    # reference OVERLAP_THRESHOLD: more than 10 of COCO's 17 keypoints
    assert int(np.floor(cfg.nms_overlap * 17)) == 10


# -- decode ---------------------------------------------------------------------------------------


def test_oracle_round_trip_coco():
    spec = get_spec("coco")
    codec = DekrCodec(DekrConfig(), spec, 256)
    rng = np.random.default_rng(1)
    gt = [synthetic_people(rng, 256, 17, unlabelled=3), synthetic_people(rng, 256, 17)[:2]]
    targets = batch(*(codec.encode(g, tf.ones([256, 256])) for g in gt))
    outputs = codec.oracle_outputs(targets)
    assert set(outputs) == {"heatmaps", "center", "offsets"}
    poses = {k: v.numpy() for k, v in codec.decode(outputs).items()}
    assert poses["keypoints"].shape == (2, 30, 17, 3) and poses["scores"].shape == (2, 30)
    assert poses["num_people"].tolist() == [len(gt[0]), len(gt[1])]
    for b in range(2):
        n = int(poses["num_people"][b])
        match_people(poses["keypoints"][b], n, gt[b], tol=0.1)
        assert not poses["keypoints"][b, n:].any() and not poses["scores"][b, n:].any()
        assert (np.diff(poses["scores"][b, :n]) <= 0).all()
    # naive score (Sec. 3.2): mean keypoint heat value times the centre heat value
    cand = {k: v.numpy() for k, v in codec.decode_candidates(outputs).items()}
    assert cand["keypoints"].shape == (2, 30, 17, 3) and cand["valid"].sum(1).tolist() == [16, 2]
    first = cand["keypoints"][1, 0]
    assert poses["scores"][1].max() == pytest.approx(
        max(cand["keypoints"][1, p, :, 2].mean() * cand["center_scores"][1, p] for p in (0, 1)),
        abs=1e-6)
    assert first[:, 2].min() > 0.5


def test_regressed_keypoints_without_candidates_and_far_candidates():
    codec = codec_for(size=64, absorb_distance=5.0)
    gt = np.array([[[20.0, 20.0, 2], [30.3, 25.1, 2], [26.0, 40.2, 2]]], np.float32)
    outputs = codec.oracle_outputs(batch(codec.encode(gt, tf.ones([64, 64]))))
    heat = outputs["heatmaps"].numpy()
    heat[..., 1] = 0.0  # no candidate of type 1: the regressed point is kept, heat 0
    shifted = np.roll(heat[..., 2], 3, axis=1)  # type 2's peak 12 px right: too far to absorb
    heat[..., 2] = shifted
    outputs["heatmaps"] = tf.constant(heat)
    kp = codec.decode(outputs)["keypoints"].numpy()[0, 0]
    np.testing.assert_allclose(kp[:, :2], gt[0, :, :2], atol=1e-4)
    assert kp[1, 2] == 0.0
    assert kp[2, 2] == pytest.approx(shifted[0, int(40.2 // 4), int(26.0 // 4)])
    assert 0 < kp[2, 2] < 0.5


def test_zero_person_image_and_noise():
    codec = codec_for()
    empty = codec.oracle_outputs(batch(codec.encode(np.zeros((0, 3, 3)), tf.ones([64, 64]))))
    poses = codec.decode(empty)
    assert poses["num_people"].numpy().tolist() == [0]
    assert not poses["keypoints"].numpy().any() and not poses["scores"].numpy().any()
    rng = np.random.default_rng(7)
    noise = {"heatmaps": rng.normal(0, 1, (2, 16, 16, 3)).astype(np.float32),
             "center": rng.uniform(0, 1, (2, 16, 16, 1)).astype(np.float32),
             "offsets": rng.normal(0, 5, (2, 16, 16, 6)).astype(np.float32)}
    noise["center"][1] = 0.0
    poses = {k: v.numpy() for k, v in codec.decode(noise).items()}
    for v in poses.values():
        assert np.isfinite(v).all()
    n = poses["num_people"]
    assert 0 < n[0] <= 30 and n[1] == 0
    assert not poses["keypoints"][0, n[0]:].any()


def test_decode_traces_with_unknown_batch():
    codec = codec_for()
    decode = tf.function(codec.decode, input_signature=[{
        "heatmaps": tf.TensorSpec([None, 16, 16, 3], tf.float32),
        "center": tf.TensorSpec([None, 16, 16, 1], tf.float32),
        "offsets": tf.TensorSpec([None, 16, 16, 6], tf.float32)}])
    rng = np.random.default_rng(8)
    gt = synthetic_people(rng, 64, 3, cell=32, jitter=6.0)
    targets = batch(codec.encode(gt, tf.ones([64, 64])), codec.encode(gt[:1], tf.ones([64, 64])))
    poses = decode(codec.oracle_outputs(targets))
    assert poses["num_people"].numpy().tolist() == [4, 1]
    assert poses["keypoints"].shape[1:] == (30, 3, 3)


# -- pose NMS -------------------------------------------------------------------------------------

def test_duplicate_centres_are_suppressed():
    codec = codec_for()
    gt = np.array([[[20.0, 20.0, 2], [30.3, 25.1, 2], [26.0, 40.2, 2]]], np.float32)
    outputs = {k: v.numpy() for k, v in codec.oracle_outputs(
        batch(codec.encode(gt, tf.ones([64, 64])))).items()}
    # a second, weaker centre at map pixel (12, 12) regressing the same pose
    centre = (np.arange(16) + 0.5)
    outputs["center"][0, 12, 12, 0] = 0.8
    target = gt[0, :, :2] / 4 - centre[12]
    outputs["offsets"][0, 12, 12] = target.reshape(-1)
    assert codec.decode(outputs)["num_people"].numpy().tolist() == [1]
    loose = codec_for(nms_overlap=1.0)  # never more than K coinciding keypoints
    poses = loose.decode(outputs)
    assert poses["num_people"].numpy().tolist() == [2]
    np.testing.assert_allclose(poses["keypoints"].numpy()[0, 0], poses["keypoints"].numpy()[0, 1],
                               atol=1e-5)


def test_pose_nms_compares_regressed_poses():
    """A person with one labelled keypoint next to a full one: its unlabelled keypoints regress
    to its centre and absorb the neighbour's candidates, so the absorbed poses coincide on 2 of 3
    keypoints, but the regressed poses do not: both people are kept."""
    codec = codec_for()
    gt = np.array([[[20.0, 20.0, 2], [30.3, 25.1, 2], [26.0, 40.2, 2]],
                   [[0, 0, 0], [0, 0, 0], [44.0, 30.0, 2]]], np.float32)
    outputs = codec.oracle_outputs(batch(codec.encode(gt, tf.ones([64, 64]))))
    cand = {k: v.numpy()[0] for k, v in codec.decode_candidates(outputs).items()}
    assert cand["valid"].sum() == 2 and cand["regressed"].shape == (30, 3, 2)
    partial = int(np.argmin(np.abs(cand["keypoints"][:2, 2, 0] - 44.0)))
    np.testing.assert_allclose(cand["keypoints"][partial, :2, :2], gt[0, :2, :2], atol=1e-3)
    np.testing.assert_allclose(cand["regressed"][partial, :2], [[44.0, 30.0]] * 2, atol=2.0)
    poses = codec.decode(outputs)
    assert poses["num_people"].numpy().tolist() == [2]


def test_pose_nms_is_greedy_not_all_pairs():
    """A > B > C by score, A ~ B and B ~ C, A !~ C: greedy NMS keeps A and C."""
    codec = codec_for(nms_distance=10.0, nms_overlap=0.5, max_people=4)
    a = np.array([[0, 0], [0, 0], [0, 0]], np.float32)
    b = np.array([[6, 0], [6, 0], [100, 0]], np.float32)  # 2 of 3 within 10 px of A
    c = np.array([[12, 0], [12, 0], [200, 0]], np.float32)  # 2 of 3 near B, 0 near A (12 px)
    d = np.array([[500, 0], [500, 0], [500, 0]], np.float32)
    kp = np.zeros((1, 4, 3, 3), np.float32)
    kp[0, :, :, :2] = np.stack([a, b, c, d])
    keep = codec._pose_nms(tf.constant(kp), tf.constant([[True, True, True, False]]))
    assert keep.numpy().tolist() == [[True, False, True, False]]


# -- flip and resize hooks ------------------------------------------------------------------------

def flip_people(keypoints, spec, size):
    out = np.asarray(keypoints, np.float32)[:, spec.flip_index].copy()
    lab = out[..., 2] > 0
    out[..., 0] = np.where(lab, size - out[..., 0], 0.0)
    return out


def test_flip_outputs_maps_the_flipped_encoding_back():
    spec = get_spec("coco")
    codec = DekrCodec(DekrConfig(), spec, 128)
    rng = np.random.default_rng(3)
    gt = synthetic_people(rng, 128, 17, cell=64, jitter=25.0, unlabelled=4)
    gt[1, :, :2] = gt[0, :, :2] + [21.0, 6.0]  # centre regions of people 0 and 1 overlap
    gt[1, :, 2] = 2
    gt = np.clip(gt, 0, 127.5)
    lab = gt[..., 2:] > 0
    centres = (gt[..., :2] * lab).sum(1) / lab.sum(1) / 4
    assert np.abs(centres[0] - centres[1]).max() < 2 * 4  # closer than 2 radii along x and y
    mask = np.ones((128, 128), np.float32)
    mask[70:90, 3:30] = 0
    t1 = encode(codec, gt, mask)
    t2 = encode(codec, flip_people(gt, spec, 128), mask[:, ::-1].copy())
    back = {k: v.numpy()[0] for k, v in codec.flip_outputs(
        codec.oracle_outputs({k: v[None] for k, v in t2.items()})).items()}
    for key in ("heatmaps", "center", "offsets"):
        np.testing.assert_allclose(back[key], t1[key], atol=1e-4, err_msg=key)
    flip = spec.flip_index
    np.testing.assert_allclose(t2["offset_weights"][:, ::-1][..., flip], t1["offset_weights"],
                               atol=1e-6)
    order = np.concatenate([flip, [17]])
    np.testing.assert_allclose(t2["heatmap_weights"][:, ::-1][..., order], t1["heatmap_weights"],
                               atol=1e-6)
    # the decoded poses of the flipped image, mapped back, are the original ones
    poses = codec.decode({k: tf.constant(v[None]) for k, v in back.items()})
    match_people(poses["keypoints"].numpy()[0], int(poses["num_people"][0]), gt, tol=0.1)


def test_resize_outputs_of_a_scaled_input():
    codec = codec_for(size=64)
    big = codec_for(size=128)
    gt = np.array([[[20.3, 18.0, 2], [36.3, 25.1, 2], [26.0, 44.2, 2]]], np.float32)
    small = encode(codec, gt)
    large = big.oracle_outputs(batch(big.encode(gt * [2, 2, 1], tf.ones([128, 128]))))
    same = codec.resize_outputs(codec.oracle_outputs({k: v[None] for k, v in small.items()}),
                                16, 1.0)
    np.testing.assert_allclose(same["offsets"].numpy()[0], small["offsets"], atol=1e-5)
    resized = {k: v.numpy()[0] for k, v in big.resize_outputs(large, 16, 2.0).items()}
    assert resized["heatmaps"].shape == (16, 16, 3) and resized["offsets"].shape == (16, 16, 6)
    # offsets are linear in the pixel position inside a centre region: bilinear resizing keeps
    # them exact around the centre, in the small map's pixels once divided by the scale
    i, j = np.unravel_index(small["center"][..., 0].argmax(), (16, 16))
    np.testing.assert_allclose(resized["offsets"][i, j], small["offsets"][i, j], atol=1e-4)
    poses = codec.decode({k: tf.constant(v[None]) for k, v in resized.items()})
    match_people(poses["keypoints"].numpy()[0], int(poses["num_people"][0]), gt, tol=0.05)


def test_base_hooks():
    from tfpose.codecs.base import Codec

    class Bare(Codec):
        name = "bare"

    codec = Bare(DekrConfig(), TINY, 64)
    with pytest.raises(NotImplementedError, match="bare"):
        codec.flip_outputs({})
    with pytest.raises(NotImplementedError, match="bare"):
        codec.resize_outputs({}, 16, 2.0)
    assert codec.load_assets("/nonexistent") is None


# -- learned scorer -------------------------------------------------------------------------------

def test_scorer_is_loaded_and_used(tmp_path):
    scoring = pytest.importorskip("tfpose.postprocess.scoring")
    scorer = scoring.build_scorer(TINY, seed=0)
    scorer.save_weights(str(tmp_path / scoring.SCORER_WEIGHTS))
    off = codec_for(use_scorer=False)
    off.load_assets(str(tmp_path))
    assert off.scorer is None
    missing = codec_for()
    missing.load_assets(str(tmp_path / "elsewhere"))
    assert missing.scorer is None
    codec = codec_for()
    codec.load_assets(str(tmp_path))
    assert codec.scorer is not None
    rng = np.random.default_rng(9)
    gt = synthetic_people(rng, 64, 3, cell=32, jitter=6.0)
    outputs = codec.oracle_outputs(batch(codec.encode(gt, tf.ones([64, 64]))))
    poses = {k: v.numpy() for k, v in tf.function(codec.decode)(outputs).items()}
    n = int(poses["num_people"][0])
    assert n == 4
    want = scorer(scoring.pose_features(poses["keypoints"][0, :n], TINY, 64.0)).numpy()[:, 0]
    np.testing.assert_allclose(poses["scores"][0, :n], want, rtol=1e-5, atol=1e-6)
    assert (np.diff(poses["scores"][0, :n]) <= 0).all()


# -- oracle AP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dekr_coco", "dekr_crowdpose"])
def test_oracle_ap_on_the_mini_sets(name, repo_dir, data_dir, monkeypatch):
    """DESIGN.md section 3: encode GT -> decode -> AP >= 0.99 on the real mini sets."""
    assert oracle_metrics(repo_dir, monkeypatch, name)["AP"] >= 0.99


def test_max_images_scores_only_the_images_run(repo_dir, monkeypatch):
    """eval.max_images: ground truth of images never run must not count as misses."""
    metrics = oracle_metrics(repo_dir, monkeypatch, "dekr_coco", ["eval.max_images=2"])
    assert metrics["AP"] >= 0.99 and metrics["AR"] >= 0.99
