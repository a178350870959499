"""Feature-pyramid backbones of the posedet method (PoseDet paper Sec. 3.2: "The backbone is a
feature pyramid network (FPN), producing a multi-scale feature pyramid from a single resolution
image"; the paper's backbones are HRNet-W32/W48 and DLA-34, Table 1).

``fpn_features`` returns one ``[B, S/s, S/s, channels]`` map per requested stride s:

- HRNet (``hrnet_w32``, ``hrnet_w48``, ``hrnet``): the HRNetV2p neck (Sun et al., "High-Resolution
  Representations for Labeling Pixels and Regions", 2019, Sec. 3 / Fig. 4(c)) in the form the
  PoseDet reference configures it (256 channels, strides 8, 16, 32): the four HRNet branches are
  upsampled bilinearly to 1/4 and concatenated (``hrnet.concat_branches``, 15C channels), a 1x1
  conv + BN reduces them to ``channels``, and level s average-pools that 1/4 map by s/8 then
  applies a 3x3 stride-2 conv + BN (so every level is a downsampling of the high-resolution
  representation). Strides 8 to 128.
- DLA-34 (``dla34``) and MobileNetV3-Large (``mobilenetv3``): the top-down FPN of Lin et al.,
  "Feature Pyramid Networks for Object Detection", CVPR 2017, Sec. 3: 1x1 lateral conv + BN on each
  backbone level from the smallest requested stride up to 32, top-down pathway of nearest x2
  upsampling + addition, a 3x3 output conv + BN per returned level (no activation). Levels above
  stride 32 (the PoseDet DLA-34 reference: 128 channels, strides 8-64) come from 3x3 stride-2
  convs + BN: the first on the stride-32 backbone map, each further one on ReLU of the previous
  (RetinaNet, Lin et al. ICCV 2017, Sec. 4, P6/P7). Strides 4 to 128. The MobileNetV3 FPN (for
  phones; 96-128 channels suit it) factorises every 3x3 conv into a 3x3 depthwise conv + BN and a
  1x1 conv + BN.

The reference normalises its FPN convs with GroupNorm; BatchNorm (``hrnet.batch_norm``) is used
here, as everywhere in the project: it folds into the convs at export, so every op of every
backbone is one the TFLite GPU delegate runs (DESIGN.md section 3; checked in the tests).

Full-size trainable parameters (independent of the input size) and GMACs of a batch-1 forward
at 512 x 512 (multiply-adds of the convolutions, ``tfpose.benchmark.graph_flops`` / 2):
    hrnet_w32,   256 channels, strides 8-32: 31,199,936 = HRNet-W32 29,305,536 + neck;  46.4 GMACs
    hrnet_w48,   256 channels, strides 8-32: 67,280,960 = HRNet-W48 65,325,120 + neck;  90.9 GMACs
    dla34,       128 channels, strides 8-64: 16,377,776 = DLA-34 15,229,104 + FPN;      16.9 GMACs
    mobilenetv3, 128 channels, strides 8-32:  3,169,200 = MobileNetV3-L 2,971,952 + FPN; 1.3 GMACs
"""

from __future__ import annotations

import keras

from tfpose.models.backbones.dla import dla34_features
from tfpose.models.backbones.hrnet import (
    NearestUpsampling2D,
    concat_branches,
    conv_bn,
    hrnet_features,
    resolve_width,
)
from tfpose.models.backbones.mobilenet import depthwise_bn, mobilenetv3_features

FPN_BACKBONES = ("hrnet_w32", "hrnet_w48", "hrnet", "dla34", "mobilenetv3")

# Smallest pyramid stride of each backbone family: the HRNet neck's levels are stride-2 convs on
# the 1/4 map; the other FPNs can start at their stride-4 backbone level.
MIN_STRIDE = {"hrnet": 8, "dla34": 4, "mobilenetv3": 4}
# Largest pyramid stride (RetinaNet's P7, Lin et al. ICCV 2017 Sec. 4).
MAX_STRIDE = 128
# Stride of the lowest-resolution level of every backbone here.
BACKBONE_STRIDE = 32
# Stride of the HRNet map the HRNetV2p neck pools from.
HRNET_NECK_STRIDE = 4


def _family(backbone):
    return "hrnet" if backbone.startswith("hrnet") else backbone


def _check_strides(strides, backbone):
    low = MIN_STRIDE[_family(backbone)]
    allowed = [2**k for k in range(low.bit_length() - 1, MAX_STRIDE.bit_length())]
    if not isinstance(strides, (list, tuple)) or not strides:
        raise ValueError(
            f"`strides` must be a non-empty list of ints. Received: strides={strides!r}"
        )
    for s in strides:
        if isinstance(s, bool) or not isinstance(s, int) or s not in allowed:
            raise ValueError(
                f"Stride {s!r} is not supported by backbone {backbone!r} (supported: {allowed}). "
                f"Received: strides={list(strides)}"
            )
    if any(b <= a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"`strides` must be strictly ascending. Received: strides={list(strides)}")
    return [int(s) for s in strides]


def _check_input(x, strides):
    if len(x.shape) != 4:
        raise ValueError(f"`x` must be a [B, H, W, 3] tensor. Received: shape={tuple(x.shape)}")
    multiple = max(BACKBONE_STRIDE, max(strides))
    for size in x.shape[1:3]:
        if size is not None and size % multiple:
            raise ValueError(
                f"Input height and width must be multiples of {multiple} for strides {strides}. "
                f"Received: shape={tuple(x.shape)}"
            )


