"""The ``posedet`` network: FPN + a head shared across levels with keypoint-aware pose embeddings.

Paper: "PoseDet: Fast Multi-Person Pose Estimation Using Pose Embedding" (../shared/papers/001),
Sec. 3.1 (pose embedding, Eq. (1)) and Sec. 3.2 (bypass, regression and classification branches,
intermediate supervision; Eq. (3)). What the paper leaves open (the bypass's own conv tower, the
DCN followed by ReLU only, the init, the 0.1 gradient factor) follows its public reference
implementation (IIGROUP/PoseDet ``roi_heads/PoseDet_head_heatmap_ml.py`` with
``configs/_base_/PoseDet_DLA34.py``: init_convs 3, refine_convs 2, cls_convs 2, heatmap_convs 1,
gradient_mul 0.1), itself built on RepPoints [Yang et al., 2019].

Network (K keypoints, input ``[B, S, S, 3]`` raw RGB 0..255, levels l with strides s_l,
h_l = w_l = S / s_l, C_h = ``head_channels``); every conv of the head is shared by all levels,
its BatchNorm is per level (the reference uses GroupNorm, which the TFLite GPU delegate does not
run; BN folds into the convs at export)::

    ImageNormalization -> fpn_features(backbone)          one [B, h_l, w_l, C_fpn] map per level
    bypass             bypass_convs x (3x3 conv C_h + BN + ReLU) -> 1x1 conv -> 2K   coarse
                       displacements (stride units == feature pixels: the DCN offsets as they are)
    regression branch  head_convs x (3x3 conv C_h + BN + ReLU) -> DCN(., coarse; K points)
                       + ReLU -> 1x1 conv -> 2K                                     refinement
    class. branch      head_convs x (3x3 conv C_h + BN + ReLU) -> DCN(., coarse; K points)
                       + ReLU -> 1x1 conv -> 1                                          logits
    heatmap branch     3x3 conv C_hm + BN + ReLU -> 1x1 conv -> K on each FPN map  (Sec. 3.2
                       "Intermediate Supervision": "a 3x3 conv layer and a 1x1 conv layer")

The DCN (``tfpose.layers.deformable_conv.DeformableConv2D``) samples each candidate's features
at its K coarse keypoints: the pose embedding of Eq. (1). The gradient that reaches the coarse
displacements through the sampling positions is multiplied by ``offset_gradient_scale`` (0.1,
the reference's ``gradient_mul``; 0 stops it): the paper supervises the bypass explicitly with
the GT joints (Sec. 3.1) and says nothing of this path. The final 1x1 convs start from
N(0, 0.01) with zero bias, the classifier's bias from the focal-loss prior -log((1 - p) / p),
p = 0.01 [Lin et al., 2017] (reference ``init_weights``); the 3x3 convs and DCNs, which BN or a
ReLU follows, from He-normal (the reference's N(0, 0.01) is tuned to 256 channels, not to the
tiny test and Quickstart models).

Outputs (float32 under every precision policy; N = sum_l h_l w_l candidates, level by level in
ascending stride, row-major inside a level, as ``tfpose.codecs.posedet``)::

    coarse [B, N, K, 2]  refine [B, N, K, 2]  logits [B, N]  heatmaps_s{s} [B, S/s, S/s, K]

Refined pose of candidate n with centre c_n and stride s_n: c_n + (coarse + refine) * s_n (Eq. 3);
the loss (``tfpose.losses.posedet``) stops the gradient of the refined pose into ``coarse``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import keras
import tensorflow as tf

from tfpose.config import ConfigError, field, register_section
from tfpose.layers.deformable_conv import DeformableConv2D
from tfpose.layers.normalize import ImageNormalization
from tfpose.models.backbones.fpn import BACKBONE_STRIDE, fpn_features
from tfpose.models.backbones.hrnet import batch_norm

# Reference head init (IIGROUP/PoseDet PoseDetHead.init_weights): final convs N(0, 0.01),
# classifier bias from the focal-loss prior probability [Lin et al., 2017].
FINAL_CONV_STDDEV = 0.01


@register_section("model", "posedet")
@dataclasses.dataclass
class PosedetModelConfig:
    """Settings of the ``posedet`` network (defaults: HRNet-W32 + FPN, paper Table 1).

    ``strides`` must equal ``codec.strides`` (checked by the method).
    """

    backbone: Literal["hrnet_w32", "hrnet_w48", "hrnet", "dla34", "mobilenetv3"] = field(
        "hrnet_w32", doc="FPN backbone (paper Table 1: HRNet-W48, HRNet-W32, DLA-34)")
    width: int = field(0, low=0, doc="backbone width override for tiny models (HRNet C, or the "
                       "DLA/MobileNet channel multiplier of tfpose.models.backbones.fpn); 0 = "
                       "the backbone's own (backbone 'hrnet' needs it)")
    strides: list[int] = field(default_factory=lambda: [8, 16, 32], low=1,
                               doc="FPN levels, ascending; the same list as codec.strides")
    fpn_channels: int = field(256, low=1, doc="channels of every FPN level")
    head_channels: int = field(256, low=1, doc="channels of the head's convs and DCNs")
    head_convs: int = field(2, low=0, doc="3x3 convs of the regression and classification "
                            "branches before their DCN (paper Sec. 3.2: two)")
    bypass_convs: int = field(3, low=0, doc="3x3 convs of the bypass before its 1x1 offset conv "
                              "(reference init_convs: 3)")
    heatmap_channels: int = field(0, low=0, doc="channels of the intermediate heatmap branch's "
                                  "3x3 conv (0 = fpn_channels, as the reference)")
    offset_gradient_scale: float = field(0.1, low=0.0, high=1.0, doc="factor on the gradient "
                                         "into the coarse displacements through the DCN "
                                         "sampling positions (reference gradient_mul 0.1; "
                                         "0 = stop)")
    prior_probability: float = field(0.01, low=0.0, high=1.0, doc="initial classifier "
                                     "probability (focal-loss prior init)")

    def validate(self):
        if not self.strides:
            raise ConfigError("strides must name at least one FPN level, got []")
        if any(b <= a for a, b in zip(self.strides, self.strides[1:])):
            raise ConfigError(f"strides {self.strides} must be increasing")
        if not 0.0 < self.prior_probability < 1.0:
            raise ConfigError(f"prior_probability must be in (0, 1), got {self.prior_probability}")
        if self.backbone == "hrnet" and not self.width:
            raise ConfigError("backbone 'hrnet' needs width > 0 (HRNet C)")

    @property
    def heatmap_width(self) -> int:
        """Channels of the heatmap branch (``heatmap_channels`` or ``fpn_channels``)."""
        return self.heatmap_channels or self.fpn_channels

    @property
    def input_multiple(self) -> int:
        """Every input side must be a multiple of this (coarsest backbone map and FPN level)."""
        return max(BACKBONE_STRIDE, max(self.strides))


@keras.saving.register_keras_serializable(package="tfpose")
class GradientScale(keras.layers.Layer):
    """Identity forward; the backward pass multiplies the gradient by ``scale``.

    ``y = stop_gradient(x) + scale * (x - stop_gradient(x))`` (SUB/MUL/ADD in TFLite, or
    nothing for scale 0 and 1). Used on the DCN offsets (module docstring).

    Args:
        scale: float in [0, 1], the gradient factor (0 stops the gradient, 1 passes it).
        **kwargs: base ``keras.layers.Layer`` arguments.

    Shapes:
        any -> same.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                0.0 <= scale <= 1.0):
            raise ValueError(f"`scale` must be a number in [0, 1]. Received: scale={scale}")
        self.scale = float(scale)

    def call(self, inputs):
        if self.scale == 1.0:
            return inputs
        held = tf.stop_gradient(inputs)
        if self.scale == 0.0:
            return held
        return held + self.scale * (inputs - held)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config


