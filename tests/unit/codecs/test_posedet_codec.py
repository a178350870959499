"""PosedetCodec: candidates, assignment on hand-made people (level by size, centroid candidate,
collisions, people below min_keypoints, ignored regions), zero-person images, oracle round trips
(synthetic and the real mini sets), flip hook, config errors."""

import numpy as np
import pytest
import tensorflow as tf
from codec_cases import batch, encode, match_people, oracle_metrics, synthetic_people

from tfpose.codecs.posedet import PosedetCodec, PosedetConfig
from tfpose.config import ConfigError, load_config
from tfpose.evaluation.oks import oks as numpy_oks
from tfpose.keypoints import get_spec, spec_from_dict

TINY = spec_from_dict({"name": "tiny", "names": ["a", "b", "c"], "sigmas": [0.05, 0.05, 0.05],
                       "flip_pairs": [["a", "b"]]})
SIZE = 128  # strides 8, 16, 32: 16 x 16 + 8 x 8 + 4 x 4 = 336 candidates


def codec_for(spec=TINY, size=SIZE, **kw):
    return PosedetCodec(PosedetConfig(**kw), spec, size)


def person(*points):
    return [[x, y, 2] for x, y in points]


def index(level, row, col):
    """Flat candidate index at 128 px with strides 8, 16, 32."""
    offsets, widths = [0, 256, 320], [16, 8, 4]
    return offsets[level] + row * widths[level] + col


def assignments(targets):
    a = targets["assigned"]
    return {int(n): int(a[n]) for n in np.flatnonzero(a >= 0)}


# -- candidates -----------------------------------------------------------------------------------

def test_candidates_are_ordered_level_by_level_row_major():
    codec = codec_for()
    assert codec.num_candidates == 336
    assert codec.level_shapes == [(16, 16), (8, 8), (4, 4)]
    centres, strides = codec.candidate_centers(), codec.candidate_strides()
    assert centres.shape == (336, 2) and strides.shape == (336,)
    np.testing.assert_allclose(centres[index(0, 0, 0)], [4, 4])
    np.testing.assert_allclose(centres[index(0, 2, 3)], [28, 20])  # (j + 0.5, i + 0.5) * 8
    np.testing.assert_allclose(centres[index(1, 5, 1)], [24, 88])
    np.testing.assert_allclose(centres[index(2, 3, 3)], [112, 112])
    assert strides[index(0, 15, 15)] == 8 and strides[index(1, 0, 0)] == 16
    assert strides[-1] == 32 and codec.candidate_levels()[index(1, 7, 7)] == 1


def test_signature_matches_encode():
    codec = codec_for()
    sig = codec.target_signature()
    out = codec.encode(tf.zeros([2, 3, 3]), tf.ones([SIZE, SIZE]))
    assert set(out) == set(sig)
    for key, spec in sig.items():
        assert out[key].dtype == spec.dtype and out[key].shape == spec.shape, key
    assert sig["people"].shape == (30, 3, 3) and sig["assigned"].shape == (336,)
    assert sig["heatmaps_s16"].shape == (8, 8, 3) and sig["heatmap_weights_s32"].shape == (4, 4, 1)


# -- assignment -----------------------------------------------------------------------------------

def test_level_by_keypoint_box_size_and_centroid_candidate():
    codec = codec_for(level_boundaries=[64.0, 100.0])
    people = [
        person((10, 10), (50, 10), (30, 40)),  # box 40 x 30: size 34.6 -> stride 8
        person((60, 60), (124, 60), (60, 124)),  # 64 x 64: size 64, a boundary -> stride 16
        person((10, 70), (90, 70), (50, 120)),  # 80 x 50: 63.2 -> stride 8
        person((0, 0), (127, 0), (64, 127)),  # 127 x 127 -> stride 32
    ]
    out = encode(codec, people)
    # centroids (30, 20), (81.3, 81.3), (50, 86.7), (63.7, 42.3): the cells holding them
    assert assignments(out) == {index(0, 2, 3): 0, index(1, 5, 5): 1, index(0, 10, 6): 2,
                                index(2, 1, 1): 3}
    np.testing.assert_allclose(out["people"][:4], np.asarray(people, np.float32))
    assert not out["people"][4:].any()
    box_areas = np.array([40 * 30, 64 * 64, 80 * 50, 127 * 127], np.float32)
    np.testing.assert_allclose(out["people_areas"][:4], 0.5 * np.maximum(box_areas, 1024))
    assert not out["people_areas"][4:].any()
    # other boundaries: everything on the first level
    low = codec_for(level_boundaries=[1000.0, 2000.0])
    assert set(assignments(encode(low, people))) == {index(0, 2, 3), index(0, 10, 10),
                                                      index(0, 10, 6), index(0, 5, 7)}


