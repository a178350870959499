"""The ``dekr`` network: HRNet + heatmap-guided pixel-wise keypoint regression with ART units.

Paper: "Bottom-Up Human Pose Estimation by Ranking Heatmap-Guided Adaptive Keypoint Estimates"
(../shared/papers/003), Sec. 3.1 (network, Eqs. (1)-(3)) and Sec. 4.2 (three parallel heatmap
branches, averaged). Structure facts (channels, dilations, residual ART blocks, 2x2 transform
without translation, init of the final convs) come from the public reference implementation
(HRNet/HRNet-Bottom-Up-Pose-Estimation, ``lib/models/pose_hrnet.py``, ``conv_module.py`` and
``experiments/coco/w32|w48/*.yaml``); the code is written here.

Network (C = width, K keypoints, input ``[B, S, S, 3]`` raw RGB 0..255, h = w = S / 4)::

    ImageNormalization -> HRNet-W{C} -> F = concat of the 4 branches upsampled bilinearly to 1/4
                                            [B, h, w, 15C]
    H (Eq. 1)   1x1 conv 15C -> C_h (= C) + BN + ReLU, then for each dilation d in (1, 2, 3):
                ART residual block (dilation d) -> 1x1 conv -> K; the branch maps averaged
    P (Eq. 2)   concat(F, H) -> 1x1 conv -> 256 + BN + ReLU -> ART residual block (256)
                  -> 1x1 conv -> 1                                          centre heatmap C
                  -> 1x1 conv -> 15K + BN + ReLU (the K branches' transitions in one conv)
                  -> per keypoint k: its 15 channels -> ART residual block (15)
                     -> 1x1 conv -> 2 (dx_k, dy_k)                          offsets O, [.., 2K]
                     (``offset_branch_channels: 0``: one 1x1 conv -> 2K instead)

An *ART residual block* is two adaptive representation transformation units (Sec. 3.1: adaptive
conv + BN + ReLU) with an identity shortcut around both, as the reference ``STNBLOCK``:
``relu(BN(AConv(relu(BN(AConv(x))))) + x)``. Each adaptive conv predicts a per-pixel 2x2 transform
T of the regular 3x3 grid (Eq. (3)), no translation (reference).

Differences from the reference, on purpose:
    * The three heatmap branches have separate weights; the reference shares the adaptive
      convs', transform convs' and final 1x1 conv's weights across the branches (BN is per
      branch). Sharing a conv across different dilations would need a new layer; the extra
      weights are 2 * 3 * (9C^2 + 36C + 4) + 2 * (CK + K) (0.04M at W32, 0.09M at W48).
    * The offsets come from per-keypoint (disentangled) branches as in DEKR (CVPR 2021), the
      reference of this paper uses one 1x1 conv to 2K (``offset_branch_channels: 0``).
    * Intermediate convs start from He-normal (the backbone's init); the reference starts every
      conv from N(0, 0.001) before loading ImageNet weights into the backbone.

Offsets are in output-map pixels, interleaved (dx_0, dy_0, dx_1, ...), see the codec.
Outputs are float32 under every precision policy (the last layers use ``dtype="float32"``).

Parameter counts at K = 17, trainable weights (conv kernels and biases, BN gamma/beta, the
transform convs of the adaptive convs; BN moving statistics excluded, as in the HRNet tests),
built at 512 (W32) / 640 (W48), never run:
    W32: 30,867,072 (paper Table 1: 30.7M, +0.5%)   W48: 67,040,912 (paper: 66.8M, +0.4%)
With ``offset_branch_channels: 0``: 30,721,110 / 66,894,950. Minus the unshared branch weights
(42,610 / 91,538) this is the reference structure: 30,678,500 / 66,803,412 = the paper's
30.7M / 66.8M.

Compute (TF profiler float_ops of the frozen graph at batch 1, / 2 for multiply-adds; the paper's
"GFLOPs" are multiply-adds): W32 at 512: 67.8 G (64.96 G with one offset conv; paper 63.7),
W48 at 640: 178.0 G (173.6 G; paper 170.1). The profiler also counts the element-wise ops of
BN and of the bilinear sampling.
"""

from __future__ import annotations

import dataclasses

import keras

from tfpose.config import ConfigError, field, register_section
from tfpose.layers.adaptive_conv import AdaptiveConv2D
from tfpose.layers.normalize import ImageNormalization
from tfpose.models.backbones.hrnet import HRNET_STAGES, batch_norm, conv_bn, hrnet_features

# The network's output stride (HRNet's highest-resolution branch) and the factor every input
# side must be a multiple of (HRNet's lowest branch is at 1/32).
OUTPUT_STRIDE = 4
INPUT_MULTIPLE = 32

# Reference ``init_weights``: conv weights N(0, 0.001), biases 0 (used for the final convs).
FINAL_CONV_STDDEV = 0.001


