"""tfpose.layers.sampling: numpy reference, pixel convention, gradients, TFLite op set."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as tflite_schema

from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operators

# The delegate ops (DESIGN.md section 3) a sampler converts to: a subset of GPU_DELEGATE_OPS.
SAMPLER_OPS = {
    "ADD", "SUB", "MUL", "MAXIMUM", "MINIMUM", "FLOOR", "CAST", "RESHAPE", "CONCATENATION",
    "SLICE", "GATHER", "CONV_2D", "DEPTHWISE_CONV_2D", "RELU",
}  # fmt: skip

from tfpose.layers.sampling import (bilinear_sample, pixel_centers, portable_sampling,
                                    regular_grid, regular_grid_array)


@pytest.fixture(params=["xla", "portable"])
def sampler_path(request):
    """Runs a test on both samplers: the XLA-compiled one and the plain ops that export traces."""
    if request.param == "xla":
        yield request.param
    else:
        with portable_sampling():
            yield request.param


def reference_bilinear(features, points):
    """Loop reference: corners of (x - 0.5, y - 0.5), zero outside the map."""
    features = np.asarray(features, np.float64)
    points = np.asarray(points, np.float64)
    b, h, w, c = features.shape
    flat = points.reshape(b, -1, 2)
    out = np.zeros((b, flat.shape[1], c))
    for n in range(b):
        for m, (x, y) in enumerate(flat[n] - 0.5):
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[n, m] += wy * wx * features[n, yy, xx]
    return out.reshape(points.shape[:-1] + (c,))


def test_matches_numpy_reference_inside_outside_and_on_borders(sampler_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    random_points = rng.uniform(-2.0, 9.5, size=(2, 4, 6, 2))
    # Borders and exact corners: map edges 0 / W / H, pixel centres on the border, half outside.
    border = np.array(
        [[0.0, 0.0], [7.0, 5.0], [0.5, 0.5], [6.5, 4.5], [-0.5, 2.5], [7.5, 2.5], [3.0, -0.5],
         [3.0, 5.5], [-0.49, -0.49], [7.49, 5.49], [-1.5, 1.0], [20.0, -20.0], [3.5, 2.5], [3.0, 2.0]]
    )  # fmt: skip
    border_points = np.broadcast_to(border, (2,) + border.shape)
    for points in (random_points, border_points):
        got = bilinear_sample(features, points.astype(np.float32)).numpy()
        assert got.shape == points.shape[:-1] + (3,)
        np.testing.assert_allclose(got, reference_bilinear(features, points.astype(np.float32)), atol=1e-5)


def test_pixel_convention_and_zero_padding(sampler_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1, 4, 6, 2)).astype(np.float32)
    centres = pixel_centers(4, 6)[None]
    assert centres[0, 1, 2].numpy().tolist() == [2.5, 1.5]  # (x, y) of row 1, column 2
    np.testing.assert_array_equal(bilinear_sample(features, centres).numpy(), features)
    # Half a pixel outside the left edge of pixel (2, 0): half of it, half of the zero padding.
    got = bilinear_sample(features, np.array([[[-0.0, 2.5]]], np.float32)).numpy()
    np.testing.assert_allclose(got[0, 0], 0.5 * features[0, 2, 0], rtol=1e-6)
    # Same as sampling a zero-padded map with shifted points.
    points = rng.uniform(-3, 9, size=(1, 50, 2)).astype(np.float32)
    padded = np.pad(features, ((0, 0), (3, 3), (3, 3), (0, 0)))
    np.testing.assert_allclose(
        bilinear_sample(features, points).numpy(), bilinear_sample(padded, points + 3.0).numpy(), atol=1e-6
    )


def test_regular_grid_is_row_major_eq3():
    grid = regular_grid(3, 2).numpy()
    assert grid.shape == (9, 2)
    # Transpose of G_t in Eq. (3) (times the dilation): x varies fastest.
    np.testing.assert_array_equal(grid.T, 2 * np.array([[-1, 0, 1] * 3, [-1] * 3 + [0] * 3 + [1] * 3]))
    with pytest.raises(ValueError, match="Received: kernel_size=2"):
        regular_grid_array(2)


def test_dynamic_shapes(sampler_path):
    fn = tf.function(
        bilinear_sample,
        input_signature=[tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, None, 2])],
    )
    rng = np.random.default_rng(2)
    features = rng.normal(size=(3, 4, 5, 3)).astype(np.float32)
    points = rng.uniform(-1, 6, size=(3, 7, 2)).astype(np.float32)
    np.testing.assert_allclose(fn(features, points).numpy(), reference_bilinear(features, points), atol=1e-5)


def test_gradients_match_finite_differences(sampler_path):
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(1, 5, 6, 2)))
    # Away from integer pixel coordinates, where the sampler is smooth; includes a point half out.
    points = np.array([[[1.3, 2.2], [4.71, 0.9], [0.2, 3.6], [5.8, 4.3]]])
    weights = tf.constant(rng.normal(size=(1, 4, 2)))

    def loss(p):
        return tf.reduce_sum(bilinear_sample(features, p) * weights)

    p = tf.constant(points)
    with tf.GradientTape() as tape:
        tape.watch(p)
        value = loss(p)
    grad = tape.gradient(value, p).numpy()
    eps = 1e-6
    numeric = np.zeros_like(points)
    for idx in np.ndindex(points.shape):
        step = np.zeros_like(points)
        step[idx] = eps
        diff = loss(tf.constant(points + step)) - loss(tf.constant(points - step))
        numeric[idx] = diff.numpy() / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)

    with tf.GradientTape() as tape:
        tape.watch(features)
        value = loss(p)
    feature_grad = tf.convert_to_tensor(tape.gradient(value, features)).numpy()
    # d loss / d features[i, j] = sum of bilinear weights of pixel (i, j) times the output weights.
    expected = np.zeros(features.shape)
    for i in range(5):
        for j in range(6):
            onehot = np.zeros((1, 5, 6, 1))
            onehot[0, i, j] = 1.0
            bilinear_weights = reference_bilinear(onehot, points)  # [1, 4, 1]
            expected[0, i, j] = (bilinear_weights * weights.numpy()).sum(axis=(0, 1))
    np.testing.assert_allclose(feature_grad, expected, atol=1e-10)


class _LearnedSampler(keras.layers.Layer):
    """Samples its input at pixel centres + offsets predicted by a conv (data-dependent points)."""

    def build(self, input_shape):
        self.offset_conv = keras.layers.Conv2D(2, 3, padding="same", kernel_initializer="random_normal")
        self.offset_conv.build(input_shape)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        return bilinear_sample(x, pixel_centers(h, w)[None] + 3.0 * self.offset_conv(x))


def test_tflite_uses_only_1d_gathers_and_delegate_ops(tmp_path, run_tflite):
    inputs = keras.Input((8, 8, 4), batch_size=1)
    model = keras.Model(inputs, _LearnedSampler(name="learned_sampler")(inputs))
    content = keras_to_tflite(model, [tf.TensorSpec((1, 8, 8, 4), tf.float32)], str(tmp_path))
    ops = operators(content)
    names = {name for name, _, _ in ops}
    assert "GATHER" in names and "GATHER_ND" not in names
    assert names <= SAMPLER_OPS <= GPU_DELEGATE_OPS, sorted(names - SAMPLER_OPS)
    gathers = [(graph, op) for name, graph, op in ops if name == "GATHER"]
    assert len(gathers) == 4  # one per bilinear corner
    for graph, gather in gathers:
        params = graph.Tensors(gather.Inputs(0))
        indices = graph.Tensors(gather.Inputs(1))
        assert params.ShapeAsNumpy().tolist() == [64, 4]  # features flattened to [B*H*W, C]
        assert indices.Type() == tflite_schema.TensorType.INT32 and indices.ShapeLength() == 1

    x = np.random.default_rng(4).normal(size=(1, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(content, x), model(x).numpy(), atol=1e-5)