def test_box_centre_instead_of_keypoint_centroid():
    """Table 5: the candidate nearest the keypoint centroid or the keypoint-box centre."""
    people = [person((10, 10), (12, 12), (14, 10)) + [[60, 50, 1]]]
    spec = spec_from_dict({"name": "four", "names": list("abcd"), "sigmas": [0.5] * 4})
    # centroid (24, 20.5) -> cell (row 2, col 3); box centre (35, 30) -> (row 3, col 4)
    assert assignments(encode(codec_for(spec), people)) == {index(0, 2, 3): 0}
    assert assignments(encode(codec_for(spec, centroid="box"), people)) == {index(0, 3, 4): 0}


def test_people_below_min_keypoints_are_dropped_but_drawn():
    codec = codec_for()
    people = [person((20, 20), (40, 20)) + [[130.0, 20.0, 2]],  # third keypoint outside
              [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
              person((80, 80), (100, 80), (90, 100))]
    out = encode(codec, people)
    assert assignments(out) == {index(0, 10, 11): 0}  # the third person, in slot 0
    np.testing.assert_allclose(out["people"][0], people[2])
    # its keypoints still draw heatmaps: (20, 20) is at (2.5, 2.5) on the stride-8 map
    assert out["heatmaps_s8"][2, 2, 0] == pytest.approx(np.exp(-0.0))
    assert out["heatmaps_s8"][2, 2, 0] > 0.99 and out["heatmaps_s8"][2, 2, 2] < 0.01
    assert encode(codec_for(min_keypoints=2), people)["assigned"].max() == 1


def test_collisions_take_the_nearest_free_candidate():
    codec = codec_for()
    a = person((12, 12), (28, 12), (20, 36))  # centroid (20, 20): cell (2, 2)
    b = person((2, 30), (40, 2), (24, 19))  # centroid (22, 17): also cell (2, 2)
    out = encode(codec, [a, b])
    # B's nearest free centre: (20, 12) at squared distance 29 (then (28, 20) at 45)
    assert assignments(out) == {index(0, 2, 2): 0, index(0, 1, 2): 1}
    poses = codec.decode(codec.oracle_outputs(batch({k: tf.constant(v) for k, v in out.items()})))
    match_people(poses["keypoints"].numpy()[0], int(poses["num_people"][0]),
                 np.asarray([a, b], np.float32), tol=1e-3)


def test_candidate_valid_at_the_centre_pixel():
    codec = codec_for()
    mask = np.ones((SIZE, SIZE), np.float32)
    mask[:16, :16] = 0
    mask[100, 36] = 0  # the centre pixel of stride-8 candidate (row 12, col 4)
    out = encode(codec, np.zeros((0, 3, 3)), mask)
    invalid = set(np.flatnonzero(out["candidate_valid"] == 0).tolist())
    assert invalid == {index(0, 0, 0), index(0, 0, 1), index(0, 1, 0), index(0, 1, 1),
                       index(0, 12, 4), index(1, 0, 0)}  # stride 32's (16, 16) is valid
    assert out["heatmap_weights_s8"][0, 0, 0] == 0 and out["heatmap_weights_s8"][12, 4, 0] == 0
    assert out["heatmap_weights_s32"][0, 0, 0] == 0  # its 32 x 32 cell holds ignored pixels


def test_zero_person_image():
    codec = codec_for()
    out = encode(codec, np.zeros((0, 3, 3)))
    assert (out["assigned"] == -1).all() and (out["candidate_valid"] == 1).all()
    for key in ("people", "people_areas", "heatmaps_s8", "heatmaps_s16", "heatmaps_s32"):
        assert not out[key].any(), key
    poses = codec.decode(codec.oracle_outputs(batch({k: tf.constant(v) for k, v in out.items()})))
    assert poses["num_people"].numpy().tolist() == [0]
    assert not poses["keypoints"].numpy().any() and not poses["scores"].numpy().any()


def test_encode_in_tf_data():
    codec = codec_for()
    counts = [0, 2, 1]
    data = tf.data.Dataset.from_generator(
        lambda: (np.array([person((20 + 30 * i, 20), (40 + 30 * i, 20), (30 + 30 * i, 40))
                           for i in range(n)], np.float32).reshape(n, 3, 3) for n in counts),
        output_signature=tf.TensorSpec([None, 3, 3], tf.float32))
    data = data.map(lambda kp: codec.encode(kp, tf.ones([SIZE, SIZE]))).batch(3)
    out = next(iter(data))
    assert out["people"].shape == (3, 30, 3, 3) and out["assigned"].shape == (3, 336)
    assert (out["assigned"].numpy() >= 0).sum(axis=1).tolist() == counts


# -- decode ---------------------------------------------------------------------------------------

def test_oracle_round_trip_coco_and_both_nms():
    spec = get_spec("coco")
    rng = np.random.default_rng(1)
    gt = [synthetic_people(rng, 256, 17, cell=64, unlabelled=3), synthetic_people(rng, 256, 17)[:2]]
    for nms in ("oks", "iou"):
        codec = PosedetCodec(PosedetConfig(nms=nms, nms_threshold=0.5), spec, 256)
        targets = batch(*(codec.encode(g, tf.ones([256, 256])) for g in gt))
        outputs = codec.oracle_outputs(targets)
        assert set(outputs) == {"coarse", "refine", "logits", "heatmaps_s8", "heatmaps_s16",
                                "heatmaps_s32"}
        poses = {k: v.numpy() for k, v in codec.decode(outputs).items()}
        assert poses["keypoints"].shape == (2, 30, 17, 3) and poses["scores"].shape == (2, 30)
        assert poses["num_people"].tolist() == [16, 2]
        for b in range(2):
            n = int(poses["num_people"][b])
            match_people(poses["keypoints"][b], n, gt[b], tol=1e-3)
            assert not poses["keypoints"][b, n:].any() and not poses["scores"][b, n:].any()
            np.testing.assert_allclose(poses["scores"][b, :n], 1 / (1 + np.exp(-10.0)))
            np.testing.assert_allclose(poses["keypoints"][b, :n, :, 2],
                                       poses["scores"][b, :n, None] * np.ones((1, 17)))


@pytest.mark.parametrize("name", ["posedet_coco", "posedet_crowdpose"])
def test_round_trip_on_real_annotations(name, repo_dir, data_dir, monkeypatch):
    """The mini sets' people, scaled into the input: every person with enough labelled
    keypoints is decoded once, with COCO OKS (true segment areas) ~ 1."""
    from tfpose.data.readers import read_split
    from tfpose.registry import build_codec

    monkeypatch.chdir(repo_dir)
    cfg = load_config(str(repo_dir / "configs" / "oracle" / f"{name}.yaml"))
    codec = build_codec(cfg)
    size, sigmas = cfg.data.input_size, cfg.spec.sigmas_array
    round_trip = tf.function(lambda targets: codec.decode(codec.oracle_outputs(targets)))
    total = 0
    for record in read_split(cfg.data.val, cfg.spec):
        scale = size / max(record.height, record.width)
        gt = record.keypoints * np.array([scale, scale, 1], np.float32)
        targets = codec.encode(gt, tf.ones([size, size]))
        poses = {k: v.numpy()[0] for k, v in round_trip(batch(targets)).items()}
        kept = (gt[..., 2] > 0).sum(axis=1) >= cfg.codec.min_keypoints
        n = int(poses["num_people"])
        assert n == kept.sum() == (targets["assigned"].numpy() >= 0).sum()
        sim = numpy_oks(poses["keypoints"][:n], gt[kept], record.areas[kept] * scale ** 2, sigmas)
        assert (sim.max(axis=0) > 0.999).all()  # every kept person found ...
        if n > 1:  # ... by one pose only
            assert (np.sort(sim, axis=0)[-2] < 0.5).all()
        total += n
    assert total >= 4


@pytest.mark.parametrize("name", ["posedet_coco", "posedet_crowdpose"])
def test_oracle_ap_on_the_mini_sets(name, repo_dir, data_dir, monkeypatch):
    """DESIGN.md section 3: encode GT -> decode -> AP >= 0.99 on the real mini sets."""
    assert oracle_metrics(repo_dir, monkeypatch, name)["AP"] >= 0.99


def test_score_threshold_top_k_and_max_people():
    codec = codec_for(max_people=3, top_k=5, score_threshold=0.3)
    n = codec.num_candidates
    rng = np.random.default_rng(2)
    centres = codec.candidate_centers()
    # every candidate predicts a distinct small pose far from the others: nothing suppressed
    coarse = np.zeros((1, n, 3, 2), np.float32)
    logits = np.full((1, n), -5.0, np.float32)
    picks = rng.choice(n, 6, replace=False)
    logits[0, picks] = [3.0, 2.0, 1.0, 0.5, -0.5, -0.2]  # sigmoid 0.95 ... 0.38, 0.45
    poses = codec.decode({"coarse": coarse, "refine": coarse, "logits": logits})
    assert poses["num_people"].numpy().tolist() == [3]
    got = poses["keypoints"].numpy()[0, :, 0, :2]
    np.testing.assert_allclose(got, centres[picks[:3]], atol=1e-5)
    np.testing.assert_allclose(poses["scores"].numpy()[0], 1 / (1 + np.exp(-logits[0, picks[:3]])),
                               rtol=1e-6)
    # fewer candidates than people: top_k bounds the output
    two = codec_for(max_people=3, top_k=2, score_threshold=0.3)
    assert two.decode({"coarse": coarse, "refine": coarse, "logits": logits})[
        "num_people"].numpy().tolist() == [2]
    # all below the threshold: nobody
    none = codec.decode({"coarse": coarse, "refine": coarse, "logits": np.full((1, n), -2.0,
                                                                               np.float32)})
    assert none["num_people"].numpy().tolist() == [0] and not none["keypoints"].numpy().any()


def test_refinement_is_added_to_the_coarse_pose():
    codec = codec_for()
    n = codec.num_candidates
    coarse = np.zeros((1, n, 3, 2), np.float32)
    refine = np.zeros((1, n, 3, 2), np.float32)
    logits = np.full((1, n), -9.0, np.float32)
    c = index(1, 2, 3)  # centre (56, 40), stride 16
    coarse[0, c] = [[1.0, 0.0], [0.0, -1.0], [0.5, 0.5]]
    refine[0, c] = [[0.25, 0.0], [0.0, 0.5], [-0.5, 0.0]]
    logits[0, c] = 4.0
    kp = codec.decode({"coarse": coarse, "refine": refine, "logits": logits})["keypoints"]
    np.testing.assert_allclose(kp.numpy()[0, 0, :, :2], [[76, 40], [56, 32], [56, 48]])
    np.testing.assert_allclose(codec.decoded_poses({"coarse": coarse, "refine": refine},
                                                   refined=False).numpy()[0, c],
                               [[72, 40], [56, 24], [64, 48]])


def test_decode_traces_with_unknown_batch_and_rejects_bad_shapes():
    codec = codec_for()
    n = codec.num_candidates
    decode = tf.function(codec.decode, input_signature=[{
        "coarse": tf.TensorSpec([None, n, 3, 2], tf.float32),
        "refine": tf.TensorSpec([None, n, 3, 2], tf.float32),
        "logits": tf.TensorSpec([None, n], tf.float32)}])
    rng = np.random.default_rng(8)
    gt = synthetic_people(rng, SIZE, 3, cell=32, jitter=6.0)
    targets = batch(codec.encode(gt, tf.ones([SIZE, SIZE])),
                    codec.encode(gt[:1], tf.ones([SIZE, SIZE])))
    outputs = {k: v for k, v in codec.oracle_outputs(targets).items() if "heatmaps" not in k}
    poses = decode(outputs)
    assert poses["num_people"].numpy().tolist() == [16, 1]
    with pytest.raises(ValueError, match="336 candidates"):
        codec.decode({"coarse": tf.zeros([1, 335, 3, 2]), "refine": tf.zeros([1, 335, 3, 2]),
                      "logits": tf.zeros([1, 335])})


def test_noise_outputs_are_finite_and_bounded():
    codec = codec_for()
    n = codec.num_candidates
    rng = np.random.default_rng(7)
    noise = {"coarse": rng.normal(0, 3, (2, n, 3, 2)).astype(np.float32),
             "refine": rng.normal(0, 1, (2, n, 3, 2)).astype(np.float32),
             "logits": rng.normal(0, 3, (2, n)).astype(np.float32)}
    noise["logits"][1] = -20.0
    poses = {k: v.numpy() for k, v in codec.decode(noise).items()}
    for v in poses.values():
        assert np.isfinite(v).all()
    k = poses["num_people"]
    assert 0 < k[0] <= 30 and k[1] == 0
    assert (np.diff(poses["scores"][0, :k[0]]) <= 0).all()


# -- flip -----------------------------------------------------------------------------------------

def test_flip_outputs_map_the_flipped_oracle_back():
    spec = get_spec("coco")
    codec = PosedetCodec(PosedetConfig(), spec, 128)
    rng = np.random.default_rng(3)
    gt = synthetic_people(rng, 128, 17, cell=64, jitter=25.0, unlabelled=4)
    gt[..., :2] = np.clip(gt[..., :2], 0.3, 127.7)
    flipped = gt[:, spec.flip_index].copy()
    flipped[..., 0] = np.where(flipped[..., 2] > 0, 128.0 - flipped[..., 0], 0.0)
    t1 = {k: v[None] for k, v in encode(codec, gt).items()}
    t2 = {k: v[None] for k, v in encode(codec, flipped).items()}
    back = {k: v.numpy() for k, v in codec.flip_outputs(codec.oracle_outputs(t2)).items()}
    want = {k: v.numpy() for k, v in codec.oracle_outputs(t1).items()}
    assert set(back) == set(want)
    for key in want:  # centroids are not on cell borders: the assigned candidates mirror
        np.testing.assert_allclose(back[key], want[key], atol=1e-4, err_msg=key)
    poses = codec.decode(back)
    match_people(poses["keypoints"].numpy()[0], int(poses["num_people"][0]), gt, tol=1e-3)


# -- config ---------------------------------------------------------------------------------------

def test_config_errors_name_the_key():
    for kw, key in [({"strides": [16, 8]}, "strides"),
                    ({"level_boundaries": [64.0]}, "level_boundaries"),
                    ({"level_boundaries": [128.0, 64.0]}, "level_boundaries"),
                    ({"cls_neg": 0.7}, "cls_neg"),
                    ({"sigma": 0.0}, "sigma"),
                    ({"max_people": 400}, "max_people"),
                    ({"strides": [8, 16, 48], "level_boundaries": [1.0, 2.0]}, "strides")]:
        with pytest.raises(ConfigError, match=key):
            codec_for(**kw)


def test_default_config_is_the_paper_and_reference():
    cfg = PosedetConfig()
    assert cfg.strides == [8, 16, 32] and cfg.level_boundaries == [64.0, 128.0]
    assert (cfg.centroid, cfg.min_keypoints, cfg.sigma) == ("keypoints", 3, 2.0)
    assert (cfg.refine_pos, cfg.cls_pos, cfg.cls_neg, cfg.refine_best) == (0.7, 0.6, 0.5, 0.52)
    assert (cfg.score_threshold, cfg.top_k, cfg.nms, cfg.nms_threshold) == (0.05, 500, "oks", 0.2)
    assert (cfg.oks_min_area, cfg.oks_area_factor) == (32.0 * 32.0, 0.5)
