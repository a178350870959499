"""HRNet backbone (Sun et al., "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019, and "... for Visual Recognition", TPAMI 2020) and the HigherHRNet
deconvolution module (Cheng et al., CVPR 2020).

Architecture (paper Sec. 3 / reference ``pose_hrnet.py``), width C:
    stem     3x3 stride-2 conv 64, BN, ReLU; 3x3 stride-2 conv 64, BN, ReLU          (1/4)
    stage 1  4 bottleneck blocks (64 -> 256)
    stage 2  1 module,  branches C, 2C            (transition: 3x3 conv to C; 3x3 s2 conv to 2C)
    stage 3  4 modules, branches C, 2C, 4C        (transition: 3x3 s2 conv from the last branch)
    stage 4  3 modules, branches C, 2C, 4C, 8C
Every module: 4 basic blocks per branch, then multi-resolution fusion — output i sums input j
via identity (j = i), 1x1 conv + BN + nearest upsample x2^(j-i) (j > i), or i-j 3x3 stride-2
convs + BN (ReLU on all but the last) (j < i), followed by ReLU.

Stride-2 3x3 convs pad 1 pixel on every side (ZeroPadding2D + "valid"), as the PyTorch
reference does, so pretrained reference weights give the same outputs; Keras "same" would pad
only bottom/right. BatchNorm: PyTorch momentum 0.1 -> Keras momentum 0.9, epsilon 1e-5.

Parameter counts of ``hrnet_pose_model`` at K = 17 (the HRNet paper's pose network: the last
module fuses into the 1/4 branch only, then a 1x1 conv head with bias), counting trainable
weights only — conv kernels, head bias, BN gamma/beta; BN moving mean/variance are
non-trainable here and buffers in PyTorch, so both sides exclude them (tests/unit/models):
    W32: 28,536,113 (paper Table 1: 28.5M)      W48: 63,595,745 (paper: 63.6M)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpose.layers.normalize import FusedBatchNormalization, ImageNormalization

# PyTorch BatchNorm2d(momentum=0.1) == Keras momentum 0.9; PyTorch default eps.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Named widths of the HRNet papers.
HRNET_PRESETS = {"w32": 32, "w48": 48}

# (num_modules, num_branches, num_blocks per branch) of stages 2-4 (paper Sec. 3, Table 1 setup).
HRNET_STAGES = ((1, 2, 4), (4, 3, 4), (3, 4, 4))

OUTPUT_MODES = ("branches", "concat", "highest")

# Stem and stage-1 bottleneck width of the HRNet papers.
STEM_CHANNELS = 64


@keras.saving.register_keras_serializable(package="tfpose")
class NearestUpsampling2D(keras.layers.Layer):
    """Integer-factor nearest-neighbour upsampling (each pixel repeated ``size`` x ``size``).

    Same values as ``keras.layers.UpSampling2D(size, interpolation="nearest")`` and PyTorch's
    ``nn.Upsample(scale_factor=size, mode="nearest")``, but written as one resize so that it
    converts to TFLite RESIZE_NEAREST_NEIGHBOR (GPU delegate) instead of Keras' RESHAPE + TILE.

    Args:
        size: int (>= 1), the upsampling factor for height and width.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        ``[B, H, W, C]`` -> ``[B, size * H, size * W, C]``.
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be a positive integer. Received: size={size}")
        self.size = size

    def call(self, inputs):
        static = inputs.shape.as_list()
        dynamic = tf.shape(inputs)
        height = static[1] * self.size if static[1] is not None else dynamic[1] * self.size
        width = static[2] * self.size if static[2] is not None else dynamic[2] * self.size
        # Half-pixel nearest (tf.image.resize default): output o reads floor((o + 0.5) / size).
        return tf.image.resize(inputs, [height, width], method="nearest")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h * self.size, None if w is None else w * self.size, c)

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size})
        return config


def batch_norm(x, name):
    """Batch normalisation (fused in training) with the HRNet/PyTorch momentum and epsilon,
    applied to `x`."""
    return FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def symmetric_padding(x, kernel_size, strides, name):
    """(x, padding) for a conv: strided k > 1 convs pad ``k // 2`` on every side like PyTorch
    (Keras "same" pads the bottom/right only), others use "same"."""
    if strides > 1 and kernel_size > 1:
        return keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x), "valid"
    return x, "same"


def conv_bn(x, filters, kernel_size=3, strides=1, relu=True, name="conv"):
    """Conv (no bias) + BN (+ ReLU). Stride-2 3x3 convs pad symmetrically like PyTorch."""
    x, padding = symmetric_padding(x, kernel_size, strides, name)
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = batch_norm(x, f"{name}_bn")
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _shortcut(x, filters, name):
    if x.shape[-1] == filters:
        return x
    return conv_bn(x, filters, kernel_size=1, relu=False, name=f"{name}_downsample")