@register_section("model", "dekr")
@dataclasses.dataclass
class DekrModelConfig:
    """Settings of the ``dekr`` network (defaults: the paper's COCO models, Sec. 3.1 / 4.2).

    The ``scorer_*`` fields are read by the scorer-training stage (Sec. 3.2, the pose-scoring
    net trained on grouped candidates of the training set), not by the network.
    """

    width: int = field(32, low=1, doc="HRNet width C (32 and 48 in the paper)")
    stem_channels: int = field(64, low=1, doc="HRNet stem and stage-1 width (64 in HRNet; "
                               "smaller only for tiny CPU models such as the Quickstart's)")
    stage_modules: list[int] = field(default_factory=lambda: [m for m, _, _ in HRNET_STAGES],
                                     low=1, doc="HRNet modules of stages 2, 3 and 4 (1, 4, 3 "
                                     "in HRNet; fewer for tiny CPU models such as the "
                                     "Quickstart's)")
    heatmap_channels: int = field(0, low=0, doc="channels of the keypoint heatmap head H "
                                  "(0 = width, as the reference: 32 for W32, 48 for W48)")
    heatmap_dilations: list[int] = field(default_factory=lambda: [1, 2, 3], low=1,
                                         doc="dilation of each parallel heatmap branch; the "
                                         "branch heatmaps are averaged (Sec. 4.2)")
    regression_channels: int = field(256, low=1, doc="channels of the pixel-wise keypoint "
                                     "regression head P (reference: 256)")
    offset_branch_channels: int = field(15, low=0, doc="channels of each keypoint's offset "
                                        "branch (DEKR-style disentangled regression); 0 = one "
                                        "1x1 conv to 2K offsets (the paper's reference code)")
    scorer_epochs: int = field(30, low=1, doc="scorer stage: epochs of training the pose-"
                               "scoring net on grouped candidates")
    scorer_learning_rate: float = field(1e-3, low=0.0, doc="scorer stage: learning rate")
    scorer_max_images: int = field(0, low=0, doc="scorer stage: training images to collect "
                                   "candidates from (0 = all)")

    def validate(self):
        if len(self.stage_modules) != 3:
            raise ConfigError(f"stage_modules must name the modules of stages 2, 3 and 4, got "
                              f"{self.stage_modules}")
        if not self.heatmap_dilations:
            raise ConfigError("heatmap_dilations must name at least one dilation, got []")
        if self.scorer_learning_rate <= 0:
            raise ConfigError(
                f"scorer_learning_rate must be positive, got {self.scorer_learning_rate}"
            )

    @property
    def heatmap_width(self) -> int:
        """Channels of the heatmap head (``heatmap_channels`` or ``width``)."""
        return self.heatmap_channels or self.width


def _final_conv(x, filters, name):
    """Linear 1x1 conv with bias, float32 output, reference init N(0, 0.001) / 0."""
    return keras.layers.Conv2D(
        filters,
        1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=FINAL_CONV_STDDEV),
        bias_initializer="zeros",
        dtype="float32",
        name=name,
    )(x)


def art_residual_block(x, dilation_rate=1, name="art"):
    """Two ART units with an identity shortcut (reference ``STNBLOCK``), Sec. 3.1.

    ``relu(BN(AConv(relu(BN(AConv(x))))) + x)`` with 2x2 transforms (no translation).

    Args:
        x: tensor ``[B, H, W, C]``.
        dilation_rate: int, dilation of both adaptive convs' regular grid.
        name: str, layer-name prefix.

    Returns:
        tensor ``[B, H, W, C]``.
    """
    filters = x.shape[-1]
    y = x
    for unit in (1, 2):
        y = AdaptiveConv2D(
            filters,
            dilation_rate=dilation_rate,
            use_translation=False,  # reference: transform_matrix_conv outputs 4 channels
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"{name}_aconv{unit}",
        )(y)
        y = batch_norm(y, f"{name}_bn{unit}")
        if unit == 1:
            y = keras.layers.ReLU(name=f"{name}_relu{unit}")(y)
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def keypoint_heatmap_head(features, num_keypoints, channels, dilations, name="heatmap"):
    """Keypoint heatmap head H (Eq. (1)) with parallel dilated branches averaged (Sec. 4.2).

    Args:
        features: tensor ``[B, h, w, C_f]``, the representation F.
        num_keypoints: int, K.
        channels: int, width of the head.
        dilations: sequence of int, one branch per dilation.
        name: str, layer-name prefix.

    Returns:
        float32 tensor ``[B, h, w, K]``.
    """
    x = conv_bn(features, channels, 1, name=f"{name}_transition")
    maps = []
    for i, dilation in enumerate(dilations):
        y = art_residual_block(x, dilation, name=f"{name}_branch{i}")
        maps.append(_final_conv(y, num_keypoints, name=f"{name}_branch{i}_final"))
    if len(maps) == 1:
        return maps[0]
    return keras.layers.Average(dtype="float32", name=f"{name}_mean")(maps)