def _output_conv(x, channels, strides, separable, name):
    """3x3 conv + BN (no activation), or its depthwise-separable factorisation."""
    if separable:
        x = depthwise_bn(x, 3, strides, name=f"{name}_dw")
        return conv_bn(x, channels, 1, relu=False, name=f"{name}_pw")
    return conv_bn(x, channels, 3, strides=strides, relu=False, name=name)


def hrnet_fpn(branches, channels, strides, name="hrfpn"):
    """HRNetV2p neck: concat of the upsampled branches -> 1x1 conv + BN -> per level an
    average pool by s/8 of the 1/4 map and a 3x3 stride-2 conv + BN.

    Args:
        branches: list of tensors at strides 4, 8, 16, 32 (the HRNet branches).
        channels: int, output channels.
        strides: list of int, ascending strides, each 8 * 2^k.
        name: str, prefix of the layer names.

    Returns:
        list of tensors ``[B, S/s, S/s, channels]`` in the order of ``strides``.
    """
    x = concat_branches(branches, name=f"{name}_concat")
    x = conv_bn(x, channels, 1, relu=False, name=f"{name}_reduce")
    outputs = []
    for s in strides:
        pool = s // (2 * HRNET_NECK_STRIDE)
        y = x
        if pool > 1:
            y = keras.layers.AveragePooling2D(pool, name=f"{name}_pool_s{s}")(y)
        outputs.append(conv_bn(y, channels, 3, strides=2, relu=False, name=f"{name}_out_s{s}"))
    return outputs


def fpn_neck(features, channels, strides, separable=False, name="neck"):
    """Top-down FPN over backbone levels plus stride-2 extra levels (see the module docstring).

    Args:
        features: dict stride -> tensor of backbone levels at consecutive power-of-two strides
            ending at the largest (32 here).
        channels: int, output channels.
        strides: list of int, ascending output strides (backbone strides, or larger ones).
        separable: bool, depthwise-separable output and extra-level convs.
        name: str, prefix of the layer names.

    Returns:
        list of tensors ``[B, S/s, S/s, channels]`` in the order of ``strides``.
    """
    top = max(features)
    levels = [s for s in sorted(features) if s >= strides[0]]
    pyramid = {}
    for s in reversed(levels):
        lateral = conv_bn(features[s], channels, 1, relu=False, name=f"{name}_lateral_s{s}")
        if 2 * s in pyramid:
            up = NearestUpsampling2D(2, name=f"{name}_up_s{s}")(pyramid[2 * s])
            lateral = keras.layers.Add(name=f"{name}_merge_s{s}")([lateral, up])
        pyramid[s] = lateral
    outputs, extra, s = {}, features[top], top
    for s_out in strides:
        if s_out <= top:
            outputs[s_out] = _output_conv(
                pyramid[s_out], channels, 1, separable, f"{name}_out_s{s_out}"
            )
    while s < strides[-1]:
        if s > top:
            extra = keras.layers.ReLU(name=f"{name}_extra_s{s}_relu")(extra)
        s *= 2
        extra = _output_conv(extra, channels, 2, separable, f"{name}_extra_s{s}")
        outputs[s] = extra
    return [outputs[s] for s in strides]


def fpn_features(x, backbone, *, channels, strides, width=None, name="fpn"):
    """Applies an FPN backbone (functional API).

    Args:
        x: Keras tensor ``[B, S, S, 3]``, normalised images; S a multiple of max(32, max stride).
        backbone: str, one of ``FPN_BACKBONES``: "hrnet_w32", "hrnet_w48", "hrnet" (width from
            ``width``), "dla34", "mobilenetv3".
        channels: int, channels of every pyramid level (PoseDet reference: 256 on HRNet, 128 on
            DLA-34).
        strides: list of int, ascending powers of two, 8-128 on HRNet, 4-128 otherwise.
        width: int or None, overrides the backbone width: HRNet C (the 1/4-branch width; required
            for "hrnet"); DLA-34 and MobileNetV3 the stem width (16 in both papers), every layer
            width scaled by width / 16 (DLA exactly, MobileNet rounded to multiples of 8).
        name: str, prefix of the layer names.

    Returns:
        list of tensors ``[B, S/s, S/s, channels]``, one per stride, in the order of ``strides``.
    """
    if backbone not in FPN_BACKBONES:
        raise ValueError(f"Unknown FPN backbone. Expected one of {list(FPN_BACKBONES)}. "
                         f"Received: backbone={backbone!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"`channels` must be a positive integer. Received: channels={channels!r}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"`width` must be a positive integer or None. Received: width={width!r}")
    strides = _check_strides(strides, backbone)
    _check_input(x, strides)
    if _family(backbone) == "hrnet":
        if width is None and backbone == "hrnet":
            raise ValueError(
                f"backbone='hrnet' needs a `width` (the HRNet C). Received: width={width}"
            )
        c = width if width is not None else resolve_width(backbone.split("_")[1])
        branches = hrnet_features(x, c, output="branches", name=f"{name}_hrnet")
        return hrnet_fpn(branches, channels, strides, name=f"{name}_neck")
    if backbone == "dla34":
        features = dla34_features(x, **_width_kwargs(width), name=f"{name}_dla34")
    else:
        features = mobilenetv3_features(x, **_width_kwargs(width), name=f"{name}_mobilenetv3")
    return fpn_neck(features, channels, strides, separable=backbone == "mobilenetv3",
                    name=f"{name}_neck")


def _width_kwargs(width):
    return {} if width is None else {"width": width}
