"""tfpose.layers.adaptive_conv: identity start == Conv2D, numpy reference, config, TFLite."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operator_names
from tfpose.layers.adaptive_conv import AdaptiveConv2D

# The delegate ops (DESIGN.md section 3) adaptive convs with BN, ReLU and a shortcut convert to.
BLOCK_OPS = {
    "ADD", "SUB", "MUL", "MAXIMUM", "MINIMUM", "FLOOR", "CAST", "RESHAPE", "CONCATENATION",
    "SLICE", "GATHER", "CONV_2D", "DEPTHWISE_CONV_2D", "RELU",
}  # fmt: skip


def np_bilinear(features, points):
    """Vectorised numpy reference: features [H, W, C], points [..., 2] (x, y), zero outside."""
    h, w, _ = features.shape
    x = points[..., 0] - 0.5
    y = points[..., 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    out = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            value = features[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
            out = out + (wy * wx * valid)[..., None] * value
    return out


def np_conv3x3_same(x, kernel):
    """x [B, H, W, C], kernel [3, 3, C, F] -> [B, H, W, F] (zero padding, stride 1)."""
    _, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(padded[:, ky : ky + h, kx : kx + w] @ kernel[ky, kx] for ky in range(3) for kx in range(3))


def np_adaptive_conv(x, transform_kernel, transform_bias, kernel, dilation):
    """Sec. 3.1: y(q) = sum_i W_i x(q + T(q) g_i + t(q)), g_i the regular grid of Eq. (3)."""
    b, h, w, _ = x.shape
    t = np_conv3x3_same(x, transform_kernel) + transform_bias  # [B, H, W, 4 or 6]
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for ky, gy in enumerate((-dilation, 0, dilation)):
        for kx, gx in enumerate((-dilation, 0, dilation)):
            dx = t[..., 0] * gx + t[..., 1] * gy
            dy = t[..., 2] * gx + t[..., 3] * gy
            if t.shape[-1] == 6:
                dx, dy = dx + t[..., 4], dy + t[..., 5]
            points = np.stack([jj + 0.5 + dx, ii + 0.5 + dy], axis=-1)  # [B, H, W, 2]
            samples = np.stack([np_bilinear(x[n], points[n]) for n in range(b)])
            out += samples @ kernel[ky, kx]
    return out


@pytest.mark.parametrize("dilation", [1, 2])
def test_identity_start_equals_conv2d(dilation):
    x = np.random.default_rng(0).normal(size=(2, 6, 9, 5)).astype(np.float32)
    layer = AdaptiveConv2D(4, dilation_rate=dilation, use_bias=True, bias_initializer="random_normal")
    y = layer(x)
    conv = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=dilation)
    conv.build(x.shape)
    conv.set_weights([layer.kernel.numpy(), layer.bias.numpy()])
    np.testing.assert_allclose(y.numpy(), conv(x).numpy(), atol=1e-5)
    np.testing.assert_array_equal(layer.transform_bias.numpy(), [1, 0, 0, 1, 0, 0])
    assert not np.any(layer.transform_kernel.numpy())


def test_mixed_precision_keeps_float32_coordinates():
    # Width 1100: float16 cannot hold pixel centres j + 0.5 past 1024; the sampler must not care.
    x = np.random.default_rng(5).normal(size=(1, 3, 1100, 3)).astype(np.float32)
    layer = AdaptiveConv2D(2, dtype="mixed_float16")
    y = layer(x)
    assert y.dtype == "float16"
    conv = keras.layers.Conv2D(2, 3, padding="same", use_bias=False)
    conv.build(x.shape)
    conv.set_weights([layer.kernel.numpy()])
    np.testing.assert_allclose(y.numpy().astype(np.float32), conv(x).numpy(), atol=1e-2)


@pytest.mark.parametrize("use_translation", [True, False])
def test_nonzero_transform_matches_numpy_reference(use_translation):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    layer = AdaptiveConv2D(5, dilation_rate=2, use_translation=use_translation)
    layer.build(x.shape)
    n = layer.num_transform_channels
    angle = 0.6
    rotation_scale = 1.6 * np.array([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)])
    bias = np.concatenate([rotation_scale, [1.3, -0.7]])[:n]
    layer.transform_kernel.assign(0.2 * rng.normal(size=(3, 3, 3, n)))
    layer.transform_bias.assign(bias)
    expected = np_adaptive_conv(
        x.astype(np.float64),
        layer.transform_kernel.numpy().astype(np.float64),
        bias,
        layer.kernel.numpy().astype(np.float64),
        dilation=2,
    )
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-4)
    # The sampling points leave the regular grid and the map.
    points = layer.sampling_points(tf.constant(x)).numpy()
    assert points.min() < -1.0 and points.max() > 8.0


def test_transform_receives_gradients_and_dynamic_shapes():
    x = tf.random.stateless_normal((2, 5, 5, 3), seed=(1, 2))
    layer = AdaptiveConv2D(4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x)))
    grads = tape.gradient(loss, [layer.transform_kernel, layer.transform_bias])
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layer(inputs))
    assert model(tf.zeros((1, 4, 7, 3))).shape == (1, 4, 7, 4)


def test_validation_messages():
    with pytest.raises(ValueError, match="Received: filters=0"):
        AdaptiveConv2D(0)
    with pytest.raises(ValueError, match="Received: dilation_rate=0"):
        AdaptiveConv2D(4, dilation_rate=0)
    with pytest.raises(ValueError, match="Received: filters=-2"):
        AdaptiveConv2D(-2)
    with pytest.raises(ValueError, match="must be known"):
        AdaptiveConv2D(4).build((1, 5, 5, None))


def test_get_config_round_trip_and_keras_file(tmp_path):
    x = np.random.default_rng(2).normal(size=(1, 5, 6, 3)).astype(np.float32)
    layer = AdaptiveConv2D(
        4, dilation_rate=2, use_translation=False, use_bias=True, kernel_regularizer="l2", name="ada"
    )
    layer(x)
    clone = AdaptiveConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), atol=1e-6)

    inputs = keras.Input((5, 6, 3))
    model = keras.Model(inputs, AdaptiveConv2D(6, name="second")(layer(inputs)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_tflite_conversion_uses_delegate_ops_only(tmp_path, run_tflite):
    inputs = keras.Input((8, 8, 4), batch_size=1)
    x = AdaptiveConv2D(4, transform_initializer="random_normal", name="ada")(inputs)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(AdaptiveConv2D(4, name="ada2")(x)))
    model = keras.Model(inputs, keras.layers.Add()([x, y]))
    content = keras_to_tflite(model, [tf.TensorSpec((1, 8, 8, 4), tf.float32)], str(tmp_path))
    used = operator_names(content)
    # one gather per bilinear corner and adaptive conv
    assert used.count("GATHER") == 8 and "GATHER_ND" not in used
    assert set(used) <= BLOCK_OPS <= GPU_DELEGATE_OPS, sorted(set(used) - BLOCK_OPS)

    x = np.random.default_rng(4).normal(size=(1, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(content, x), model(x, training=False).numpy(), atol=1e-4)
