"""Bilinear sampling of feature maps at continuous points, written for the TFLite GPU delegate.

Pixel convention (the project's, see ``tfpose.codecs.base``): pixel (row i, column j) covers
[j, j + 1) x [i, i + 1) and its centre is the continuous point (x, y) = (j + 0.5, i + 0.5).

The sampler is the one used by adaptive convolution (DEKR / "Ranking heatmap-guided adaptive
keypoint estimates", Sec. 3.1, the pixel-wise spatial transformer) and by spatial transformers.
It is built only from ops that convert to TFLite builtins the GPU delegate accepts: FLOOR,
MINIMUM/MAXIMUM (clip; the converter emits RELU for a clip at 0), SUB/ADD/MUL, CAST, RESHAPE,
CONCATENATION, SLICE and four 1-D GATHERs (one per bilinear corner) with int32 indices on the
features flattened to [B*H*W, C] (no GATHER_ND, STRIDED_SLICE, comparisons, WHERE or RANGE when
B, H, W are static; tested on the converted flatbuffer).

Inside TensorFlow (training, evaluation, prediction) the sampler runs as one XLA-compiled
function: XLA fuses the four gathers, their weights and the sum into one loop over the output,
where TensorFlow's kernels write and re-read every corner's [N, C] block (CPU, 2 cores: an
adaptive conv's sampling at [1, 128, 128, 256] 148 -> 35 ms, its gradient 425 -> 260 ms). Models
written for other runtimes are traced inside :func:`portable_sampling`, which keeps the plain
ops: TFLite and ONNX convert them, and TF Serving runs XLA on CPU only when asked to.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

_portable_depth = 0  # > 0 inside portable_sampling(): trace the plain ops, no XLA cluster


@contextlib.contextmanager
def portable_sampling():
    """Graphs traced inside this context sample with plain TF ops (no ``jit_compile``).

    Export traces every graph it writes inside it (``tfpose.export.saved_model.decode_function``
    and ``write_archive``).
    """
    global _portable_depth
    _portable_depth += 1
    try:
        yield
    finally:
        _portable_depth -= 1


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def pixel_centers(height, width, dtype=tf.float32) -> tf.Tensor:
    """Continuous (x, y) coordinates of every pixel centre of an H x W map.

    Args:
        height: int or scalar int tensor H.
        width: int or scalar int tensor W.

    Returns:
        [H, W, 2] tensor with ``[i, j] = (j + 0.5, i + 0.5)``; a constant when H and W are ints.
    """
    if _is_int(height) and _is_int(width):
        ys, xs = np.meshgrid(
            np.arange(height, dtype=np.float64) + 0.5,
            np.arange(width, dtype=np.float64) + 0.5,
            indexing="ij",
        )
        return tf.constant(np.stack([xs, ys], axis=-1), dtype=dtype)
    xs = tf.cast(tf.range(width), dtype) + 0.5
    ys = tf.cast(tf.range(height), dtype) + 0.5
    grid_y, grid_x = tf.meshgrid(ys, xs, indexing="ij")
    return tf.stack([grid_x, grid_y], axis=-1)


def regular_grid_array(kernel_size: int = 3, dilation: int = 1) -> np.ndarray:
    """Offsets (dx, dy) of a regular ``kernel_size x kernel_size`` convolution grid (numpy).

    The order is row-major over the kernel (dy outer, dx inner), i.e. the order of a Keras
    ``Conv2D`` kernel ``[kh, kw, C_in, C_out]`` flattened over (kh, kw). For ``kernel_size=3`` and
    ``dilation=1`` this is the transpose of G_t in Eq. (3) of the DEKR-style paper.

    Returns:
        float64 array [kernel_size**2, 2], offsets in feature pixels.
    """
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(
            f"`kernel_size` must be a positive odd integer. Received: kernel_size={kernel_size}"
        )
    if not _is_int(dilation) or dilation < 1:
        raise ValueError(f"`dilation` must be a positive integer. Received: dilation={dilation}")
    kernel_size, dilation = int(kernel_size), int(dilation)
    r = kernel_size // 2
    steps = np.arange(-r, r + 1, dtype=np.float64) * dilation
    dy, dx = np.meshgrid(steps, steps, indexing="ij")
    return np.stack([dx.ravel(), dy.ravel()], axis=-1)


def regular_grid(kernel_size: int = 3, dilation: int = 1, dtype=tf.float32) -> tf.Tensor:
    """``regular_grid_array`` as a constant tensor [kernel_size**2, 2]."""
    return tf.constant(regular_grid_array(kernel_size, dilation), dtype=dtype)


def _static_or_dynamic(tensor: tf.Tensor):
    """Static dims where known, else scalar tensors from ``tf.shape``."""
    static = tensor.shape.as_list()
    dynamic = tf.shape(tensor)
    return [dynamic[i] if d is None else d for i, d in enumerate(static)]


def bilinear_sample(features: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
    """Bilinearly samples ``features`` at continuous ``points`` with zero padding.

    A point at (x, y) reads the four pixels around (x - 0.5, y - 0.5) (pixel centres at integer
    + 0.5). Corners outside the map contribute zero, so a point partly outside the map gets only
    the weighted contributions of its in-bounds corners and a point farther than one pixel
    outside gets 0 — the same result as zero-padding the map and sampling the padded map. At a
    pixel centre the result is that pixel exactly, so sampling a regular grid reproduces a
    zero-padded convolution's taps.

    Each of the four corners of all points is read with one 1-D ``tf.gather`` on the features
    reshaped to ``[B*H*W, C]``. Indices are computed in float32 (whatever the features' dtype)
    and cast to int32, which is exact while ``B*H*W <= 2**24``. Gradients flow to ``features``
    and to ``points`` (the bilinear weights); at integer pixel coordinates the gradient w.r.t.
    points is the one-sided one.

    Args:
        features: float tensor ``[B, H, W, C]``.
        points: float tensor ``[B, ..., 2]``, (x, y) in feature-pixel continuous coordinates.

    Returns:
        ``[B, ..., C]`` tensor of ``features.dtype``.
    """
    if _portable_depth:
        return _sample(features, points)
    return _sample_xla(features, points)


def _sample(features, points):
    """``bilinear_sample`` in plain TF ops."""
    features = tf.convert_to_tensor(features)
    # Coordinates, weights and indices in float32 (float64 for float64 features) even for
    # float16/bfloat16 features: half precision cannot hold pixel indices past 2048.
    dtype = tf.float64 if features.dtype == tf.float64 else tf.float32
    points = tf.cast(points, dtype)
    if features.shape.rank != 4:
        raise ValueError(f"`features` must be [B, H, W, C]. Received: shape={features.shape}")
    if points.shape.rank is None or points.shape.rank < 2 or points.shape[-1] != 2:
        raise ValueError(f"`points` must be [B, ..., 2]. Received: shape={points.shape}")

    batch, height, width, channels = _static_or_dynamic(features)
    points_shape = _static_or_dynamic(points)

    flat_points = tf.reshape(points, [batch, -1, 2])  # [B, N, 2]
    # Continuous coordinate -> index coordinate: pixel centre j + 0.5 -> j. tf.slice (SLICE)
    # rather than ``[..., 0]`` (STRIDED_SLICE with shrink mask); all per-point terms are [B, N, 1].
    px = tf.slice(flat_points, [0, 0, 0], [-1, -1, 1]) - 0.5
    py = tf.slice(flat_points, [0, 0, 1], [-1, -1, 1]) - 0.5
    x0 = tf.floor(px)
    y0 = tf.floor(py)
    wx1 = px - x0
    wy1 = py - y0
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1

    w_f = tf.cast(width, dtype)
    h_f = tf.cast(height, dtype)

    def inside(c, size):
        # 1.0 where 0 <= c <= size - 1 for integer-valued c, else 0.0; arithmetic only
        # (MINIMUM/MAXIMUM/SUB/MUL), no comparison ops.
        return tf.clip_by_value(c + 1.0, 0.0, 1.0) * tf.clip_by_value(size - c, 0.0, 1.0)

    x1 = x0 + 1.0
    y1 = y0 + 1.0
    vx0, vx1 = inside(x0, w_f), inside(x1, w_f)
    vy0, vy1 = inside(y0, h_f), inside(y1, h_f)
    x0c = tf.clip_by_value(x0, 0.0, w_f - 1.0)
    x1c = tf.clip_by_value(x1, 0.0, w_f - 1.0)
    row0 = tf.clip_by_value(y0, 0.0, h_f - 1.0) * w_f
    row1 = tf.clip_by_value(y1, 0.0, h_f - 1.0) * w_f

    # Offset of each image in the flattened [B*H*W, C] features. Constant when B is static
    # (the exported case), so no RANGE op reaches the converted model.
    if isinstance(batch, int):
        base = tf.constant(np.arange(batch).reshape(batch, 1, 1), dtype=dtype)
    else:
        base = tf.reshape(tf.cast(tf.range(batch), dtype), [-1, 1, 1])
    base = base * (h_f * w_f)

    # One gather per corner, each weighted and summed: the backward pass is then four
    # segment sums into [B*H*W, C] (slices of one concatenated gather would pad every corner's
    # gradient back to the full 4-corner size, ~3x the training time of an adaptive conv).
    flat_features = tf.reshape(features, [-1, channels])  # [B*H*W, C]
    out = None
    for row, wy, vy in ((row0, wy0, vy0), (row1, wy1, vy1)):
        for col, wx, vx in ((x0c, wx0, vx0), (x1c, wx1, vx1)):
            index = tf.reshape(tf.cast(base + row + col, tf.int32), [-1])  # [B*N]
            weight = tf.cast(tf.reshape(wy * wx * vy * vx, [-1, 1]), features.dtype)
            term = tf.gather(flat_features, index) * weight  # [B*N, C]
            out = term if out is None else out + term
    return tf.reshape(out, points_shape[:-1] + [channels])


_sample_xla = tf.function(_sample, jit_compile=True)
