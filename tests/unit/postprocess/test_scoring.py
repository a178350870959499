"""Pose-scoring features and network (tfpose.postprocess.scoring; DEKR paper 003 Sec. 3.2)."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.keypoints import get_spec, spec_from_dict
from tfpose.postprocess.scoring import (SCORER_WEIGHTS, build_scorer, num_pose_features,
                                        pose_features)


def reference_features(pose: np.ndarray, spec, scale: float) -> np.ndarray:
    """One pose [K, 3] -> features, written out loop by loop from the paper's definition."""
    out = [float(pose[k, 2]) for k in range(spec.num_keypoints)]
    for i, j in spec.skeleton:
        dx = (float(pose[i, 0]) - float(pose[j, 0])) / scale
        dy = (float(pose[i, 1]) - float(pose[j, 1])) / scale
        out += [dx, dy, float(np.hypot(dx, dy))]
    return np.asarray(out, np.float32)


def random_poses(shape, k, seed=0, size=512.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, tuple(shape) + (k, 2))
    heat = rng.uniform(0, 1, tuple(shape) + (k, 1))
    return np.concatenate([xy, heat], -1).astype(np.float32)


def test_num_pose_features_counts():
    coco = get_spec("coco")
    assert num_pose_features(coco) == 74  # paper: "74 dimension for the COCO dataset"
    assert num_pose_features(coco) == coco.num_keypoints + 3 * len(coco.skeleton)
    for name in ("crowdpose", "mpii"):
        spec = get_spec(name)
        assert num_pose_features(spec) == spec.num_keypoints + 3 * len(spec.skeleton)
    assert num_pose_features(get_spec("crowdpose")) == 14 + 3 * 14
    assert SCORER_WEIGHTS == "scorer.weights.h5"


@pytest.mark.parametrize("name", ["coco", "crowdpose", "mpii"])
def test_pose_features_match_numpy_reference(name):
    spec = get_spec(name)
    k = spec.num_keypoints
    scale = 512.0
    poses = random_poses([3, 5], k, seed=1)
    got = pose_features(poses, spec, scale).numpy()
    assert got.shape == (3, 5, num_pose_features(spec)) and got.dtype == np.float32
    want = np.stack([[reference_features(p, spec, scale) for p in row] for row in poses])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pose_features_order_and_scaling_by_hand():
    """COCO: the heat values come first, then (dx, dy, d) of stick 0 = (15, 13), then (13, 11)."""
    spec = get_spec("coco")
    pose = np.zeros([17, 3], np.float32)
    pose[:, 2] = np.arange(17) / 100.0
    pose[15, :2] = (100.0, 200.0)
    pose[13, :2] = (70.0, 160.0)
    pose[11, :2] = (70.0, 100.0)
    f = pose_features(pose, spec, 256.0).numpy()
    assert f.shape == (74,)
    np.testing.assert_allclose(f[:17], np.arange(17) / 100.0, rtol=1e-6)
    # stick (15, 13): p15 - p13 = (30, 40), length 50
    np.testing.assert_allclose(f[17:20], [30 / 256, 40 / 256, 50 / 256], rtol=1e-6)
    # stick (13, 11): (0, 60), length 60
    np.testing.assert_allclose(f[20:23], [0.0, 60 / 256, 60 / 256], rtol=1e-6, atol=1e-7)
    # the scale divides only the geometric features
    f2 = pose_features(pose, spec, 512.0).numpy()
    np.testing.assert_allclose(f2[:17], f[:17])
    np.testing.assert_allclose(f2[17:], f[17:] / 2, rtol=1e-6)


def test_pose_features_batch_shapes_and_tf_function():
    spec = get_spec("coco")
    poses = random_poses([2, 4], 17, seed=2)
    want = pose_features(poses, spec, 512.0).numpy()
    assert pose_features(poses[0, 0], spec, 512.0).shape == (74,)
    np.testing.assert_allclose(pose_features(poses[0], spec, 512.0).numpy(), want[0])

    fn = tf.function(lambda x: pose_features(x, spec, 512.0),
                     input_signature=[tf.TensorSpec([None, None, 17, 3], tf.float32)])
    np.testing.assert_allclose(fn(poses).numpy(), want, rtol=1e-6)
    static = fn.get_concrete_function().structured_outputs
    assert static.shape.as_list() == [None, None, 74]


