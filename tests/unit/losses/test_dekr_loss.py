"""tfpose.losses.dekr: Eqs. (4)-(6) against a numpy reference, zero error, masks, config."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import ConfigError, config_from_dict
from tfpose.losses.dekr import DekrLossConfig, build_dekr_loss, smooth_l1

B, H, W, K = 3, 8, 6, 4


def random_batch(seed=0):
    rng = np.random.default_rng(seed)
    f = np.float32
    heat_weights = rng.choice([0.0, 0.1, 1.0], size=(B, H, W, K + 1)).astype(f)
    offset_weights = rng.uniform(0.05, 0.5, size=(B, H, W, K)).astype(f)
    region = rng.uniform(size=(B, H, W)) < 0.3
    offset_weights *= region[..., None]
    offset_weights[..., 1] *= rng.uniform(size=(B, H, W)) < 0.5  # unlabelled keypoints
    offset_weights[2] = 0.0  # a sample without people
    targets = {
        "heatmaps": rng.uniform(0, 1, (B, H, W, K)).astype(f),
        "center": rng.uniform(0, 1, (B, H, W, 1)).astype(f),
        "heatmap_weights": heat_weights,
        # Errors straddle beta so both smooth-L1 branches are used.
        "offsets": rng.normal(0, 3, (B, H, W, 2 * K)).astype(f),
        "offset_weights": offset_weights,
    }
    outputs = {
        "heatmaps": rng.uniform(0, 1, (B, H, W, K)).astype(f),
        "center": rng.uniform(0, 1, (B, H, W, 1)).astype(f),
        "offsets": targets["offsets"] + rng.normal(0, 0.3, (B, H, W, 2 * K)).astype(f),
    }
    return targets, outputs


def numpy_loss(targets, outputs, hw, cw, ow, beta):
    def sl1(x):
        a = np.abs(x)
        return np.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta) if beta > 0 else a

    t, o = {k: np.float64(v) for k, v in targets.items()}, {k: np.float64(v) for k, v in outputs.items()}
    heat = np.zeros(B)
    center = np.zeros(B)
    offset = np.zeros(B)
    for b in range(B):
        # keypoints and centre: the mean over K + 1 heatmap channels, split in two terms
        error = t["heatmap_weights"][b] * (np.concatenate([o["heatmaps"][b], o["center"][b]], -1)
                                           - np.concatenate([t["heatmaps"][b], t["center"][b]], -1)) ** 2
        heat[b] = hw * error[..., :K].sum() / error.size
        center[b] = cw * error[..., K].sum() / error.size
        total, coordinates = 0.0, 0
        for i in range(H):
            for j in range(W):
                w = t["offset_weights"][b, i, j]
                for k in range(K):
                    if w[k] > 0:
                        coordinates += 2
                    dx = o["offsets"][b, i, j, 2 * k] - t["offsets"][b, i, j, 2 * k]
                    dy = o["offsets"][b, i, j, 2 * k + 1] - t["offsets"][b, i, j, 2 * k + 1]
                    total += w[k] * (sl1(dx) + sl1(dy))
        offset[b] = ow * total / max(1, coordinates)
    return {"heatmap": heat, "center": center, "offset": offset}


@pytest.mark.parametrize("weights", [(1.0, 1.0, 0.01, 1.0 / 9.0), (0.5, 2.0, 0.1, 0.5), (1.0, 1.0, 1.0, 0.0)])
def test_matches_numpy_reference(weights):
    hw, cw, ow, beta = weights
    targets, outputs = random_batch()
    cfg = DekrLossConfig(heatmap_weight=hw, center_weight=cw, offset_weight=ow, smooth_l1_beta=beta)
    got = build_dekr_loss(cfg)(targets, outputs)
    expected = numpy_loss(targets, outputs, hw, cw, ow, beta)
    assert sorted(got) == ["center", "heatmap", "offset"]
    for name, value in got.items():
        assert value.dtype == tf.float32 and tuple(value.shape) == (B,)
        np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-5, atol=1e-8, err_msg=name)
    assert got["offset"].numpy()[2] == 0.0  # no centre pixels: 0, not NaN
    assert (got["offset"].numpy()[:2] > 0).all()


def test_zero_error_gives_zero_loss():
    targets, _ = random_batch(1)
    outputs = {"heatmaps": targets["heatmaps"], "center": targets["center"], "offsets": targets["offsets"]}
    got = build_dekr_loss(DekrLossConfig())(targets, outputs)
    for value in got.values():
        np.testing.assert_array_equal(value.numpy(), np.zeros(B))


def test_masks_select_what_counts():
    targets, outputs = random_batch(2)
    loss = build_dekr_loss(DekrLossConfig())
    base = {k: v.numpy() for k, v in loss(targets, outputs).items()}
    # Errors where every weight is zero change nothing.
    heat_mask = targets["heatmap_weights"] == 0
    off_mask = np.repeat(targets["offset_weights"] == 0, 2, axis=-1)
    changed = {
        "heatmaps": np.where(heat_mask[..., :K], 50.0, outputs["heatmaps"]),
        "center": np.where(heat_mask[..., K:], -50.0, outputs["center"]),
        "offsets": np.where(off_mask, 1e3, outputs["offsets"]),
    }
    got = {k: v.numpy() for k, v in loss(targets, changed).items()}
    for name in base:
        np.testing.assert_allclose(got[name], base[name], rtol=1e-6, err_msg=name)
    # Zero weights everywhere: zero loss whatever the error.
    zero = dict(targets, heatmap_weights=0 * targets["heatmap_weights"],
                offset_weights=0 * targets["offset_weights"])
    for value in loss(zero, outputs).values():
        np.testing.assert_array_equal(value.numpy(), np.zeros(B))
    # The keypoint mask is per channel: channel K weights the centre only.
    only_center = dict(targets, heatmap_weights=np.concatenate(
        [np.zeros((B, H, W, K), np.float32), np.ones((B, H, W, 1), np.float32)], -1))
    got = loss(only_center, outputs)
    assert (got["heatmap"].numpy() == 0).all() and (got["center"].numpy() > 0).all()


def test_offset_normaliser_counts_coordinates():
    # One centre pixel, two labelled keypoints of weight 1 with errors 1 and 2 px in x:
    # sum = (1 - beta/2) + (2 - beta/2); divided by the 4 supervised coordinates (not 1 pixel).
    targets, outputs = random_batch(3)
    targets = dict(targets, offsets=np.zeros((B, H, W, 2 * K), np.float32),
                   offset_weights=np.zeros((B, H, W, K), np.float32))
    targets["offset_weights"][0, 2, 3, [0, 2]] = 1.0
    offsets = np.zeros((B, H, W, 2 * K), np.float32)
    offsets[0, 2, 3, 0] = 1.0
    offsets[0, 2, 3, 4] = 2.0
    offsets[0, 5, 5] = 7.0  # outside the region: ignored
    beta = 1.0 / 9.0
    got = build_dekr_loss(DekrLossConfig(offset_weight=1.0))(targets, dict(outputs, offsets=offsets))
    np.testing.assert_allclose(got["offset"].numpy(), [(3.0 - beta) / 4, 0.0, 0.0], rtol=1e-6)


def test_graph_mode_dynamic_batch_and_gradients():
    targets, outputs = random_batch(4)
    loss = build_dekr_loss(DekrLossConfig())
    spec = {k: tf.TensorSpec((None,) + v.shape[1:], tf.float32) for k, v in outputs.items()}
    pred = {k: tf.Variable(v) for k, v in outputs.items()}

    @tf.function(input_signature=[{k: tf.TensorSpec((None,) + v.shape[1:], tf.float32)
                                   for k, v in targets.items()}, spec])
    def fn(t, o):
        return loss(t, o)

    eager = loss(targets, outputs)
    graph = fn(targets, outputs)
    for name in eager:
        np.testing.assert_allclose(graph[name].numpy(), eager[name].numpy(), rtol=1e-6)
    with tf.GradientTape() as tape:
        total = tf.add_n([tf.reduce_sum(v) for v in loss(targets, pred).values()])
    grads = tape.gradient(total, list(pred.values()))
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


def test_smooth_l1_branches():
    x = tf.constant([-1.0, -0.05, 0.0, 0.05, 1.0])
    np.testing.assert_allclose(smooth_l1(x, 0.1).numpy(), [0.95, 0.0125, 0.0, 0.0125, 0.95], rtol=1e-6)
    np.testing.assert_allclose(smooth_l1(x, 0.0).numpy(), np.abs(x.numpy()))


def test_config_section_defaults_and_errors():
    cfg = config_from_dict({"codec": {"type": "ae"}, "loss": {"type": "dekr"}})
    assert cfg.loss == DekrLossConfig(1.0, 1.0, 0.01, 1.0 / 9.0)
    assert build_dekr_loss(cfg) is not None
    with pytest.raises(ConfigError, match="loss.offset_weight"):
        config_from_dict({"codec": {"type": "ae"}, "loss": {"type": "dekr", "offset_weight": -1}})
    with pytest.raises(ConfigError, match="loss.sigma"):
        config_from_dict({"codec": {"type": "ae"}, "loss": {"type": "dekr", "sigma": 2}})