def keypoint_regression_head(
    features, heatmaps, num_keypoints, channels, offset_branch_channels, name="regression"
):
    """Pixel-wise keypoint regression head P (Eq. (2)): (C, O) = P(F, H).

    Args:
        features: tensor ``[B, h, w, C_f]``, the representation F.
        heatmaps: tensor ``[B, h, w, K]``, the estimated heatmaps H.
        num_keypoints: int, K.
        channels: int, width of the head (256).
        offset_branch_channels: int, width of each keypoint's offset branch; 0 = one 1x1 conv.
        name: str, layer-name prefix.

    Returns:
        (centre ``[B, h, w, 1]``, offsets ``[B, h, w, 2K]`` interleaved), float32.
    """
    x = keras.layers.Concatenate(name=f"{name}_input")([features, heatmaps])
    x = conv_bn(x, channels, 1, name=f"{name}_transition")
    x = art_residual_block(x, 1, name=f"{name}_block")
    center = _final_conv(x, 1, name=f"{name}_center")
    if offset_branch_channels == 0:
        return center, _final_conv(x, 2 * num_keypoints, name=f"{name}_offsets")
    # The K branches' 1x1 transitions as one conv (the reference's ``transition_offset``): the
    # same function as K separate convs, one pass over the 256-channel map instead of K.
    c = offset_branch_channels
    branches = conv_bn(x, num_keypoints * c, 1, name=f"{name}_offset_transition")
    per_keypoint = []
    for k in range(num_keypoints):
        tag = f"{name}_offset{k}"
        y = branches[..., k * c:(k + 1) * c]
        y = art_residual_block(y, 1, name=f"{tag}_block")
        per_keypoint.append(_final_conv(y, 2, name=f"{tag}_final"))
    if num_keypoints == 1:
        return center, per_keypoint[0]
    offsets = keras.layers.Concatenate(dtype="float32", name=f"{name}_offsets")(per_keypoint)
    return center, offsets


def dekr_network(model_cfg: DekrModelConfig, num_keypoints: int, input_shape=(None, None, 3),
                 name=None) -> keras.Model:
    """Builds the network from the model section and K.

    Args:
        model_cfg: DekrModelConfig.
        num_keypoints: int, K.
        input_shape: tuple (H, W, 3); H and W multiples of 32, or None (any multiple of 32 at
            call time, e.g. multi-scale testing).
        name: str, model name (default ``dekr_w{C}``).

    Returns:
        ``keras.Model`` images ``[B, H, W, 3]`` (RGB 0..255) -> dict of float32 tensors
        ``heatmaps [B, H/4, W/4, K]``, ``center [B, H/4, W/4, 1]``,
        ``offsets [B, H/4, W/4, 2K]``.
    """
    if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(f"`num_keypoints` must be a positive integer. Received: {num_keypoints}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"`input_shape` must be (H, W, 3). Received: input_shape={input_shape}")
    for side in input_shape[:2]:
        if side is not None and side % INPUT_MULTIPLE:
            raise ValueError(
                f"Input height and width must be multiples of {INPUT_MULTIPLE}. "
                f"Received: input_shape={input_shape}"
            )
    width = model_cfg.width
    images = keras.Input(input_shape, name="image")
    x = ImageNormalization(name="normalize")(images)
    features = hrnet_features(x, width, output="concat", name="hrnet",
                              stem_channels=model_cfg.stem_channels,
                              stage_modules=model_cfg.stage_modules)
    heatmaps = keypoint_heatmap_head(
        features, num_keypoints, model_cfg.heatmap_width, model_cfg.heatmap_dilations
    )
    center, offsets = keypoint_regression_head(
        features,
        heatmaps,
        num_keypoints,
        model_cfg.regression_channels,
        model_cfg.offset_branch_channels,
    )
    outputs = {"heatmaps": heatmaps, "center": center, "offsets": offsets}
    return keras.Model(images, outputs, name=name or f"dekr_w{width}")


def build_dekr_model(cfg, input_shape=(None, None, 3)) -> keras.Model:
    """``Method.build_model`` of ``dekr``: the network for a Config (K from ``cfg.spec``).

    Args:
        cfg: tfpose.config.Config with ``cfg.model`` a DekrModelConfig.
        input_shape: tuple (H, W, 3), see ``dekr_network``.

    Returns:
        ``keras.Model``, see ``dekr_network``.
    """
    if not isinstance(cfg.model, DekrModelConfig):
        raise ConfigError(
            f"{cfg.source or '<config>'}: model.type must be 'dekr' for method dekr, "
            f"got {type(cfg.model).__name__}"
        )
    return dekr_network(cfg.model, cfg.spec.num_keypoints, input_shape)
