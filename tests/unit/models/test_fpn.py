"""tfpose.models.backbones.fpn / dla / mobilenet: shapes and strides, numpy references of the
FPN necks, h-swish, reference parameter counts, GPU-delegate op set, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operator_names
from tfpose.models.backbones import fpn as fpn_module
from tfpose.models.backbones.dla import dla34_features, dla_tree
from tfpose.models.backbones.fpn import fpn_features, fpn_neck, hrnet_fpn
from tfpose.models.backbones.hrnet import conv_bn
from tfpose.models.backbones.mobilenet import (
    HardSigmoid,
    HardSwish,
    inverted_residual,
    make_divisible,
    mobilenetv3_features,
)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def images(size, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


# --- numpy references ----------------------------------------------------------------------


def np_conv(x, kernel, stride=1, depthwise=False):
    """x [H, W, C]; kernel [k, k, C, O] (depthwise: [k, k, C, 1]); zero padding k // 2 on
    every side (stride 1: "same")."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((p, p), (p, p), (0, 0)))
    ho = (x.shape[0] + 2 * p - k) // stride + 1
    wo = (x.shape[1] + 2 * p - k) // stride + 1
    out = 0.0
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            patch = xp[rows, cols]
            out = out + (patch * kernel[i, j, :, 0] if depthwise else patch @ kernel[i, j])
    return out


def np_bn(x, layer):
    gamma, beta, mean, var = layer.get_weights()
    return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def np_conv_bn(x, model, name, stride=1):
    y = np_conv(x, model.get_layer(f"{name}_conv").get_weights()[0], stride)
    return np_bn(y, model.get_layer(f"{name}_bn"))


def np_output_conv(x, model, name, stride, separable):
    if not separable:
        return np_conv_bn(x, model, name, stride)
    dw = np_conv(x, model.get_layer(f"{name}_dw_conv").get_weights()[0], stride, depthwise=True)
    return np_conv_bn(np_bn(dw, model.get_layer(f"{name}_dw_bn")), model, f"{name}_pw")


def up2(x):
    return np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)


def randomize_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(size=c),
                               rng.normal(size=c), rng.uniform(0.5, 2.0, c)])  # fmt: skip