def test_pose_features_empty_skeleton_gives_heat_values():
    spec = spec_from_dict({"names": ["a", "b", "c"], "sigmas": [0.1, 0.1, 0.1]})
    assert num_pose_features(spec) == 3
    poses = random_poses([4], 3, seed=3)
    np.testing.assert_array_equal(pose_features(poses, spec, 100.0).numpy(), poses[..., 2])


def test_pose_features_custom_spec_and_bad_shapes():
    spec = spec_from_dict({"names": ["a", "b", "c"], "sigmas": [0.1, 0.1, 0.1],
                           "skeleton": [["c", "a"], ["b", "c"]]})
    pose = np.array([[0, 0, 0.5], [10, 0, 0.25], [3, 4, 1.0]], np.float32)
    f = pose_features(pose, spec, 1.0).numpy()
    np.testing.assert_allclose(f, [0.5, 0.25, 1.0, 3, 4, 5, 7, -4, np.hypot(7, 4)], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 3\]"):
        pose_features(np.zeros([2, 4, 3], np.float32), spec, 1.0)
    with pytest.raises(ValueError, match="scale"):
        pose_features(pose, spec, 0.0)


def test_build_scorer_shapes_and_layers():
    spec = get_spec("coco")
    model = build_scorer(spec)
    x = np.random.default_rng(0).normal(size=[5, 74]).astype(np.float32)
    y = model(x)
    assert tuple(y.shape) == (5, 1) and y.dtype == tf.float32
    dense = [layer for layer in model.layers if hasattr(layer, "units")]
    assert [layer.units for layer in dense] == [256, 256, 1]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "relu", "linear"]
    assert model.count_params() == 74 * 256 + 256 + 256 * 256 + 256 + 256 + 1
    # seeded initialisation is reproducible; CrowdPose gets its own input width
    a, b = build_scorer(spec, seed=3), build_scorer(spec, seed=3)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert build_scorer(get_spec("crowdpose")).input_shape == (None, 56)


def test_scorer_on_features_inside_tf_function():
    """The decode-time path: features of [B, M, K, 3] candidates -> scores [B, M]."""
    spec = get_spec("crowdpose")
    scorer = build_scorer(spec, seed=0)

    @tf.function
    def score(kpts):
        f = pose_features(kpts, spec, 512.0)
        flat = tf.reshape(f, [-1, num_pose_features(spec)])
        return tf.reshape(scorer(flat), tf.shape(kpts)[:2])

    poses = random_poses([2, 3], 14, seed=4)
    got = score(poses).numpy()
    want = scorer(np.stack([reference_features(p, spec, 512.0)
                            for p in poses.reshape(-1, 14, 3)])).numpy().reshape(2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_features_and_scorer_convert_to_tflite(tmp_path, run_tflite):
    """Decode will be exported: features + scorer on [1, M, K, 3] candidates run in LiteRT with
    builtin ops and match TF."""
    import keras

    from tfpose.export.tflite import keras_to_tflite, operator_names

    spec = get_spec("coco")
    scorer = build_scorer(spec, seed=0)

    class Scored(keras.Model):
        def call(self, kpts, training=False):
            f = pose_features(kpts, spec, 512.0)
            return tf.reshape(scorer(tf.reshape(f, [-1, 74]), training=training), [1, 5])

    model = Scored()
    poses = random_poses([1, 5], 17, seed=5)
    want = model(poses).numpy()
    content = keras_to_tflite(model, [tf.TensorSpec([1, 5, 17, 3], tf.float32)], str(tmp_path))
    assert not [op for op in operator_names(content) if op in ("CUSTOM", "DELEGATE")]
    np.testing.assert_allclose(run_tflite(content, poses), want, rtol=1e-4, atol=1e-5)
