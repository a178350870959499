"""Adaptive convolution and the adaptive representation transformation (ART) unit.

Paper: "Bottom-Up Human Pose Estimation by Ranking Heatmap-Guided Adaptive Keypoint Estimates"
(the DEKR-style paper, ../shared/papers/003), Sec. 3.1 "Adaptive representation transformation".
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpose.layers.deformable_conv import (
    check_positive_int,
    points_from_offsets,
    sample_and_project,
)
from tfpose.layers.sampling import regular_grid_array

# 2x2 transform T (row-major a, b, c, d) and translation (tx, ty) of the identity.
_IDENTITY_TRANSFORM = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


@keras.saving.register_keras_serializable(package="tfpose")
class AdaptiveConv2D(keras.layers.Layer):
    """3x3 convolution whose sampling grid is transformed per pixel (pixel-wise STN).

    Implements y(q) = sum_{i=1..9} W_i x(q + g_si) with G_s = T(q) G_t (+ t(q)) (Sec. 3.1,
    Eq. (3)): a 3x3 convolution on the input predicts, at every pixel q, a 2x2 matrix T (4
    channels, row-major a, b, c, d so that (dx', dy') = (a dx + b dy, c dx + d dy)) and optionally
    a translation t (2 channels). The regular grid G_t = {-1, 0, 1}^2 (times ``dilation_rate``)
    is mapped to 9 offsets, the input is bilinearly sampled at q + offsets with zero padding
    (``tfpose.layers.sampling.bilinear_sample``, pixel centres at integer + 0.5), and the 9
    samples are combined by a linear map stored as a Keras ``Conv2D`` kernel [3, 3, C_in,
    filters] and applied as a 1x1 convolution over the concatenated samples [9 * C_in]
    (``tfpose.layers.deformable_conv.sample_and_project``, shared with ``DeformableConv2D``).

    The transform convolution's kernel starts at zero and its bias at T = I, t = 0, so the layer
    starts as a ``Conv2D(filters, 3, padding="same", dilation_rate=dilation_rate)`` with the same
    kernel (tested). Stride is 1 and the spatial size is kept.

    Args:
        filters: int, output channels.
        dilation_rate: int, spacing of the regular grid G_t (the transform conv is undilated).
        use_translation: bool, also predict the translation t (as the DEKR reference code).
        use_bias: bool, add a bias to the output (off when BatchNorm follows).
        kernel_initializer: initializer of the sampling kernel [3, 3, C_in, filters].
        bias_initializer: initializer of the output bias.
        kernel_regularizer: regularizer of the sampling kernel.
        bias_regularizer: regularizer of the output bias.
        transform_initializer: initializer of the transform conv kernel [3, 3, C_in, 4 or 6];
            zeros (default) keeps the identity start.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        input ``[B, H, W, C_in]`` -> output ``[B, H, W, filters]``.
    """

    def __init__(
        self,
        filters,
        dilation_rate=1,
        use_translation=True,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        transform_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.dilation_rate = check_positive_int("dilation_rate", dilation_rate)
        self.use_translation = bool(use_translation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.transform_initializer = keras.initializers.get(transform_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def num_transform_channels(self) -> int:
        return 6 if self.use_translation else 4

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"The channel dimension of the input to {self.name} must be known. "
                f"Received: input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        n = self.num_transform_channels
        self.transform_kernel = self.add_weight(
            name="transform_kernel",
            shape=(3, 3, channels, n),
            initializer=self.transform_initializer,
        )
        self.transform_bias = self.add_weight(
            name="transform_bias",
            shape=(n,),
            initializer=keras.initializers.Constant(_IDENTITY_TRANSFORM[:n]),
        )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(3, 3, channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        else:
            self.bias = None
        # Constant [n, 18]: (a, b, c, d, tx, ty) -> 9 interleaved (dx, dy) offsets.
        grid = regular_grid_array(3, self.dilation_rate)  # [9, 2]
        mixing = np.zeros((n, 18))
        mixing[0, 0::2] = grid[:, 0]  # dx' = a dx + b dy
        mixing[1, 0::2] = grid[:, 1]
        mixing[2, 1::2] = grid[:, 0]  # dy' = c dx + d dy
        mixing[3, 1::2] = grid[:, 1]
        if self.use_translation:
            mixing[4, 0::2] = 1.0
            mixing[5, 1::2] = 1.0
        self._offset_mixing = mixing.reshape(1, 1, n, 18)

    def sampling_points(self, inputs):
        """The 9 sampling points per pixel, (x, y) continuous, ``[B, H, W, 9, 2]`` float32."""
        dtype = inputs.dtype
        transform = tf.nn.conv2d(
            inputs, tf.cast(self.transform_kernel, dtype), strides=1, padding="SAME"
        ) + tf.cast(self.transform_bias, dtype)
        # Points in float32 even under mixed precision (float16 pixel coordinates past 128 are
        # 1/8-pixel coarse). The linear map to offsets is a constant 1x1 conv (CONV_2D).
        offsets = tf.nn.conv2d(
            tf.cast(transform, tf.float32),
            tf.constant(self._offset_mixing, tf.float32),
            strides=1,
            padding="SAME",
        )  # [B, H, W, 18]
        return points_from_offsets(offsets, 9)

    def call(self, inputs):
        return sample_and_project(inputs, self.sampling_points(inputs), self.kernel, self.bias)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "dilation_rate": self.dilation_rate,
                "use_translation": self.use_translation,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "transform_initializer": keras.initializers.serialize(self.transform_initializer),
            }
        )
        return config
