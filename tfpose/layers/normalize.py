"""Input normalisation inside the network, so exported models take raw pixels."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# ImageNet statistics of RGB images in [0, 1], used by the HRNet/HigherHRNet/DEKR references
# (torchvision ``Normalize`` on ``ToTensor`` output).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tfpose")
class ImageNormalization(keras.layers.Layer):
    """Maps raw pixels (uint8 or float in [0, max_pixel_value]) to ``(x / max - mean) / std``.

    Computed as one multiply and one add per channel (``x * scale + offset``, MUL/ADD in TFLite),
    after casting integer inputs to the layer's compute dtype.

    Args:
        mean: sequence of float, per-channel mean of images scaled to [0, 1].
        std: sequence of float (> 0), per-channel standard deviation, same length as ``mean``.
        max_pixel_value: float (> 0), the raw value that maps to 1 (255 for 8-bit images).
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        ``[..., C]`` with C = len(mean) -> same shape, float.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.max_pixel_value = float(max_pixel_value)
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(
                "`mean` and `std` must be non-empty and of equal length. "
                f"Received: mean={mean}, std={std}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"`std` must be positive. Received: std={std}")
        if self.max_pixel_value <= 0:
            raise ValueError(
                f"`max_pixel_value` must be positive. Received: max_pixel_value={max_pixel_value}"
            )
        self._scale = 1.0 / (self.max_pixel_value * np.asarray(self.std))
        self._offset = -np.asarray(self.mean) / np.asarray(self.std)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != len(self.mean):
            raise ValueError(
                f"{self.name} normalises {len(self.mean)} channels. Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        return x * tf.constant(self._scale, dtype) + tf.constant(self._offset, dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mean": list(self.mean), "std": list(self.std), "max_pixel_value": self.max_pixel_value}
        )
        return config


@keras.saving.register_keras_serializable(package="tfpose")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by one fused kernel on ``[B, H, W, C]``
    (``FusedBatchNormV3`` and, in training, its gradient kernel).

    Keras 3 builds batch norm from separate element-wise ops (moments, scale, shift) and
    differentiates each; the fused kernels do the same work in two passes (a CPU training step of
    the Quickstart's HRNet spends ~20% less time), and at inference the CPU graph optimiser folds
    the fused op into the convolution before it (W32 DEKR forward at 512: ~7% faster). Same
    weights and the same moving-average update ``moving = momentum * moving + (1 - momentum) *
    batch``, except that the moving variance takes the batch's unbiased variance, as PyTorch's
    ``BatchNorm2d`` (the HRNet-family references) does; Keras takes the biased one. Inference and
    frozen layers (``trainable=False``) use the moving statistics. Masks, other ranks and axes,
    renorm and layers without scale or centre use the parent's path. The TFLite and ONNX
    converters fold the inference op into the convolution as they did Keras's. The kernel's
    epsilon is at least 1.001e-5 (cuDNN's minimum; ``tf.nn``).
    """

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3) and self.scale
                and self.center and not self.renorm)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        training = bool(training) and self.trainable
        stats = {} if training else {"mean": tf.cast(self.moving_mean, tf.float32),
                                     "variance": tf.cast(self.moving_variance, tf.float32)}
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            tf.cast(inputs, tf.float32),
            tf.cast(self.gamma, tf.float32),
            tf.cast(self.beta, tf.float32),
            epsilon=self.epsilon,
            is_training=training,
            **stats,
        )
        if training:
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                moving.assign(moving * self.momentum + batch * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)