# --- shapes and strides --------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, width, strides",
    [("dla34", 4, [8, 16, 32, 64]), ("dla34", 4, [4, 32, 128]), ("mobilenetv3", 8, [8, 16, 32])],
)
def test_tiny_pyramid_shapes_follow_strides(backbone, width, strides):
    size = 128
    inputs = keras.Input((size, size, 3))
    outputs = fpn_features(inputs, backbone, channels=8, strides=strides, width=width)
    model = keras.Model(inputs, outputs)
    expected = [(size // s, size // s, 8) for s in strides]
    assert [tuple(o.shape[1:]) for o in model.outputs] == expected
    outputs = model(images(size), training=False)
    assert [tuple(o.shape) for o in outputs] == [(2, *e) for e in expected]
    assert all(np.isfinite(o.numpy()).all() for o in outputs)


def test_hrnet_width_reaches_the_backbone_and_neck(monkeypatch):
    """HRNet wiring without building a whole HRNet (the real one: test_tiny_hrnet_fpn, large):
    the width given (or the preset's) reaches ``hrnet_features`` and the neck reduces 15C."""
    seen = []

    def branches(x, width, output, name):
        seen.append((width, output))
        out, y = [], x
        for i in range(4):
            y = keras.layers.AveragePooling2D(4 if i == 0 else 2)(y)
            out.append(keras.layers.Conv2D(width * 2**i, 1)(y))
        return out

    monkeypatch.setattr(fpn_module, "hrnet_features", branches)
    inputs = keras.Input((64, 64, 3))
    for backbone, width, c in [("hrnet", 8, 8), ("hrnet_w48", None, 48), ("hrnet_w32", 4, 4)]:
        outputs = fpn_features(inputs, backbone, channels=16, strides=[8, 16, 32, 64], width=width,
                               name=f"f{c}")
        expected = [(64 // s, 64 // s, 16) for s in (8, 16, 32, 64)]
        assert [tuple(o.shape[1:]) for o in outputs] == expected
        model = keras.Model(inputs, outputs)
        assert model.get_layer(f"f{c}_neck_reduce_conv").kernel.shape == (1, 1, 15 * c, 16)
    assert seen == [(8, "branches"), (48, "branches"), (4, "branches")]


@pytest.mark.large
def test_tiny_hrnet_fpn():
    inputs = keras.Input((64, 64, 3))
    outputs = fpn_features(inputs, "hrnet", channels=16, strides=[8, 16, 32], width=8)
    model = keras.Model(inputs, outputs)
    outputs = model(images(64), training=False)
    assert [tuple(o.shape) for o in outputs] == [(2, 8, 8, 16), (2, 4, 4, 16), (2, 2, 2, 16)]
    assert all(np.isfinite(o.numpy()).all() for o in outputs)
    neck = sum(int(np.prod(w.shape)) for layer in model.layers if layer.name.startswith("fpn_neck")
               for w in layer.trainable_weights)
    # reduce 1x1 conv + BN, three 3x3 stride-2 convs + BN
    assert neck == 15 * 8 * 16 + 2 * 16 + 3 * (9 * 16 * 16 + 2 * 16)


# --- numpy references of the necks ---------------------------------------------------------


@pytest.mark.parametrize("separable", [False, True])
def test_fpn_neck_matches_numpy(separable):
    """Laterals, top-down nearest x2 + add, 3x3 outputs, stride-2 extras (the second on ReLU of
    the first), including the unreturned stride-16 level inside the top-down pathway."""
    rng = np.random.default_rng(1)
    shapes = {8: (16, 16, 3), 16: (8, 8, 5), 32: (4, 4, 6)}
    inputs = {s: keras.Input(shape, name=f"c{s}") for s, shape in shapes.items()}
    strides = [8, 32, 128]
    outputs = fpn_neck(inputs, 4, strides, separable=separable, name="n")
    model = keras.Model(list(inputs.values()), outputs)
    randomize_batch_norms(model)
    feats = {s: rng.normal(size=shape).astype(np.float32) for s, shape in shapes.items()}
    got = model([f[None] for f in feats.values()], training=False)

    lateral = {s: np_conv_bn(feats[s], model, f"n_lateral_s{s}") for s in shapes}
    p32 = lateral[32]
    p16 = lateral[16] + up2(p32)
    p8 = lateral[8] + up2(p16)
    e64 = np_output_conv(feats[32], model, "n_extra_s64", 2, separable)
    e128 = np_output_conv(np.maximum(e64, 0), model, "n_extra_s128", 2, separable)
    expected = [np_output_conv(p8, model, "n_out_s8", 1, separable),
                np_output_conv(p32, model, "n_out_s32", 1, separable), e128]  # fmt: skip
    assert [tuple(e.shape) for e in expected] == [(16, 16, 4), (4, 4, 4), (1, 1, 4)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy()[0], e, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        model.get_layer("n_out_s16")  # unreturned level: no output conv


def test_hrnet_neck_matches_numpy():
    """Branches 1-3 spatially constant (bilinear upsampling keeps them): reduce 1x1 conv on the
    concat, then per level an s/8 average pool and a 3x3 stride-2 conv (pad 1)."""
    rng = np.random.default_rng(2)
    c = 3
    b0 = rng.normal(size=(16, 16, c)).astype(np.float32)
    consts = [rng.normal(size=c * 2**i).astype(np.float32) for i in range(1, 4)]
    branches = [b0] + [np.broadcast_to(v, (16 >> i, 16 >> i, v.size)).copy()
                       for i, v in enumerate(consts, start=1)]  # fmt: skip
    inputs = [keras.Input(b.shape) for b in branches]
    strides = [8, 16, 64]
    model = keras.Model(inputs, hrnet_fpn(inputs, 4, strides, name="h"))
    randomize_batch_norms(model)
    got = model([b[None] for b in branches], training=False)

    concat = np.concatenate([b0] + [np.broadcast_to(v, (16, 16, v.size)) for v in consts], axis=-1)
    reduced = np_conv_bn(concat, model, "h_reduce")
    for s, g in zip(strides, got):
        pool = s // 8
        pooled = reduced.reshape(16 // pool, pool, 16 // pool, pool, 4).mean(axis=(1, 3))
        expected = np_conv_bn(pooled, model, f"h_out_s{s}", stride=2)
        assert expected.shape == (64 // s, 64 // s, 4)
        np.testing.assert_allclose(g.numpy()[0], expected, rtol=1e-4, atol=1e-4)


# --- MobileNetV3 blocks --------------------------------------------------------------------


def test_hard_sigmoid_and_swish_match_the_paper():
    x = np.linspace(-5, 5, 41, dtype=np.float32)
    h_sigmoid = np.minimum(np.maximum(x + 3, 0), 6) / 6  # paper Sec. 5.2
    np.testing.assert_allclose(HardSigmoid()(x).numpy(), h_sigmoid, atol=1e-6)
    np.testing.assert_allclose(HardSwish()(x).numpy(), x * h_sigmoid, atol=1e-6)
    assert HardSwish.from_config(HardSwish(name="hs").get_config()).name == "hs"


def test_make_divisible():
    # SE squeeze widths of MobileNetV3-Large: expansion // 4 rounded (72 -> 24, 120 -> 32, ...).
    assert [make_divisible(e // 4) for e in (72, 120, 480, 672, 960)] == [24, 32, 120, 168, 240]
    assert [make_divisible(v) for v in (3, 8, 12, 100)] == [8, 8, 16, 104]


def test_inverted_residual_shortcut_only_when_shapes_match():
    inputs = keras.Input((16, 16, 16))
    same = inverted_residual(inputs, 3, 48, 16, True, "HS", 1, name="a")
    down = inverted_residual(inputs, 5, 48, 24, False, "RE", 2, name="b")
    model = keras.Model(inputs, [same, down])
    assert tuple(down.shape) == (None, 8, 8, 24)
    names = {layer.name for layer in model.layers}
    assert "a_add" in names and "b_add" not in names and "a_se_scale" in names
    assert model.get_layer("a_se_reduce").kernel.shape == (1, 1, 48, 16)  # 48 // 4 -> 16


# --- full-size parameter counts (built, never run) -----------------------------------------


def test_mobilenetv3_large_parameter_count_matches_reference():
    """MobileNetV3-Large ImageNet model: 5,483,032 trainable parameters (reference model; paper
    Table 3: 5.4M), of which the classification head (1x1 conv 960 -> 1280 and 1280 -> 1000 with
    biases: 960 * 1280 + 1280 + 1280 * 1000 + 1000 = 2,511,080) is not built here. Counted:
    conv kernels, SE conv biases, BN gamma/beta (not the moving statistics, buffers there)."""
    inputs = keras.Input((512, 512, 3))
    features = mobilenetv3_features(inputs, name="m")
    model = keras.Model(inputs, features)
    assert trainable_count(model) == 5_483_032 - 2_511_080
    assert {s: f.shape[1:] for s, f in features.items()} == {
        4: (128, 128, 24), 8: (64, 64, 40), 16: (32, 32, 112), 32: (16, 16, 960)}  # fmt: skip
    # Paper Table 1 rows 4 and 15: SE squeezes 72 -> 24 and 960 -> 240.
    assert model.get_layer("m_block3_se_reduce").kernel.shape == (1, 1, 72, 24)
    assert model.get_layer("m_block14_se_reduce").kernel.shape == (1, 1, 960, 240)


def dla34_reference_count():
    """DLA-34 trainable parameters without the classifier, summed from the paper's structure."""

    def conv(cin, cout, k):  # conv kernel + BN gamma/beta
        return k * k * cin * cout + 2 * cout

    def tree1(cin, cout, children):  # two basic blocks + root over (2 cout + children) + projection
        blocks = conv(cin, cout, 3) + 3 * conv(cout, cout, 3)
        projection = conv(cin, cout, 1) if cin != cout else 0
        return blocks + conv(2 * cout + children, cout, 1) + projection

    c = (16, 32, 64, 128, 256, 512)
    return (conv(3, c[0], 7) + conv(c[0], c[0], 3) + conv(c[0], c[1], 3)
            + tree1(c[1], c[2], 0)
            + tree1(c[2], c[3], 0) + tree1(c[3], c[3], c[2] + c[3])
            + tree1(c[3], c[4], 0) + tree1(c[4], c[4], c[3] + c[4])
            + tree1(c[4], c[5], c[4]))  # fmt: skip


def test_dla34_parameter_count_matches_reference():
    """DLA-34 ImageNet model: 15.7M parameters (DLA paper / the authors' released model), of which
    the classifier (1x1 conv 512 -> 1000 with bias, 513,000) is not built here: 15,229,104."""
    inputs = keras.Input((512, 512, 3))
    features = dla34_features(inputs, name="d")
    model = keras.Model(inputs, features)
    count = trainable_count(model)
    assert count == dla34_reference_count() == 15_229_104
    assert round((count + 513_000) / 1e6, 1) == 15.7
    assert {s: f.shape[1:] for s, f in features.items()} == {
        4: (128, 128, 64), 8: (64, 64, 128), 16: (32, 32, 256), 32: (16, 16, 512)}  # fmt: skip
    # Aggregation nodes: 2 x width + children (level roots add the pooled stage input).
    roots = {"d_level2_root": 2 * 64, "d_level3_tree2_root": 3 * 128 + 64,
             "d_level4_tree2_root": 3 * 256 + 128, "d_level5_root": 2 * 512 + 256}  # fmt: skip
    for name, cin in roots.items():
        assert model.get_layer(f"{name}_conv").kernel.shape[2] == cin


# --- GPU-delegate op set -------------------------------------------------------------------


def test_blocks_convert_to_delegate_ops_only(tmp_path):
    """Every kind of block of the three FPN backbones -> TFLite: MobileNetV3 bottlenecks (SE,
    h-swish, strided 5x5 depthwise), a DLA level-root tree, both FPN necks with extra
    levels and the HRNet neck; only delegate ops, and the same outputs as Keras.

    (A whole tiny DLA-34 + MobileNetV3 FPN converts to the same op set but takes over a minute
    on 2 cores.)"""
    inputs = keras.Input((32, 32, 3), batch_size=1)
    x = conv_bn(inputs, 8, 3, strides=2, name="stem")
    m = inverted_residual(x, 5, 24, 8, True, "HS", 2, name="mb1")
    m = inverted_residual(m, 3, 16, 8, True, "HS", 1, name="mb2")
    d = dla_tree(m, 1, 16, strides=2, level_root=True, name="tree")
    c32 = conv_bn(d, 8, 3, strides=2, name="c32")
    pyramid = {4: x, 8: m, 16: d, 32: c32}
    outputs = (fpn_neck(pyramid, 8, [16, 128], separable=True, name="sep")
               + fpn_neck(pyramid, 8, [4, 64], name="reg")
               + hrnet_fpn([x, m, d, c32], 8, [8, 32], name="hr"))  # fmt: skip
    model = keras.Model(inputs, outputs)
    randomize_batch_norms(model)
    content = keras_to_tflite(model, [tf.TensorSpec((1, 32, 32, 3), tf.float32)], str(tmp_path))
    used = set(operator_names(content))
    assert used <= GPU_DELEGATE_OPS, sorted(used - GPU_DELEGATE_OPS)
    assert {"DEPTHWISE_CONV_2D", "MEAN", "MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION",
            "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"} <= used  # fmt: skip

    interpreter = Interpreter(model_content=content)
    runner = interpreter.get_signature_runner()
    x_in = images(32, batch=1, seed=3)
    ((_, signature),) = interpreter.get_signature_list().items()
    (input_name,) = signature["inputs"]
    got = runner(**{input_name: x_in})
    expected = [o.numpy() for o in model(x_in, training=False)]
    assert len(got) == len(expected)
    for i, e in enumerate(expected):
        np.testing.assert_allclose(got[f"output_{i}"], e, rtol=1e-4, atol=1e-4)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, kwargs, size, message",
    [
        ("resnet50", {}, 64, r"Received: backbone='resnet50'"),
        ("dla34", {"strides": [8, 12]}, 64, r"Stride 12 is not .*Received: strides=\[8, 12\]"),
        ("hrnet_w32", {"strides": [4, 8]}, 64, r"Stride 4 is not supported by .*'hrnet_w32'"),
        ("mobilenetv3", {"strides": [256]}, 256, r"Stride 256 is not supported"),
        ("dla34", {"strides": [16, 8]}, 64, r"strictly ascending. Received: strides=\[16, 8\]"),
        ("dla34", {"strides": []}, 64, r"Received: strides=\[\]"),
        ("dla34", {"channels": 0}, 64, r"Received: channels=0"),
        ("dla34", {"width": 0}, 64, r"Received: width=0"),
        ("hrnet", {}, 64, r"needs a `width`.*Received: width=None"),
        ("dla34", {"strides": [8, 64]}, 96, r"multiples of 64 .*shape=\(None, 96, 96, 3\)"),
    ],
)
def test_bad_arguments_name_the_value(backbone, kwargs, size, message):
    args = {"channels": 8, "strides": [8, 16, 32], **kwargs}
    with pytest.raises(ValueError, match=message):
        fpn_features(keras.Input((size, size, 3)), backbone, **args)
