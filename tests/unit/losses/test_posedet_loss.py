"""tfpose.losses.posedet: OKS assignment on hand-made coarse poses (positive / negative / ignored
sets), the focal and L2 terms against numpy formulas, zero L2 terms for perfect predictions, no
gradient through the assignment, config."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.codecs.posedet import PosedetCodec, PosedetConfig
from tfpose.config import Config, ConfigError, DataConfig, config_from_dict
from tfpose.losses.posedet import (PosedetLossConfig, assign_candidates, build_posedet_loss,
                                   focal_loss)

SPEC = {"name": "tiny", "names": ["a", "b", "c"], "sigmas": [0.05, 0.05, 0.05]}
SIZE = 64  # strides 8 and 16: 8 x 8 + 4 x 4 = 80 candidates
A = [[20.0, 20.0, 2], [36.0, 20.0, 2], [28.0, 40.0, 2]]  # box 16 x 20, centroid (28, 26.7)
B = [[44.0, 44.0, 2], [56.0, 44.0, 1], [50.0, 56.0, 2]]  # box 12 x 12, centroid (50, 48)
# s^2 = 0.5 * max(box area, 1024) = 512 for both; a pose shifted by r from a person has
# OKS = exp(-r^2 / (2 * 512 * (2 * 0.05)^2)) = exp(-r^2 / 10.24)
S2_VAR = 2 * 512 * 0.1 ** 2


def shift_for(oks):
    return float(np.sqrt(-S2_VAR * np.log(oks)))


def make_cfg(**codec):
    codec = {"strides": [8, 16], "level_boundaries": [64.0], "max_people": 4, **codec}
    return Config(data=DataConfig(keypoints=SPEC, input_size=SIZE), codec=PosedetConfig(**codec),
                  loss=PosedetLossConfig())


def setup(cfg=None, mask=None):
    """Targets of A and B (and an image without people) and coarse outputs with hand-set OKS:

    candidate -> (person, OKS of its coarse pose): 27 -> (A, 0.8) assigned to A; 10 -> (A, 0.65);
    11 -> (A, 0.55); 12 -> (A, 0.4); 13 -> (A, 0.8) in an ignored region; 54 -> (B, 0.62)
    assigned to B, B's best; 55 -> (B, 0.55). Every other coarse pose collapses on its centre
    (OKS < 0.34 with both)."""
    cfg = cfg or make_cfg()
    codec = PosedetCodec(cfg.codec, cfg.spec, SIZE)
    if mask is None:
        mask = np.ones((SIZE, SIZE), np.float32)
        mask[12, 44] = 0  # centre pixel of candidate 13 (row 1, column 5)
    t1 = codec.encode(np.array([A, B], np.float32), mask)
    t2 = codec.encode(np.zeros((0, 3, 3), np.float32), np.ones((SIZE, SIZE), np.float32))
    targets = {k: tf.stack([t1[k], t2[k]]) for k in t1}
    centres = codec.candidate_centers()
    strides = codec.candidate_strides()
    coarse = np.zeros((2, codec.num_candidates, 3, 2), np.float32)
    for n, who, oks in [(27, A, 0.8), (10, A, 0.65), (11, A, 0.55), (12, A, 0.4), (13, A, 0.8),
                        (54, B, 0.62), (55, B, 0.55)]:
        pose = np.asarray(who, np.float32)[:, :2] + [shift_for(oks), 0.0]
        coarse[0, n] = (pose - centres[n]) / strides[n]
    return codec, targets, coarse


def sets(mask):
    return set(np.flatnonzero(mask).tolist())


# -- assignment -----------------------------------------------------------------------------------

def test_hand_made_case_is_what_the_codec_encodes():
    codec, targets, _ = setup()
    assigned = targets["assigned"].numpy()
    assert {int(n): int(assigned[0, n]) for n in np.flatnonzero(assigned[0] >= 0)} == {27: 0,
                                                                                       54: 1}
    assert (assigned[1] == -1).all()
    assert sets(targets["candidate_valid"].numpy()[0] == 0) == {13}
    np.testing.assert_allclose(targets["people_areas"].numpy()[0, :2], [512, 512])


def test_oks_thresholds_give_positive_negative_and_ignored_sets():
    codec, targets, coarse = setup()
    poses = codec.decoded_poses({"coarse": coarse}, refined=False)
    match = {k: v.numpy() for k, v in assign_candidates(
        poses, targets["people"], targets["people_areas"], targets["candidate_valid"],
        codec.spec.sigmas, codec.config).items()}
    best = match["best_oks"][0]
    for n, oks in [(27, 0.8), (10, 0.65), (11, 0.55), (12, 0.4), (13, 0.8), (54, 0.62),
                   (55, 0.55)]:
        assert best[n] == pytest.approx(oks, abs=1e-5)
    others = np.setdiff1d(np.arange(80), [27, 10, 11, 12, 13, 54, 55])
    assert best[others].max() < 0.34
    # refinement: OKS >= 0.7, plus B's best (0.62 >= 0.52, low-quality match)
    assert sets(match["refine_positive"][0]) == {27, 13, 54}
    assert [match["refine_person"][0, n] for n in (27, 13, 54)] == [0, 0, 1]
    # classification: >= 0.6 positive, < 0.5 negative, between (11, 55) and invalid (13) ignored
    assert sets(match["cls_positive"][0]) == {27, 10, 54}
    assert sets(match["cls_negative"][0]) == set(range(80)) - {27, 10, 54, 11, 55, 13}
    # no people: every valid candidate is a negative
    assert match["best_oks"][1].max() == -1.0 and not match["refine_positive"][1].any()
    assert match["cls_negative"][1].all() and not match["cls_positive"][1].any()

    # without low-quality matches B's best is no refinement positive
    strict = make_cfg(refine_best=1.5).codec
    match = assign_candidates(poses, targets["people"], targets["people_areas"],
                              targets["candidate_valid"], codec.spec.sigmas, strict)
    assert sets(match["refine_positive"].numpy()[0]) == {27, 13}


# -- loss terms -----------------------------------------------------------------------------------

def numpy_focal(logits, positive, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return np.where(positive, -alpha * (1 - p) ** gamma * np.log(p),
                    -(1 - alpha) * p ** gamma * np.log(1 - p))


def test_focal_and_l2_terms_match_numpy():
    cfg = make_cfg()
    codec, targets, coarse = setup(cfg)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 80)).astype(np.float32)
    refine = np.zeros_like(coarse)
    refine[0, 13, 1] = [0.5, -0.25]  # one refined keypoint of candidate 13 moves (stride 8)
    heat = {f"heatmaps_s{s}": rng.uniform(0, 1, targets[f"heatmaps_s{s}"].shape).astype(
        np.float32) for s in (8, 16)}
    out = build_posedet_loss(cfg)(targets, {"coarse": coarse, "refine": refine,
                                            "logits": logits, **heat})
    out = {k: v.numpy() for k, v in out.items()}
    assert set(out) == {"coarse", "refine", "cls", "heatmap"}

    # focal: positives {27, 10, 54}, ignored {11, 55, 13}; image 2: all negatives, 0 positives
    pos = np.zeros((2, 80), bool)
    pos[0, [27, 10, 54]] = True
    used = np.ones((2, 80), bool)
    used[0, [11, 55, 13]] = False
    fl = numpy_focal(logits, pos) * used
    np.testing.assert_allclose(out["cls"], [fl[0].sum() / 3, fl[1].sum() / 1], rtol=1e-5)
    np.testing.assert_allclose(focal_loss(logits, pos, 0.25, 2.0).numpy(),
                               numpy_focal(logits, pos), rtol=1e-5)

    # coarse: the assigned 27 (A, shift r_0.8) and 54 (B, r_0.62), 3 labelled keypoints each,
    # distances in units of 4 strides (stride 8), averaged over the 2 assigned, weight 0.1
    r8, r62 = shift_for(0.8), shift_for(0.62)
    np.testing.assert_allclose(out["coarse"], [0.1 * 3 * (r8 + r62) / 32 / 2, 0], rtol=1e-4)
    # refine: positives 27, 13, 54 (refined = coarse + refine); 13's keypoint 1 moved by
    # (4, -2) px from (36 + r8, 20)
    moved = np.hypot(r8 + 4.0, 2.0)
    want = 0.2 * (3 * r8 + (2 * r8 + moved) + 3 * r62) / 32 / 3
    np.testing.assert_allclose(out["refine"], [want, 0], rtol=1e-4)

    # heatmap: weighted squared error, mean over pixels and types, averaged over the levels
    want = np.mean([np.mean(targets[f"heatmap_weights_s{s}"].numpy()
                            * (heat[f"heatmaps_s{s}"] - targets[f"heatmaps_s{s}"].numpy()) ** 2,
                            axis=(1, 2, 3)) for s in (8, 16)], axis=0)
    np.testing.assert_allclose(out["heatmap"], want, rtol=1e-5)


def test_distance_clamp_and_weights():
    cfg = make_cfg()
    cfg.loss = PosedetLossConfig(coarse_weight=1.0, max_distance=0.1, distance_scale=2.0)
    codec, targets, coarse = setup(cfg)
    out = build_posedet_loss(cfg)(targets, {"coarse": coarse, "refine": np.zeros_like(coarse),
                                            "logits": np.zeros((2, 80), np.float32),
                                            "heatmaps_s8": targets["heatmaps_s8"],
                                            "heatmaps_s16": targets["heatmaps_s16"]})
    r8, r62 = shift_for(0.8), shift_for(0.62)
    d = np.minimum([r8 / 16, r62 / 16], 0.1)  # units of 2 strides, clamped at 0.1
    np.testing.assert_allclose(out["coarse"].numpy(), [3 * d.sum() / 2, 0], rtol=1e-4)
    assert out["heatmap"].numpy().tolist() == [0.0, 0.0]


def test_perfect_predictions_give_zero_l2_terms():
    cfg = make_cfg()
    codec, targets, _ = setup(cfg)
    outputs = codec.oracle_outputs(targets)
    out = {k: v.numpy() for k, v in build_posedet_loss(cfg)(targets, outputs).items()}
    for key in ("coarse", "refine", "heatmap"):
        assert out[key].tolist() == [0.0, 0.0], key
    assert (0 < out["cls"]).all() and (out["cls"] < 1e-6).all()


def test_no_gradient_through_the_assignment():
    cfg = make_cfg()
    codec, targets, coarse = setup(cfg)
    coarse[0, 27, 0] = codec.oracle_outputs(targets)["coarse"].numpy()[0, 27, 0]  # exact keypoint
    coarse_v = tf.Variable(coarse)
    refine_v = tf.Variable(np.random.default_rng(1).normal(0, 0.1, coarse.shape).astype(
        np.float32))
    logits_v = tf.Variable(np.zeros((2, 80), np.float32))
    loss = build_posedet_loss(cfg)
    with tf.GradientTape(persistent=True) as tape:
        out = loss(targets, {"coarse": coarse_v, "refine": refine_v, "logits": logits_v,
                             "heatmaps_s8": targets["heatmaps_s8"],
                             "heatmaps_s16": targets["heatmaps_s16"]})
    # the OKS assignment (cls and refine targets) gives coarse no gradient, nor does the
    # refinement (its target is GT - coarse, Eq. 4)
    assert tape.gradient(out["cls"], coarse_v) is None
    assert tape.gradient(out["refine"], coarse_v) is None
    assert tape.gradient(out["cls"], logits_v).numpy()[0, 27] < 0
    g = tape.gradient(out["coarse"], coarse_v).numpy()
    assert np.isfinite(g).all()  # also at the exact keypoint (distance 0)
    assert not g[0, 27, 0].any() and g[0, 27, 1:].any() and g[0, 54].any()
    assert sets(np.abs(g[0]).sum(axis=(1, 2)) > 0) == {27, 54}  # only the assigned candidates
    gr = tape.gradient(out["refine"], refine_v).numpy()
    assert sets(np.abs(gr[0]).sum(axis=(1, 2)) > 0) == {27, 13, 54} and not gr[1].any()


# -- config ---------------------------------------------------------------------------------------

def test_config_section_and_errors():
    raw = {"data": {"keypoints": SPEC, "input_size": SIZE},
           "codec": {"type": "posedet", "strides": [8, 16], "level_boundaries": [64.0]},
           "loss": {"type": "posedet", "refine_weight": 0.5}}
    cfg = config_from_dict(raw)
    assert isinstance(cfg.loss, PosedetLossConfig) and cfg.loss.refine_weight == 0.5
    assert (cfg.loss.coarse_weight, cfg.loss.cls_weight) == (0.1, 1.0)  # reference weights
    assert (cfg.loss.focal_alpha, cfg.loss.focal_gamma) == (0.25, 2.0)  # focal loss paper
    with pytest.raises(ConfigError, match="loss.focal_alpha"):
        config_from_dict({**raw, "loss": {"type": "posedet", "focal_alpha": 1.5}})
    with pytest.raises(ConfigError, match="distance_scale"):
        config_from_dict({**raw, "loss": {"type": "posedet", "distance_scale": 0.0}})
    with pytest.raises(ConfigError, match="cls_neg"):
        config_from_dict({**raw, "codec": {**raw["codec"], "cls_neg": 0.9}})
    cfg.loss = None
    with pytest.raises(TypeError, match="loss.type: posedet"):
        build_posedet_loss(cfg)
