"""DLA-34 backbone (Yu et al., "Deep Layer Aggregation", CVPR 2018).

Architecture (paper Sec. 3-4, DLA-34 of the paper's ImageNet table), level widths
c = (16, 32, 64, 128, 256, 512) and tree depths (1, 1, 1, 2, 2, 1):
    base     7x7 conv c0, BN, ReLU                                                       (1/1)
    level 0  3x3 conv c0, BN, ReLU                                                       (1/1)
    level 1  3x3 stride-2 conv c1, BN, ReLU                                              (1/2)
    level 2  tree of depth 1 (two basic blocks, c2)                                      (1/4)
    level 3  tree of depth 2 (four basic blocks, c3), level root                         (1/8)
    level 4  tree of depth 2 (c4), level root                                            (1/16)
    level 5  tree of depth 1 (c5), level root                                            (1/32)
Hierarchical deep aggregation (Sec. 3.2): a tree of depth d > 1 is two trees of depth d - 1 whose
first output is passed on as a child of the second; a tree of depth 1 is two basic blocks (the
first strided, its shortcut a 2x2 max pool + 1x1 conv + BN where the width changes) merged by an
aggregation node ("root", Sec. 4.1: concat -> 1x1 conv -> BN -> ReLU) over the two block
outputs and the children handed down. A level root (levels 3-5) also hands its max-pooled input
to the final root, so that root aggregates across stages (iterative aggregation of the stages).

Stride-2 3x3 convs pad 1 pixel on every side (``hrnet.conv_bn``), 2x2 stride-2 max pools downsample
the shortcuts; BatchNorm via ``hrnet.batch_norm``.

Trainable parameters of the full-size backbone (conv kernels, BN gamma/beta): 15,229,104; with
the ImageNet classifier (1x1 conv 512 -> 1000 with bias, 513,000, not built here) 15,742,104, the
15.7M of the released DLA-34 model (tests/unit/models/test_fpn.py). The authors' code also
builds 1x1 projections on its depth-2 trees that its forward pass never uses (41,728 parameters
in its checkpoints); they are not built here.
"""

from __future__ import annotations

import keras

from tfpose.models.backbones.hrnet import conv_bn

# Paper, DLA-34: widths of levels 0-5 and tree depths of levels 0-5 (levels 0-1 are plain convs).
DLA34_CHANNELS = (16, 32, 64, 128, 256, 512)
DLA34_LEVELS = (1, 1, 1, 2, 2, 1)
# Paper Sec. 4: the 7x7 base conv in front of level 0.
BASE_KERNEL = 7

# Feature strides returned by ``dla34_features`` (levels 2-5).
FEATURE_STRIDES = (4, 8, 16, 32)


def dla_block(x, residual, filters, strides=1, name="block"):
    """Basic block with an explicit shortcut: 3x3 conv (stride) + BN + ReLU, 3x3 conv + BN,
    + ``residual``, ReLU. ``residual`` must have the output's shape."""
    y = conv_bn(x, filters, 3, strides=strides, name=f"{name}_1")
    y = conv_bn(y, filters, 3, relu=False, name=f"{name}_2")
    y = keras.layers.Add(name=f"{name}_add")([y, residual])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def dla_root(inputs, filters, name="root"):
    """Aggregation node (paper Sec. 4.1): concat -> 1x1 conv -> BN -> ReLU."""
    x = keras.layers.Concatenate(name=f"{name}_concat")(inputs)
    return conv_bn(x, filters, 1, name=name)


def dla_tree(x, levels, filters, strides=1, level_root=False, children=None, name="tree"):
    """Hierarchical deep aggregation tree (paper Sec. 3.2, Fig. 2(d)-(f)).

    Args:
        x: tensor ``[B, H, W, C]``.
        levels: int (>= 1), tree depth; a depth-d tree holds 2^d basic blocks.
        filters: int, output width.
        strides: int, stride of the first block (1 or 2).
        level_root: bool, hand the (max-pooled) input to the final aggregation node.
        children: list of tensors at the output resolution, aggregated by the final node.

    Returns:
        tensor ``[B, H / strides, W / strides, filters]``.
    """
    children = list(children or [])
    bottom = x
    if strides > 1:
        bottom = keras.layers.MaxPooling2D(strides, name=f"{name}_pool")(x)
    if level_root:
        children.append(bottom)
    if levels == 1:
        residual = bottom
        if bottom.shape[-1] != filters:
            residual = conv_bn(bottom, filters, 1, relu=False, name=f"{name}_project")
        x1 = dla_block(x, residual, filters, strides, name=f"{name}_block1")
        x2 = dla_block(x1, x1, filters, name=f"{name}_block2")
        return dla_root([x2, x1, *children], filters, name=f"{name}_root")
    x1 = dla_tree(x, levels - 1, filters, strides, name=f"{name}_tree1")
    return dla_tree(x1, levels - 1, filters, children=children + [x1], name=f"{name}_tree2")


def dla34_features(x, width=DLA34_CHANNELS[0], name="dla34"):
    """Applies the DLA-34 backbone (functional API).

    Args:
        x: tensor ``[B, H, W, 3]``, normalised image (H, W multiples of 32).
        width: int, width of the base and level 0 (16 in the paper); level i has width * 2^i
            channels, the paper's widths scaled by width / 16.
        name: str, prefix of the layer names.

    Returns:
        dict stride -> tensor for strides 4, 8, 16, 32 (levels 2-5; width 16: 64, 128, 256, 512
        channels).
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be a positive integer. Received: width={width}")
    channels = [width * c // DLA34_CHANNELS[0] for c in DLA34_CHANNELS]
    x = conv_bn(x, channels[0], BASE_KERNEL, name=f"{name}_base")
    x = conv_bn(x, channels[0], 3, name=f"{name}_level0")
    x = conv_bn(x, channels[1], 3, strides=2, name=f"{name}_level1")
    features, stride = {}, 2
    for level in range(2, len(DLA34_CHANNELS)):
        x = dla_tree(x, DLA34_LEVELS[level], channels[level], strides=2, level_root=level > 2,
                     name=f"{name}_level{level}")
        stride *= 2
        features[stride] = x
    return {s: features[s] for s in FEATURE_STRIDES}
