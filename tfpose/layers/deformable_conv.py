"""Deformable convolution with free sampling points, and the sampling + projection it shares.

Paper: PoseDet (../shared/papers/001), Sec. 3.1 "Keypoint-Aware Pose Embedding", Eq. (1): the
pose embedding aggregates the feature vectors at the K keypoints of a candidate with one
deformable convolution (DCN) layer whose 2K offsets are the candidate's coarse keypoints.

``sample_and_project`` (bilinear sampling at P points per pixel, then a learned linear map of
the P * C samples) is the core of both ``DeformableConv2D`` (points = pixel centre + predicted
offsets) and ``tfpose.layers.adaptive_conv.AdaptiveConv2D`` (points = transformed 3x3 grid).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpose.layers.sampling import _static_or_dynamic, bilinear_sample, pixel_centers


def check_positive_int(name: str, value) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")
    return int(value)


def points_from_offsets(offsets: tf.Tensor, num_points: int) -> tf.Tensor:
    """Sampling points = each pixel's centre (j + 0.5, i + 0.5) + its P offsets.

    Args:
        offsets: float tensor ``[B, H, W, 2 * P]``, (dx_0, dy_0, dx_1, dy_1, ...) in feature pixels.
        num_points: int, P.

    Returns:
        ``[B, H, W, P, 2]`` continuous (x, y) points, float32 (float64 for float64 offsets) so
        that half-precision offsets do not round the pixel coordinates.
    """
    dtype = tf.float64 if offsets.dtype == tf.float64 else tf.float32
    offsets = tf.cast(offsets, dtype)
    batch, height, width, _ = _static_or_dynamic(offsets)
    centers = tf.reshape(pixel_centers(height, width, dtype), [1, height, width, 1, 2])
    return centers + tf.reshape(offsets, [batch, height, width, num_points, 2])


def sample_and_project(features: tf.Tensor, points: tf.Tensor, kernel, bias=None) -> tf.Tensor:
    """out[b, i, j] = sum_p kernel_p . bilinear_sample(features, points[b, i, j, p]) + bias.

    The P samples of a pixel are concatenated to P * C channels and mapped by one 1x1
    convolution (CONV_2D in TFLite; the sampler is 1-D GATHERs, see
    ``tfpose.layers.sampling.bilinear_sample``), so the whole op stays on the GPU delegate.

    Args:
        features: float tensor ``[B, H, W, C]``, C static.
        points: float tensor ``[B, H, W, P, 2]``, (x, y) continuous, P static.
        kernel: weight whose shape flattens to ``[P * C, F]`` in (point, channel) order, e.g.
            ``[P, C, F]`` or a Conv2D kernel ``[kh, kw, C, F]`` with P = kh * kw.
        bias: optional ``[F]`` weight.

    Returns:
        ``[B, H, W, F]`` tensor of ``features.dtype``.
    """
    dtype = features.dtype
    batch, height, width, channels = _static_or_dynamic(features)
    num_points = points.shape[-2]
    filters = kernel.shape[-1]
    samples = bilinear_sample(features, points)  # [B, H, W, P, C]
    samples = tf.reshape(samples, [batch, height, width, num_points * channels])
    kernel = tf.reshape(tf.cast(kernel, dtype), [1, 1, num_points * channels, filters])
    outputs = tf.nn.conv2d(samples, kernel, strides=1, padding="VALID")
    if bias is not None:
        outputs = outputs + tf.cast(bias, dtype)
    return outputs


@keras.saving.register_keras_serializable(package="tfpose")
class DeformableConv2D(keras.layers.Layer):
    """Deformable convolution with P free sampling points per output pixel.

    Implements the DCN layer of PoseDet's keypoint-aware pose embedding (Sec. 3.1, Eq. (1)):

        out[b, i, j] = sum_p W_p . x(c_ij + o_p[b, i, j]) + bias,

    where c_ij = (j + 0.5, i + 0.5) is the output pixel's centre, o_p its p-th offset and x is
    sampled bilinearly with zero padding (``tfpose.layers.sampling.bilinear_sample``). With one
    point per keypoint and the coarse pose as offsets (P = K) the output is the pose embedding;
    a regular DCN [Dai et al., 2017] is the case where the offsets include the kernel grid
    (``tfpose.layers.sampling.regular_grid_array``). Stride is 1 and the spatial size is kept.

    Args:
        filters: int, output channels F.
        num_points: int, sampling points P per pixel (K keypoints for the pose embedding).
        use_bias: bool, add a bias to the output.
        kernel_initializer: initializer of the kernel ``[P, C, F]`` (W_p = kernel[p]).
        bias_initializer: initializer of the bias ``[F]``.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        call([features, offsets]): features ``[B, H, W, C]``; offsets ``[B, H, W, 2 * P]``
        ordered (dx_0, dy_0, dx_1, dy_1, ...) in feature pixels, relative to each output
        pixel's centre -> output ``[B, H, W, F]``. Sampling points are formed in float32
        (float64 for float64 offsets) under any compute dtype.
    """

    def __init__(
        self,
        filters,
        num_points,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.num_points = check_positive_int("num_points", num_points)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # Checked in build (a one-line error naming the bad input), then fixed there.
        self.input_spec = None

    def build(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 2
            or not all(isinstance(s, (list, tuple)) for s in input_shape)
        ):
            raise ValueError(
                f"{self.name} expects inputs [features, offsets]. "
                f"Received: input_shape={input_shape}"
            )
        features_shape, offsets_shape = (tuple(s) for s in input_shape)
        if len(features_shape) != 4:
            raise ValueError(
                f"`features` of {self.name} must be [B, H, W, C]. "
                f"Received: features shape={features_shape}"
            )
        channels = features_shape[-1]
        if channels is None:
            raise ValueError(
                f"The channel dimension of the features input to {self.name} must be known. "
                f"Received: features shape={features_shape}"
            )
        offset_channels = 2 * self.num_points
        if len(offsets_shape) != 4 or offsets_shape[-1] != offset_channels:
            raise ValueError(
                f"`offsets` of {self.name} must be [B, H, W, 2 * num_points = {offset_channels}]. "
                f"Received: offsets shape={offsets_shape}"
            )
        for axis in (1, 2):
            if None not in (features_shape[axis], offsets_shape[axis]) and (
                features_shape[axis] != offsets_shape[axis]
            ):
                raise ValueError(
                    f"`features` and `offsets` of {self.name} must have the same height and width. "
                    f"Received: features shape={features_shape}, offsets shape={offsets_shape}"
                )
        self.input_spec = [
            keras.layers.InputSpec(ndim=4, axes={-1: channels}),
            keras.layers.InputSpec(ndim=4, axes={-1: offset_channels}),
        ]
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_points, channels, self.filters),
            initializer=self.kernel_initializer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.filters,), initializer=self.bias_initializer
            )
        else:
            self.bias = None

    @property
    def input_dtype(self):
        # Inputs arrive in the variable dtype (float32) under mixed precision and call casts
        # only the features: a half-precision offset cannot hold pixel coordinates
        # (10.3 -> 10.3125 in bfloat16).
        return self.variable_dtype

    def call(self, inputs):
        features, offsets = inputs
        features = tf.cast(features, self.compute_dtype)
        points = points_from_offsets(offsets, self.num_points)
        return sample_and_project(features, points, self.kernel, self.bias)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "num_points": self.num_points,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
