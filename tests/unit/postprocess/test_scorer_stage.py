"""The pose-scorer training stage (tfpose.training.scorer): OKS targets, candidate collection on the
real coco_mini images, fitting, atomic weights and the stage end to end with a toy codec/method."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tfpose import config as config_module
from tfpose import registry
from tfpose.config import config_from_dict
from tfpose.data.readers import read_split
from tfpose.evaluation.oks import oks
from tfpose.keypoints import get_spec, spec_from_dict
from tfpose.postprocess.scoring import (SCORER_WEIGHTS, build_scorer, num_pose_features,
                                        pose_features)
from tfpose.training import scorer as stage
from tfpose.training.checkpoint import CheckpointError, CheckpointStore

MAX_PEOPLE = 16


# --- targets and statistics -----------------------------------------------------------------------


def test_oks_targets_hand_made():
    """Two keypoints, sigma 0.1 (k = 0.2), area 100: OKS = mean over labelled of
    exp(-d^2 / (2 * area * k^2)) = exp(-d^2 / 8); best over the people."""
    sigmas = [0.1, 0.1]
    gt = np.array([[[10, 10, 2], [20, 10, 2]],
                   [[100, 100, 2], [110, 100, 0]]], np.float32)  # person 2: one labelled kp
    areas = np.array([100.0, 100.0])
    cand = np.array([[[10, 12, 1], [20, 10, 1]],      # person 1, one kp 2 px off
                     [[101, 100, 1], [500, 500, 1]],  # person 2 (only kp 0 counts), 1 px off
                     [[300, 300, 1], [300, 300, 1]]], np.float32)  # nobody
    got = stage.oks_targets(cand, gt, areas, sigmas)
    want = np.array([(np.exp(-4 / 8) + 1) / 2, np.exp(-1 / 8), 0.0])
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    # no ground-truth person: target 0; no candidate: empty
    np.testing.assert_array_equal(
        stage.oks_targets(cand, np.zeros([0, 2, 3]), np.zeros([0]), sigmas), np.zeros(3))
    assert stage.oks_targets(np.zeros([0, 2, 3]), gt, areas, sigmas).shape == (0,)


def test_naive_scores():
    kpts = np.zeros([2, 3, 3], np.float32)
    kpts[0, :, 2] = [0.3, 0.6, 0.9]
    kpts[1, :, 2] = [1.0, 1.0, 0.0]
    np.testing.assert_allclose(stage.naive_scores(kpts, np.array([0.5, 1.0])),
                               [0.3, 2 / 3], rtol=1e-6)


def test_correlations_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    b[:20] = np.round(b[:20])  # some ties
    a[50:60] = 1.0
    assert stage.spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0], abs=1e-12)
    assert stage.pearson(a, b) == pytest.approx(scipy_stats.pearsonr(a, b)[0], abs=1e-12)
    assert np.isnan(stage.spearman([1.0], [2.0])) and np.isnan(stage.pearson([1, 1], [1, 2]))


def test_split_train_val_seeded_and_disjoint():
    train, val = stage.split_train_val(1000, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(1000))
    again = stage.split_train_val(1000, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(stage.split_train_val(1000, seed=4)[1], val)
    assert [len(x) for x in stage.split_train_val(5, 0)] == [4, 1]
    assert [len(x) for x in stage.split_train_val(1, 0)] == [1, 0]


# --- fitting ------------------------------------------------------------------------------------


def synthetic_problem(spec, n, seed, size=256.0):
    """Candidates around known true poses: each keypoint is either right (2 px noise, heat in
    [0.3, 1]) or mis-grouped (40 px off, heat in [0, 0.6]); target = the candidate's real OKS
    against its true pose. Features as decode computes them (input pixels, scale S)."""
    rng = np.random.default_rng(seed)
    k = spec.num_keypoints
    template = rng.uniform(-0.5, 0.5, [k, 2])
    scale = rng.uniform(40, 120, [n, 1, 1])
    true = template[None] * scale + rng.uniform(60, 200, [n, 1, 2]) + rng.normal(0, 2, [n, k, 2])
    wrong = rng.uniform(0, 1, [n, k]) < rng.uniform(0, 0.6, [n, 1])
    cand = true + wrong[..., None] * rng.normal(0, 40, [n, k, 2])
    heat = np.where(wrong, rng.uniform(0, 0.6, [n, k]), rng.uniform(0.3, 1.0, [n, k]))
    kpts = np.concatenate([cand, heat[..., None]], -1).astype(np.float32)
    gt = np.concatenate([true, np.full([n, k, 1], 2.0)], -1)
    y = np.array([stage.oks_targets(kpts[i:i + 1], gt[i:i + 1], [scale[i, 0, 0] ** 2],
                                    spec.sigmas)[0] for i in range(n)])
    return pose_features(kpts, spec, size).numpy(), y.astype(np.float32), heat.mean(1)


def test_fit_scorer_learns_oks_of_synthetic_candidates():
    spec = get_spec("coco")
    x, y, naive = synthetic_problem(spec, 3000, seed=0)
    model, stats = stage.fit_scorer(x, y, spec, epochs=15, learning_rate=1e-3, seed=0,
                                    naive=naive)
    assert stats["train_candidates"] == 2700 and stats["val_candidates"] == 300
    baseline = float(np.var(y))  # the MSE of predicting the mean OKS
    assert stats["train_mse"] < 0.1 * stats["initial_train_mse"]
    assert stats["val_mse"] < 0.4 * baseline
    # heat and shape rank the candidates better than the mean heat value alone
    assert stats["val_spearman"] > 0.85
    assert stats["val_spearman"] > stats["naive_val_spearman"] + 0.03
    assert stats["val_pearson"] > stats["naive_val_pearson"]
    # reproducible with the same seed
    _, again = stage.fit_scorer(x, y, spec, epochs=1, learning_rate=1e-3, seed=1)
    _, again2 = stage.fit_scorer(x, y, spec, epochs=1, learning_rate=1e-3, seed=1)
    assert again["val_mse"] == again2["val_mse"]


def test_fit_scorer_checks_shapes():
    spec = get_spec("coco")
    with pytest.raises(ValueError, match="disagree"):
        stage.fit_scorer(np.zeros([4, 74]), np.zeros([3]), spec, epochs=1, learning_rate=1e-3,
                         seed=0)


def test_save_weights_atomic_round_trip(tmp_path):
    spec = get_spec("crowdpose")
    model = build_scorer(spec, seed=1)
    path = str(tmp_path / "run" / SCORER_WEIGHTS)
    assert stage.save_weights_atomic(model, path) == path
    assert os.listdir(tmp_path / "run") == [SCORER_WEIGHTS]  # no temporary file left
    loaded = build_scorer(spec, seed=2)
    loaded.load_weights(path)
    x = np.random.default_rng(0).normal(size=[3, num_pose_features(spec)]).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    stage.save_weights_atomic(loaded, path)  # overwrite in place
    assert os.listdir(tmp_path / "run") == [SCORER_WEIGHTS]


# --- collection on real images ------------------------------------------------------------------


class PassThroughCodec:
    """Encodes the ground truth padded to MAX_PEOPLE; its candidates are those people, as the
    network outputs ``{"people": ...}`` give them (heat 1 for labelled keypoints)."""

    def __init__(self, spec):
        self.spec = spec

    def encode(self, keypoints, valid_mask):
        del valid_mask
        k = self.spec.num_keypoints
        n = tf.minimum(tf.shape(keypoints)[0], MAX_PEOPLE)
        people = tf.pad(keypoints[:n], [[0, MAX_PEOPLE - n], [0, 0], [0, 0]])
        return {"people": tf.ensure_shape(people, [MAX_PEOPLE, k, 3])}

    def decode_candidates(self, outputs):
        people = outputs["people"]
        labelled = people[..., 2] > 0
        heat = tf.cast(labelled, tf.float32)
        return {"keypoints": tf.concat([people[..., :2], heat[..., None]], -1),
                "center_scores": tf.fill(tf.shape(people)[:2], 0.5),
                "valid": tf.reduce_any(labelled, -1)}


def coco_config(data_dir, input_size=128, codec=None):
    return config_from_dict({
        "codec": codec or {"type": "ae"}, "seed": 0,
        "data": {"keypoints": "coco", "input_size": input_size, "parallel_calls": 1,
                 "deterministic": True,
                 "train": {"annotations": str(data_dir / "coco_mini" / "test_coco.json"),
                           "images": str(data_dir / "coco_mini")}},
        "eval": {"batch_size": 3}})


def test_collect_scorer_data_oracle_candidates(data_dir):
    """Ground-truth candidates in input pixels map back to OKS 1 against themselves; shifted ones
    get the OKS of the shift in original pixels."""
    cfg = coco_config(data_dir)
    spec = cfg.spec
    codec = PassThroughCodec(spec)
    records = read_split(cfg.data.train, spec)
    by_id = {r.image_id: r for r in records}

    data = stage.collect_scorer_data(cfg, codec, lambda b: b["targets"], 0, encode_targets=True)
    assert data["num_images"] == len(records) == 4
    n = sum(r.num_people for r in records)
    assert data["features"].shape == (n, 74) and data["oks"].shape == (n,)
    np.testing.assert_allclose(data["oks"], 1.0, atol=1e-5)
    np.testing.assert_allclose(data["naive_scores"],
                               0.5 * data["features"][:, :17].mean(1), rtol=1e-6)
    assert sorted(set(data["image_ids"].tolist())) == sorted(by_id)

    shift = 2.0  # input pixels, along x
    shifted = stage.collect_scorer_data(
        cfg, codec, lambda b: {"people": b["targets"]["people"] + [shift, 0.0, 0.0]},
        max_images=2, encode_targets=True)
    assert shifted["num_images"] == 2  # stops inside the first batch of 3
    ids = list(dict.fromkeys(shifted["image_ids"].tolist()))
    want = []
    for image_id in ids:
        r = by_id[image_id]
        ratio = max(r.height, r.width) / 128.0  # letterbox: input px -> original px
        moved = r.keypoints.copy()
        moved[..., 0] += shift * ratio
        want.append(oks(moved, r.keypoints, r.areas, spec.sigmas).max(1))
    np.testing.assert_allclose(shifted["oks"], np.concatenate(want), rtol=1e-4, atol=1e-5)
    assert (shifted["oks"] < 1.0).all()
    # features are taken in INPUT pixels with scale S: the shift leaves the shape alone
    first = data["image_ids"] == ids[0]
    np.testing.assert_allclose(shifted["features"][shifted["image_ids"] == ids[0]],
                               data["features"][first], atol=1e-5)


def test_collect_scorer_data_image_without_people(data_dir):
    cfg = coco_config(data_dir)
    records = read_split(cfg.data.train, cfg.spec)
    empty = [dataclasses.replace(r, keypoints=np.zeros([0, 17, 3], np.float32),
                                 boxes=np.zeros([0, 4], np.float32),
                                 areas=np.zeros([0], np.float32)) for r in records[:1]]
    k = cfg.spec.num_keypoints

    def outputs_fn(batch):  # one made-up candidate per image
        b = tf.shape(batch["image"])[0]
        return {"people": tf.ones([b, MAX_PEOPLE, k, 3]) * tf.constant([50.0, 60.0, 1.0])}

    data = stage.collect_scorer_data(cfg, PassThroughCodec(cfg.spec), outputs_fn,
                                     records=empty)
    assert data["oks"].shape == (MAX_PEOPLE,)
    np.testing.assert_array_equal(data["oks"], 0.0)


def test_collect_scorer_data_with_dekr_oracle(data_dir):
    """The real dekr codec on its own oracle outputs: one candidate per person, each with an OKS
    near 1 against the annotations (the codec's upper bound at 256 px)."""
    from tfpose.registry import build_codec

    cfg = coco_config(data_dir, input_size=256, codec={"type": "dekr"})
    codec = build_codec(cfg)
    records = read_split(cfg.data.train, cfg.spec)
    data = stage.collect_scorer_data(cfg, codec, lambda b: codec.oracle_outputs(b["targets"]),
                                     encode_targets=True, records=records)
    assert data["oks"].shape == (sum(r.num_people for r in records),)
    assert data["oks"].min() > 0.95
    assert (data["naive_scores"] > 0.5).all()


# --- the stage end to end -----------------------------------------------------------------------


# 16 joints (the MPII reader checks the count), a 2-stick skeleton: F = 16 + 6
TOY_SPEC = {"names": [f"j{i}" for i in range(16)], "sigmas": [0.08] * 16,
            "skeleton": [[0, 1], [1, 2]]}


@dataclasses.dataclass
class ToyScorerCodecConfig:
    max_people: int = 4


def make_toy_codec_class():
    from tfpose.codecs.base import Codec

    class ToyScorerCodec(Codec):
        """Candidates straight from a [B, P, K, 3] network output (x, y in 0..1 of the input)."""

        name = "toy_scorer"
        config_class = ToyScorerCodecConfig

        def decode_candidates(self, outputs):
            pose = outputs["pose"]
            xy = pose[..., :2] * float(self.input_size)
            return {"keypoints": tf.concat([xy, pose[..., 2:]], -1),
                    "center_scores": tf.reduce_mean(pose[..., 2], -1),
                    "valid": tf.ones(tf.shape(pose)[:2], tf.bool)}

    return ToyScorerCodec


def toy_build_model(cfg):
    import keras

    p, k = cfg.codec.max_people, cfg.spec.num_keypoints
    images = keras.Input((cfg.data.input_size, cfg.data.input_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(images))
    x = keras.layers.Dense(p * k * 3, activation="sigmoid",
                           kernel_initializer=keras.initializers.RandomNormal(seed=0))(x)
    return keras.Model(images, {"pose": keras.layers.Reshape((p, k, 3))(x)})


@pytest.fixture
def toy_stage(monkeypatch, data_dir, tmp_path):
    """A registered toy codec + method and a config whose run dir has no checkpoint yet."""
    monkeypatch.setitem(registry.CODECS, "toy_scorer", make_toy_codec_class())
    monkeypatch.setitem(config_module._SECTIONS["codec"], "toy_scorer", ToyScorerCodecConfig)
    monkeypatch.setitem(registry.METHODS, "toy_scorer",
                        registry.Method(name="toy_scorer", codec="toy_scorer",
                                        build_model=toy_build_model))
    raw_cfg = {"method": "toy_scorer", "codec": {"type": "toy_scorer"}, "seed": 1,
               "data": {"keypoints": TOY_SPEC, "input_size": 64, "parallel_calls": 1,
                        "train": {"annotations": str(data_dir / "mpii_mini" / "test_mpii.json"),
                                  "images": str(data_dir / "mpii_mini"), "format": "mpii"}},
               "train": {"out_dir": str(tmp_path / "run")}, "eval": {"batch_size": 2}}
    return raw_cfg


def test_trained_model_path(tmp_path):
    with pytest.raises(CheckpointError, match="no trained model"):
        stage.trained_model_path(str(tmp_path))
    model = tf.train.Checkpoint(v=tf.Variable(1.0))
    CheckpointStore(str(tmp_path / "checkpoints"), 1).save(model, 5)
    assert stage.trained_model_path(str(tmp_path)) == str(tmp_path)
    CheckpointStore(str(tmp_path / "best"), 1).save(model, 3)
    assert stage.trained_model_path(str(tmp_path)) == str(tmp_path / "best")


def test_train_scorer_end_to_end(toy_stage, tmp_path):
    from tfpose.training.loop import RunArgs

    cfg = config_from_dict(toy_stage)
    out_dir = cfg.train.out_dir
    with pytest.raises(CheckpointError, match="no trained model"):
        stage.train_scorer(cfg, RunArgs(), epochs=1)

    model = toy_build_model(cfg)
    CheckpointStore(os.path.join(out_dir, "checkpoints"), 1).save(
        tf.train.Checkpoint(model=model), 7)
    result = stage.train_scorer(cfg, RunArgs(stage="scorer"), epochs=2, learning_rate=1e-3,
                                max_images=3)
    assert result["images"] == 3
    assert result["candidates"] == 3 * 4
    assert result["train_candidates"] + result["val_candidates"] == 12
    assert result["checkpoint"].endswith(os.path.join("checkpoints", "ckpt-7", "ckpt"))
    weights = os.path.join(out_dir, SCORER_WEIGHTS)
    assert result["weights"] == weights and os.path.isfile(weights)
    for key in ("train_mse", "val_mse", "val_spearman", "naive_val_spearman", "val_pearson",
                "naive_val_pearson"):
        assert key in result
    scorer = build_scorer(spec_from_dict(TOY_SPEC))
    scorer.load_weights(weights)
    assert not [n for n in os.listdir(out_dir) if n.startswith(".tmp")]
