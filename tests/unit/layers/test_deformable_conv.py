"""tfpose.layers.deformable_conv: numpy reference, 1x1-conv case, gradients, config, TFLite."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operator_names
from tfpose.layers import DeformableConv2D


def np_sample(fmap, x, y):
    """One bilinear sample of fmap [H, W, C] at continuous (x, y); pixel (i, j) centred at
    (j + 0.5, i + 0.5); each of the 4 neighbours weighs (1 - |dx|)(1 - |dy|), zero outside."""
    h, w, c = fmap.shape
    u, v = x - 0.5, y - 0.5
    out = np.zeros(c)
    for row in (math.floor(v), math.floor(v) + 1):
        for col in (math.floor(u), math.floor(u) + 1):
            if 0 <= row < h and 0 <= col < w:
                out += (1.0 - abs(u - col)) * (1.0 - abs(v - row)) * fmap[row, col]
    return out


def np_deformable_conv(features, offsets, kernel, bias):
    """out[b, i, j] = sum_p kernel[p]^T x(j + 0.5 + dx_p, i + 0.5 + dy_p) + bias, with loops."""
    b, h, w, _ = features.shape
    num_points, _, filters = kernel.shape
    out = np.zeros((b, h, w, filters))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for p in range(num_points):
                    dx, dy = offsets[n, i, j, 2 * p], offsets[n, i, j, 2 * p + 1]
                    out[n, i, j] += np_sample(features[n], j + 0.5 + dx, i + 0.5 + dy) @ kernel[p]
                out[n, i, j] += bias
    return out


def random_offsets(rng, shape, spread):
    """Offsets in [-spread, spread]; a third of them integers, so those points sit at exact
    pixel centres (inside the map or a whole number of pixels outside it)."""
    offsets = rng.uniform(-spread, spread, size=shape)
    integer = rng.random(size=shape[:-1] + (shape[-1] // 2,)) < 1 / 3
    integer = np.repeat(integer, 2, axis=-1)
    return np.where(integer, np.round(offsets), offsets)


@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_numpy_reference(use_bias):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    offsets = random_offsets(rng, (2, 5, 6, 8), spread=7.0).astype(np.float32)
    points_x = np.arange(6)[None, None, :, None] + 0.5 + offsets[..., 0::2]
    points_y = np.arange(5)[None, :, None, None] + 0.5 + offsets[..., 1::2]
    outside = (points_x < -0.5) | (points_x > 6.5) | (points_y < -0.5) | (points_y > 5.5)
    at_centre = (points_x % 1 == 0.5) & (points_y % 1 == 0.5)
    assert outside.mean() > 0.2 and (at_centre & outside).any()
    assert (at_centre & ~outside).sum() > 10

    layer = DeformableConv2D(4, 4, use_bias=use_bias, bias_initializer="random_normal")
    y = layer([features, offsets]).numpy()
    bias = layer.bias.numpy() if use_bias else np.zeros(4)
    expected = np_deformable_conv(
        features.astype(np.float64), offsets.astype(np.float64), layer.kernel.numpy(), bias
    )
    assert y.shape == (2, 5, 6, 4)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_integer_offset_with_identity_kernel_shifts_the_map():
    # One point at offset (dx, dy) = (2, -1) and W_0 = I: out[i, j] = x[i - 1, j + 2], 0 outside.
    features = np.random.default_rng(1).normal(size=(1, 4, 5, 2)).astype(np.float32)
    offsets = np.tile(np.array([2.0, -1.0], np.float32), (1, 4, 5, 1))
    layer = DeformableConv2D(2, 1, use_bias=False)
    layer.build([features.shape, offsets.shape])
    layer.kernel.assign(np.eye(2)[None])
    expected = np.zeros_like(features)
    expected[:, 1:, :3] = features[:, :3, 2:]
    np.testing.assert_allclose(layer([features, offsets]).numpy(), expected, atol=1e-6)


def test_zero_offsets_one_point_equals_1x1_conv():
    x = np.random.default_rng(2).normal(size=(2, 6, 7, 5)).astype(np.float32)
    layer = DeformableConv2D(3, 1, bias_initializer="random_normal")
    y = layer([x, np.zeros((2, 6, 7, 2), np.float32)])
    conv = keras.layers.Conv2D(3, 1)
    conv.build(x.shape)
    conv.set_weights([layer.kernel.numpy()[None], layer.bias.numpy()])
    np.testing.assert_allclose(y.numpy(), conv(x).numpy(), atol=1e-5)


def test_gradients_reach_features_offsets_and_kernel():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(1, 4, 4, 2))
    # Fractional offsets away from pixel boundaries (the sampler is not differentiable there),
    # with some points partly or fully outside the map.
    offsets = np.round(rng.uniform(-3, 3, size=(1, 4, 4, 6))) + rng.uniform(0.2, 0.8, (1, 4, 4, 6))
    weights = rng.normal(size=(1, 4, 4, 3))
    layer = DeformableConv2D(3, 3, dtype="float64")
    layer.build([features.shape, offsets.shape])
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()

    x, o = tf.constant(features), tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch([x, o])
        loss = tf.reduce_sum(layer([x, o]) * weights)
    grads = tape.gradient(loss, [x, o, layer.kernel, layer.bias])
    for g in grads:
        assert np.all(np.isfinite(g.numpy())) and np.any(g.numpy() != 0)

    def reference_loss(offsets_):
        return np.sum(np_deformable_conv(features, offsets_, kernel, bias) * weights)

    # Central differences of the numpy reference for every offset channel.
    eps = 1e-4
    numeric = np.zeros_like(offsets)
    for index in np.ndindex(offsets.shape):
        step = np.zeros_like(offsets)
        step[index] = eps
        numeric[index] = reference_loss(offsets + step) - reference_loss(offsets - step)
    numeric /= 2 * eps
    np.testing.assert_allclose(grads[1].numpy(), numeric, atol=1e-6)
    assert np.count_nonzero(numeric) > offsets.size // 2


def test_dynamic_spatial_size_and_mixed_precision():
    features = keras.Input((None, None, 3))
    offsets = keras.Input((None, None, 4))
    model = keras.Model([features, offsets], DeformableConv2D(5, 2)([features, offsets]))
    assert model([tf.zeros((2, 3, 7, 3)), tf.zeros((2, 3, 7, 4))]).shape == (2, 3, 7, 5)

    # Width 1100: float16 cannot hold pixel centres j + 0.5 past 1024; the points must not care.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 2, 1100, 2)).astype(np.float32)
    o = rng.uniform(-2, 2, size=(1, 2, 1100, 4)).astype(np.float32)
    half = DeformableConv2D(3, 2, dtype="mixed_float16")
    y = half([x, o])
    assert y.dtype == "float16"
    full = DeformableConv2D(3, 2)
    full([x, o])
    full.set_weights(half.get_weights())
    np.testing.assert_allclose(y.numpy().astype(np.float32), full([x, o]).numpy(), atol=5e-2)


def test_offsets_keep_float32_under_mixed_precision():
    # A ramp feature (value = x - 1000 at pixel centre x) sampled 1000.3 px right of pixel 0's
    # centre reads 0.8; an offset rounded to float16 (1000.5) would read 1.0.
    width = 1100
    features = (np.arange(width, dtype=np.float32) + 0.5 - 1000.0).reshape(1, 1, width, 1)
    offsets = np.zeros((1, 1, width, 2), np.float32)
    offsets[0, 0, 0, 0] = 1000.3
    layer = DeformableConv2D(1, 1, use_bias=False, kernel_initializer="ones",
                             dtype="mixed_float16")
    out = layer([features, offsets])
    assert out.dtype == "float16"
    assert abs(float(out[0, 0, 0, 0]) - 0.8) < 0.01


def test_validation_messages():
    with pytest.raises(ValueError, match="Received: filters=0"):
        DeformableConv2D(0, 3)
    with pytest.raises(ValueError, match="Received: num_points=0"):
        DeformableConv2D(4, 0)
    with pytest.raises(ValueError, match="Received: num_points=2.5"):
        DeformableConv2D(4, 2.5)
    x = tf.zeros((1, 5, 5, 3))
    wrong_channels = r"2 \* num_points = 6\]. Received: offsets shape=\(1, 5, 5, 4\)"
    with pytest.raises(ValueError, match=wrong_channels):
        DeformableConv2D(4, 3)([x, tf.zeros((1, 5, 5, 4))])
    with pytest.raises(ValueError, match="same height and width"):
        DeformableConv2D(4, 3)([x, tf.zeros((1, 5, 4, 6))])
    with pytest.raises(ValueError, match=r"expects inputs \[features, offsets\]"):
        DeformableConv2D(4, 3)(x)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]. Received: features shape=\(5, 5, 3\)"):
        DeformableConv2D(4, 3)([x[0], tf.zeros((1, 5, 5, 6))])
    with pytest.raises(ValueError, match="must be known"):
        DeformableConv2D(4, 3).build([(1, 5, 5, None), (1, 5, 5, 6)])


def test_get_config_round_trip_and_keras_file(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 5, 6, 3)).astype(np.float32)
    o = rng.uniform(-3, 3, size=(1, 5, 6, 4)).astype(np.float32)
    layer = DeformableConv2D(
        4, 2, use_bias=False, kernel_initializer="he_normal", bias_initializer="ones", name="dcn"
    )
    layer([x, o])
    clone = DeformableConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone([x, o])
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone([x, o]).numpy(), layer([x, o]).numpy(), atol=1e-6)

    features = keras.Input((5, 6, 3))
    offsets = keras.Input((5, 6, 4))
    y = DeformableConv2D(6, 2, bias_initializer="random_normal", name="pose_embedding")(
        [features, offsets]
    )
    model = keras.Model([features, offsets], y)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    np.testing.assert_allclose(loaded([x, o]).numpy(), model([x, o]).numpy(), atol=1e-6)


def test_tflite_conversion_uses_delegate_ops_only(tmp_path, run_tflite):
    # Pose-embedding shape: offsets predicted from the features by a conv, then the DCN.
    inputs = keras.Input((8, 8, 4), batch_size=1)
    offsets = keras.layers.Conv2D(10, 3, padding="same", kernel_initializer="random_normal")(inputs)
    model = keras.Model(inputs, DeformableConv2D(6, 5)([inputs, offsets]))
    content = keras_to_tflite(model, [tf.TensorSpec((1, 8, 8, 4), tf.float32)], str(tmp_path))
    used = operator_names(content)
    assert used.count("GATHER") == 4 and "GATHER_ND" not in used  # one per bilinear corner
    assert set(used) <= GPU_DELEGATE_OPS, sorted(set(used) - GPU_DELEGATE_OPS)

    x = np.random.default_rng(6).normal(size=(1, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(content, x), model(x, training=False).numpy(), atol=1e-4)