def _final_conv(filters, name, bias=0.0):
    """Shared linear 1x1 conv with bias, float32 output, N(0, 0.01) kernel (RepPoints init)."""
    return keras.layers.Conv2D(
        filters, 1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=FINAL_CONV_STDDEV),
        bias_initializer=keras.initializers.Constant(bias),
        dtype="float32", name=name)


def shared_conv_bn(levels, strides, filters, name):
    """One 3x3 conv (no bias) applied to every level, then per-level BN + ReLU.

    Args:
        levels: list of tensors ``[B, h_l, w_l, C]``.
        strides: list of int, s_l (names the per-level BN layers).
        filters: int, output channels.
        name: str, layer-name prefix (the conv is ``{name}_conv``).

    Returns:
        list of tensors ``[B, h_l, w_l, filters]``.
    """
    conv = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name=f"{name}_conv")
    return [keras.layers.ReLU(name=f"{name}_relu_s{s}")(batch_norm(conv(x), f"{name}_bn_s{s}"))
            for x, s in zip(levels, strides)]


def _flatten_levels(maps, strides, tail, name):
    """Per-level ``[B, h_l, w_l, prod(tail)]`` -> ``[B, N] + tail``, levels concatenated."""
    flat = [keras.layers.Reshape((-1,) + tail, dtype="float32", name=f"{name}_flat_s{s}")(m)
            for m, s in zip(maps, strides)]
    if len(flat) == 1:
        return flat[0]
    return keras.layers.Concatenate(axis=1, dtype="float32", name=name)(flat)