def basic_block(x, filters, name):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU (expansion 1)."""
    shortcut = _shortcut(x, filters, name)
    y = conv_bn(x, filters, 3, name=f"{name}_1")
    y = conv_bn(y, filters, 3, relu=False, name=f"{name}_2")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def bottleneck_block(x, planes, name):
    """ResNet bottleneck: 1x1 planes, 3x3 planes, 1x1 4*planes (+ shortcut), ReLU."""
    shortcut = _shortcut(x, 4 * planes, name)
    y = conv_bn(x, planes, 1, name=f"{name}_1")
    y = conv_bn(y, planes, 3, name=f"{name}_2")
    y = conv_bn(y, 4 * planes, 1, relu=False, name=f"{name}_3")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _fuse(inputs, channels, num_outputs, name):
    """Multi-resolution fusion (exchange unit) of one HRNet module."""
    outputs = []
    for i in range(num_outputs):
        terms = []
        for j, x in enumerate(inputs):
            tag = f"{name}_fuse{i}_{j}"
            if j == i:
                terms.append(x)
            elif j > i:
                y = conv_bn(x, channels[i], 1, relu=False, name=tag)
                terms.append(NearestUpsampling2D(2 ** (j - i), name=f"{tag}_up")(y))
            else:
                y = x
                for k in range(i - j):
                    last = k == i - j - 1
                    y = conv_bn(
                        y,
                        channels[i] if last else channels[j],
                        3,
                        strides=2,
                        relu=not last,
                        name=f"{tag}_down{k}",
                    )
                terms.append(y)
        y = keras.layers.Add(name=f"{name}_fuse{i}_add")(terms)
        outputs.append(keras.layers.ReLU(name=f"{name}_fuse{i}_relu")(y))
    return outputs


def hrnet_module(inputs, channels, num_blocks, multi_scale_output=True, name="module"):
    """One HRNet module: ``num_blocks`` basic blocks per branch, then fusion.

    Args:
        inputs: list of tensors, one per branch, strides 4 * 2**i.
        channels: list of int, channels of each branch.
        num_blocks: int, basic blocks per branch.
        multi_scale_output: bool, False fuses into the highest-resolution branch only.

    Returns:
        list of tensors (one per branch, or just the first).
    """
    branches = []
    for b, x in enumerate(inputs):
        for k in range(num_blocks):
            x = basic_block(x, channels[b], name=f"{name}_branch{b}_block{k}")
        branches.append(x)
    if len(branches) == 1:
        return branches
    return _fuse(branches, channels, len(branches) if multi_scale_output else 1, name)


def _transition(inputs, prev_channels, channels, name):
    """Transition to the next stage: adapt existing branches, add new lower-resolution ones."""
    outputs = []
    for i, c in enumerate(channels):
        if i < len(inputs):
            x = inputs[i]
            if prev_channels[i] != c:
                x = conv_bn(x, c, 3, name=f"{name}_{i}")
        else:
            x = inputs[-1]
            extra = i + 1 - len(inputs)
            for k in range(extra):
                last = k == extra - 1
                x = conv_bn(x, c if last else prev_channels[-1], 3, strides=2, name=f"{name}_{i}_{k}")
        outputs.append(x)
    return outputs


def resolve_width(width) -> int:
    """An int width or a preset name ("w32", "w48") -> int."""
    if isinstance(width, str):
        key = width.lower()
        if key not in HRNET_PRESETS:
            raise ValueError(
                f"Unknown HRNet preset. Expected one of {sorted(HRNET_PRESETS)}. Received: width={width!r}"
            )
        return HRNET_PRESETS[key]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be a positive integer or a preset name. Received: width={width}")
    return width


def concat_branches(branches, name="concat"):
    """Upsamples branches 1..3 bilinearly (half-pixel, = PyTorch align_corners=False) to the
    1/4 branch's size and concatenates: [B, H/4, W/4, C + 2C + 4C + 8C] (DEKR/HigherHRNet)."""
    ups = [branches[0]]
    for i, x in enumerate(branches[1:], start=1):
        ups.append(keras.layers.UpSampling2D(2**i, interpolation="bilinear", name=f"{name}_up{i}")(x))
    return keras.layers.Concatenate(name=name)(ups)


