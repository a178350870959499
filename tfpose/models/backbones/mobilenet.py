"""MobileNetV3-Large backbone (Howard et al., "Searching for MobileNetV3", ICCV 2019).

Architecture (paper Table 1), stem width w (16 in the paper):
    stem     3x3 stride-2 conv w, BN, hard-swish                                          (1/2)
    15 bottlenecks (inverted residuals, paper Sec. 5 / Fig. 4 and MobileNetV2 Sec. 3.3):
        1x1 expansion conv + BN + act (skipped when the expansion equals the input width),
        k x k depthwise conv (stride 1 or 2) + BN + act,
        squeeze-and-excite on some blocks (Sec. 5.3: mean over H, W -> 1x1 conv to 1/4 of the
        expansion width + ReLU -> 1x1 conv back + hard-sigmoid -> channel-wise product),
        1x1 linear projection + BN, identity shortcut when stride 1 and widths match
    last     1x1 conv to 6 x 160 = 960 channels, BN, hard-swish                           (1/32)
Activations (Sec. 5.2): ReLU, or h-swish(x) = x * ReLU6(x + 3) / 6; h-sigmoid = ReLU6(x + 3) / 6.

``mobilenetv3_features`` returns the backbone features at strides 4, 8, 16, 32 (the last block
of each resolution; at 32 the 960-channel last conv). It stops there: the classification head
(pooling, 1x1 conv 1280, classifier) is not built.

Every op is one the TFLite GPU delegate runs (DESIGN.md section 3): conv, depthwise conv, ADD
(with fused ReLU6), MUL, MEAN. h-swish is written as ``(x / 6) * ReLU6(x + 3)`` because the
TFLite converter fuses the other orderings into one HARD_SWISH op.

Strided depthwise convs pad ``k // 2`` pixels on every side, as the reference does. BatchNorm
uses the project's HRNet/PyTorch constants (``hrnet.batch_norm``).

Trainable parameters of the full-size features (stem to the 960-channel conv, w = 16): 2,971,952,
the reference ImageNet model's 5,483,032 (paper Table 3: 5.4M) less its classification head
(tests/unit/models/test_fpn.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpose.models.backbones.hrnet import batch_norm, conv_bn, symmetric_padding

# Paper Table 1, MobileNetV3-Large: (kernel, expansion width, output width, SE, activation
# "RE" = ReLU / "HS" = h-swish, stride) of the 15 bottlenecks.
MOBILENETV3_LARGE = (
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
# Paper Table 1: stem conv width; last 1x1 conv width = 6 x the last bottleneck's (960 = 6 x 160).
STEM_CHANNELS = 16
LAST_CONV_EXPANSION = 6
# Paper Sec. 5.3: the squeeze width is 1/4 of the expansion width; widths are multiples of 8.
SE_REDUCTION = 4
CHANNEL_DIVISOR = 8

# Feature strides returned by ``mobilenetv3_features``.
FEATURE_STRIDES = (4, 8, 16, 32)


def make_divisible(value, divisor=CHANNEL_DIVISOR):
    """Rounds a channel count to the nearest multiple of ``divisor`` (at least ``divisor``),
    never going below 90% of ``value`` (the MobileNet papers' width rounding)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@keras.saving.register_keras_serializable(package="tfpose")
class HardSigmoid(keras.layers.Layer):
    """h-sigmoid(x) = ReLU6(x + 3) / 6 (MobileNetV3 paper Sec. 5.2).

    Args:
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        any -> same shape.
    """

    def call(self, inputs):
        return tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfpose")
class HardSwish(keras.layers.Layer):
    """h-swish(x) = x * ReLU6(x + 3) / 6 (MobileNetV3 paper Sec. 5.2).

    Computed as ``(x / 6) * ReLU6(x + 3)``: TFLite ADD (fused ReLU6) + MUL + MUL, ops of the
    GPU-delegate allow-list; other orderings are fused by the converter into HARD_SWISH.

    Args:
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        any -> same shape.
    """

    def call(self, inputs):
        return (inputs * (1.0 / 6.0)) * tf.nn.relu6(inputs + 3.0)

    def compute_output_shape(self, input_shape):
        return input_shape


def _activation(x, kind, name):
    """"RE" -> ReLU, "HS" -> h-swish."""
    if kind == "RE":
        return keras.layers.ReLU(name=name)(x)
    if kind == "HS":
        return HardSwish(name=name)(x)
    raise ValueError(f"`kind` must be 'RE' or 'HS'. Received: kind={kind!r}")


def depthwise_bn(x, kernel_size, strides=1, name="dw"):
    """Depthwise conv (no bias) + BN. Strided convs pad ``kernel_size // 2`` on every side."""
    x, padding = symmetric_padding(x, kernel_size, strides, name)
    x = keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    return batch_norm(x, f"{name}_bn")


def squeeze_excite(x, squeeze_channels, name="se"):
    """Squeeze-and-excite of MobileNetV3 (paper Sec. 5.3): mean -> 1x1 conv + ReLU -> 1x1 conv
    + h-sigmoid -> product with ``x``. ``[B, H, W, C] -> [B, H, W, C]``."""
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_mean")(x)
    s = keras.layers.Conv2D(squeeze_channels, 1, name=f"{name}_reduce")(s)
    s = keras.layers.ReLU(name=f"{name}_relu")(s)
    s = keras.layers.Conv2D(x.shape[-1], 1, name=f"{name}_expand")(s)
    s = HardSigmoid(name=f"{name}_gate")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def inverted_residual(x, kernel_size, expanded, filters, use_se, act, strides, name="block"):
    """One MobileNetV3 bottleneck (paper Fig. 4).

    Args:
        x: tensor ``[B, H, W, C]``.
        kernel_size: int, depthwise kernel (3 or 5).
        expanded: int, expansion width (no expansion conv when it equals C).
        filters: int, output width.
        use_se: bool, squeeze-and-excite after the depthwise conv.
        act: str, "RE" (ReLU) or "HS" (h-swish).
        strides: int, depthwise stride (1 or 2).

    Returns:
        tensor ``[B, H / strides, W / strides, filters]``.
    """
    inputs = x
    if expanded != x.shape[-1]:
        x = conv_bn(x, expanded, 1, relu=False, name=f"{name}_expand")
        x = _activation(x, act, f"{name}_expand_act")
    x = depthwise_bn(x, kernel_size, strides, name=f"{name}_dw")
    x = _activation(x, act, f"{name}_dw_act")
    if use_se:
        x = squeeze_excite(x, make_divisible(expanded // SE_REDUCTION), name=f"{name}_se")
    x = conv_bn(x, filters, 1, relu=False, name=f"{name}_project")
    if strides == 1 and inputs.shape[-1] == filters:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def mobilenetv3_features(x, width=STEM_CHANNELS, name="mobilenetv3"):
    """Applies the MobileNetV3-Large feature extractor (functional API).

    Args:
        x: tensor ``[B, H, W, 3]``, normalised image (H, W multiples of 32).
        width: int, the stem width w (16 in the paper). Every width of paper Table 1 is scaled
            by w / 16 and rounded to a multiple of 8 (``make_divisible``), i.e. the paper's
            width multiplier; the squeeze widths follow from the scaled expansion widths.
        name: str, prefix of the layer names.

    Returns:
        dict stride -> tensor for strides 4, 8, 16, 32 (w = 16: 24, 40, 112, 960 channels).
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be a positive integer. Received: width={width}")
    scale = width / STEM_CHANNELS
    x = conv_bn(x, make_divisible(STEM_CHANNELS * scale), 3, strides=2, relu=False,
                name=f"{name}_stem")
    x = _activation(x, "HS", f"{name}_stem_act")
    stride, features = 2, {}
    for i, (k, expanded, filters, use_se, act, s) in enumerate(MOBILENETV3_LARGE):
        expanded, filters = make_divisible(expanded * scale), make_divisible(filters * scale)
        x = inverted_residual(x, k, expanded, filters, use_se, act, s, name=f"{name}_block{i}")
        stride *= s
        features[stride] = x  # the last block at each resolution wins
    x = conv_bn(x, LAST_CONV_EXPANSION * x.shape[-1], 1, relu=False, name=f"{name}_last")
    features[stride] = _activation(x, "HS", f"{name}_last_act")
    return {s: features[s] for s in FEATURE_STRIDES}
