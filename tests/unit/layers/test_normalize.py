"""tfpose.layers.normalize: ImageNormalization, FusedBatchNormalization (numpy references)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.layers.normalize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FusedBatchNormalization,
    ImageNormalization,
)


def test_uint8_and_float_pixels_give_imagenet_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    expected = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    layer = ImageNormalization()
    for x in (pixels, pixels.astype(np.float32)):
        y = layer(x)
        assert y.dtype == "float32"
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
    inputs = keras.Input((4, 5, 3), dtype="uint8")
    model = keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(model(pixels).numpy(), expected, atol=1e-5)


def test_config_round_trip_and_validation():
    layer = ImageNormalization(mean=(0.5,), std=(0.25,), max_pixel_value=1.0, name="norm")
    clone = ImageNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(np.ones((1, 2, 2, 1), np.float32)).numpy(), 2.0)
    with pytest.raises(ValueError, match="Received: std="):
        ImageNormalization(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="equal length"):
        ImageNormalization(mean=(0.1, 0.2), std=(0.2,))
    with pytest.raises(ValueError, match="normalises 3 channels"):
        ImageNormalization()(np.zeros((1, 2, 2, 4), np.float32))


def _np_batch_norm(x, gamma, beta, eps):
    """Training-mode batch norm over (B, H, W): output, batch mean, biased and unbiased var."""
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    n = x.size // x.shape[-1]
    return (x - mean) / np.sqrt(var + eps) * gamma + beta, mean, var, var * n / (n - 1)


def test_fused_batch_norm_training_step_matches_numpy_and_keras_gradients():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3, 4, 5, 6)) * 2 + 1).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 6), rng.normal(size=6)
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    expected, mean, _, unbiased = _np_batch_norm(x.astype(np.float64), gamma, beta, 1e-3)
    grads = []
    upstream = rng.normal(size=x.shape).astype(np.float32)
    for layer in (fused, plain):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads.append(tape.gradient(loss, [xt, layer.gamma, layer.beta]))
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-4)
    for got, want in zip(*grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
    # moving = 0.9 * moving + 0.1 * batch, with the unbiased batch variance (PyTorch)
    np.testing.assert_allclose(fused.moving_mean.numpy(), 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 + 0.1 * unbiased, atol=1e-5)
    # inference, and training of a frozen layer: the moving statistics, left unchanged
    moving = fused.moving_mean.numpy(), fused.moving_variance.numpy()
    want = (x - moving[0]) / np.sqrt(moving[1] + 1e-3) * gamma + beta
    np.testing.assert_allclose(fused(x, training=False).numpy(), want, atol=1e-4)
    fused.trainable = False
    np.testing.assert_allclose(fused(x, training=True).numpy(), want, atol=1e-4)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), moving[0])
    np.testing.assert_array_equal(fused.moving_variance.numpy(), moving[1])


def test_fused_batch_norm_keeps_the_compute_dtype_under_mixed_precision():
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype(np.float32)
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    y = layer(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16 and layer.moving_mean.dtype == "float32"
    expected = _np_batch_norm(x.astype(np.float64), 1.0, 0.0, layer.epsilon)[0]
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected, atol=0.05)