def hrnet_features(x, width=32, output="branches", name="hrnet", stem_channels=STEM_CHANNELS,
                   stage_modules=None):
    """Applies HRNet to a tensor (functional API).

    Args:
        x: tensor ``[B, H, W, 3]``, normalised image (H, W multiples of 32).
        width: int or preset name, C.
        output: "branches" (list of 4 tensors at strides 4/8/16/32, C/2C/4C/8C channels),
            "concat" (one tensor [B, H/4, W/4, 15C]) or "highest" (the 1/4 branch only; the
            last module fuses into it alone, as the top-down pose HRNet does).
        stem_channels: int, width of the two stride-2 stem convs and of the stage-1 bottlenecks
            (4 blocks, output 4x this); 64 in HRNet. The stem is width-independent, so it holds
            most of the compute of very small widths (about 70% at C = 8): tiny CPU models such
            as the Quickstart's use a narrower stem.
        stage_modules: sequence of 3 int, the modules of stages 2, 3 and 4; None = HRNet's
            (1, 4, 3). Fewer make a shallower network for tiny CPU models.

    Returns:
        a tensor or a list of tensors, see ``output``.
    """
    c = resolve_width(width)
    stages = HRNET_STAGES
    if stage_modules is not None:
        if len(stage_modules) != len(HRNET_STAGES) or min(stage_modules) < 1:
            raise ValueError("`stage_modules` must be 3 positive integers. "
                             f"Received: stage_modules={stage_modules}")
        stages = [(int(m), b, n) for m, (_, b, n) in zip(stage_modules, HRNET_STAGES)]
    if output not in OUTPUT_MODES:
        raise ValueError(f"`output` must be one of {OUTPUT_MODES}. Received: output={output!r}")
    x = conv_bn(x, stem_channels, 3, strides=2, name=f"{name}_stem1")
    x = conv_bn(x, stem_channels, 3, strides=2, name=f"{name}_stem2")
    for k in range(4):
        x = bottleneck_block(x, stem_channels, name=f"{name}_stage1_block{k}")
    branches, prev = [x], [x.shape[-1]]
    for s, (num_modules, num_branches, num_blocks) in enumerate(stages, start=2):
        channels = [c * 2**b for b in range(num_branches)]
        branches = _transition(branches, prev, channels, name=f"{name}_transition{s - 1}")
        for m in range(num_modules):
            last = s == 1 + len(stages) and m == num_modules - 1
            branches = hrnet_module(
                branches,
                channels,
                num_blocks,
                multi_scale_output=not (last and output == "highest"),
                name=f"{name}_stage{s}_module{m}",
            )
        prev = channels
    if output == "highest":
        return branches[0]
    if output == "concat":
        return concat_branches(branches, name=f"{name}_concat")
    return branches


def hrnet(
    width=32, input_shape=(None, None, 3), output="branches", normalize_input=False, name=None
):
    """HRNet backbone model.

    Args:
        width: int or preset name ("w32", "w48"), the 1/4-branch width C.
        input_shape: tuple, (H, W, 3); H and W multiples of 32 (or None).
        output: str, "branches", "concat" or "highest" (see ``hrnet_features``).
        normalize_input: bool, prepend ``ImageNormalization`` so the model takes raw 0-255 pixels.
        name: str, model name (default ``hrnet_w{C}``).

    Returns:
        ``keras.Model``; outputs as ``hrnet_features``.
    """
    c = resolve_width(width)
    name = name or f"hrnet_w{c}"
    inputs = keras.Input(input_shape, name="image")
    x = ImageNormalization(name="normalize")(inputs) if normalize_input else inputs
    outputs = hrnet_features(x, c, output=output, name="hrnet")
    return keras.Model(inputs, outputs, name=name)


def hrnet_pose_model(
    width=32, num_keypoints=17, input_shape=(256, 192, 3), normalize_input=False, name=None
):
    """The HRNet paper's top-down pose network: HRNet ("highest" output) + 1x1 conv to K heatmaps.

    This is the network whose size the paper reports (W32 28.5M, W48 63.6M at K = 17).

    Returns:
        ``keras.Model`` ``[B, H, W, 3] -> [B, H/4, W/4, K]``.
    """
    c = resolve_width(width)
    inputs = keras.Input(input_shape, name="image")
    x = ImageNormalization(name="normalize")(inputs) if normalize_input else inputs
    x = hrnet_features(x, c, output="highest", name="hrnet")
    heatmaps = keras.layers.Conv2D(num_keypoints, 1, name="final_layer")(x)
    return keras.Model(inputs, heatmaps, name=name or f"hrnet_w{c}_pose")


def higher_hrnet_deconv(features, heatmaps, filters, num_blocks=4, name="deconv"):
    """HigherHRNet deconvolution module (Cheng et al. 2020, Sec. 3.2): 1/4 -> 1/2 resolution.

    ``concat(features, heatmaps)`` -> 4x4 transposed conv stride 2 (no bias; "same" here equals
    PyTorch padding=1, output_padding=0) + BN + ReLU -> ``num_blocks`` basic blocks.

    Args:
        features: tensor ``[B, h, w, C]``, the 1/4-resolution backbone features.
        heatmaps: tensor ``[B, h, w, K']`` (the 1/4 prediction) or None to skip the concat.
        filters: int, output channels (the backbone width C in HigherHRNet).
        num_blocks: int, basic blocks after the deconvolution (4 in the paper).

    Returns:
        tensor ``[B, 2h, 2w, filters]``.
    """
    x = features
    if heatmaps is not None:
        x = keras.layers.Concatenate(name=f"{name}_concat")([features, heatmaps])
    x = keras.layers.Conv2DTranspose(
        filters,
        4,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = batch_norm(x, f"{name}_bn")
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    for k in range(num_blocks):
        x = basic_block(x, filters, name=f"{name}_block{k}")
    return x