def posedet_head(levels, strides, num_keypoints, model_cfg):
    """The head of Sec. 3.2 on FPN maps; every conv and DCN shared by the levels.

    Args:
        levels: list of tensors ``[B, h_l, w_l, C_fpn]``, ascending stride.
        strides: list of int, s_l.
        num_keypoints: int, K.
        model_cfg: PosedetModelConfig (head_channels, head_convs, bypass_convs, heatmap_width,
            offset_gradient_scale, prior_probability).

    Returns:
        dict of float32 tensors, see the module docstring.
    """
    k, channels = num_keypoints, model_cfg.head_channels

    def tower(count, name):
        x = levels
        for i in range(count):
            x = shared_conv_bn(x, strides, channels, f"{name}{i + 1}")
        return x

    # bypass: coarse displacements in stride units = DCN offsets in feature pixels
    coarse_conv = _final_conv(2 * k, "head_coarse")
    coarse = [coarse_conv(x) for x in tower(model_cfg.bypass_convs, "head_bypass")]
    scale = GradientScale(model_cfg.offset_gradient_scale, dtype="float32",
                          name="head_offset_gradient")
    offsets = [scale(c) for c in coarse]

    def embedding(name):
        """Pose embeddings (Eq. (1)): the branch's tower, then a DCN at the coarse pose + ReLU."""
        dcn = DeformableConv2D(channels, num_points=k, kernel_initializer="he_normal",
                               name=f"{name}_dcn")
        return [keras.layers.ReLU(name=f"{name}_dcn_relu_s{s}")(dcn([f, o]))
                for f, o, s in zip(tower(model_cfg.head_convs, name), offsets, strides)]

    refine_conv = _final_conv(2 * k, "head_refine")
    refine = [refine_conv(x) for x in embedding("head_reg")]
    p = model_cfg.prior_probability
    logits_conv = _final_conv(1, "head_logits", bias=-math.log((1.0 - p) / p))
    logits = [logits_conv(x) for x in embedding("head_cls")]

    heat = shared_conv_bn(levels, strides, model_cfg.heatmap_width, "head_heatmap")
    heat_conv = _final_conv(k, "head_heatmaps")
    outputs = {
        "coarse": _flatten_levels(coarse, strides, (k, 2), "coarse"),
        "refine": _flatten_levels(refine, strides, (k, 2), "refine"),
        "logits": _flatten_levels(logits, strides, (), "logits"),
    }
    for x, s in zip(heat, strides):
        outputs[f"heatmaps_s{s}"] = heat_conv(x)
    return outputs


def posedet_network(model_cfg: PosedetModelConfig, num_keypoints: int,
                    input_shape=(None, None, 3), name=None) -> keras.Model:
    """Builds the network from the model section and K.

    Args:
        model_cfg: PosedetModelConfig.
        num_keypoints: int, K.
        input_shape: tuple (H, W, 3); H and W multiples of ``model_cfg.input_multiple``, or None.
        name: str, model name (default ``posedet_{backbone}``).

    Returns:
        ``keras.Model`` images ``[B, H, W, 3]`` (RGB 0..255) -> dict of float32 tensors
        (module docstring).
    """
    if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(f"`num_keypoints` must be a positive integer. Received: {num_keypoints}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"`input_shape` must be (H, W, 3). Received: input_shape={input_shape}")
    multiple = model_cfg.input_multiple
    for side in input_shape[:2]:
        if side is not None and side % multiple:
            raise ValueError(f"Input height and width must be multiples of {multiple}. "
                             f"Received: input_shape={input_shape}")
    strides = list(model_cfg.strides)
    images = keras.Input(input_shape, name="image")
    x = ImageNormalization(name="normalize")(images)
    levels = fpn_features(x, model_cfg.backbone, channels=model_cfg.fpn_channels,
                          strides=strides, width=model_cfg.width or None, name="fpn")
    outputs = posedet_head(levels, strides, num_keypoints, model_cfg)
    return keras.Model(images, outputs, name=name or f"posedet_{model_cfg.backbone}")


def build_posedet_model(cfg, input_shape=(None, None, 3)) -> keras.Model:
    """``Method.build_model`` of ``posedet``: the network for a Config (K from ``cfg.spec``).

    Args:
        cfg: tfpose.config.Config with ``cfg.model`` a PosedetModelConfig.
        input_shape: tuple (H, W, 3), see ``posedet_network``.

    Returns:
        ``keras.Model``, see ``posedet_network``.
    """
    if not isinstance(cfg.model, PosedetModelConfig):
        raise ConfigError(
            f"{cfg.source or '<config>'}: model.type must be 'posedet' for method posedet, "
            f"got {type(cfg.model).__name__}")
    return posedet_network(cfg.model, cfg.spec.num_keypoints, input_shape)
