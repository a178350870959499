"""tfpose.models.backbones.hrnet: shapes, reference padding, parameter counts vs the paper."""

import collections
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operator_names
from tfpose.models.backbones.hrnet import (
    NearestUpsampling2D,
    concat_branches,
    conv_bn,
    higher_hrnet_deconv,
    hrnet,
    hrnet_features,
    hrnet_module,
    hrnet_pose_model,
    resolve_width,
)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def tiny():
    return hrnet(8, input_shape=(64, 96, 3), normalize_input=True)


def test_tiny_branches_at_strides_4_8_16_32(tiny):
    assert [tuple(o.shape) for o in tiny.outputs] == [
        (None, 16, 24, 8),
        (None, 8, 12, 16),
        (None, 4, 6, 32),
        (None, 2, 3, 64),
    ]
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 64, 96, 3)).astype(np.float32)
    outputs = tiny(x, training=False)
    assert all(np.isfinite(o.numpy()).all() for o in outputs)
    assert [o.shape[0] for o in outputs] == [2] * 4


def test_concat_output_with_dynamic_input():
    concat = hrnet(8, input_shape=(None, None, 3), output="concat")
    assert concat.output.shape[-1] == 8 + 16 + 32 + 64
    assert tuple(concat(np.zeros((1, 32, 64, 3), np.float32)).shape) == (1, 8, 16, 120)
    with pytest.raises(ValueError, match="Received: output='all'"):
        hrnet(8, output="all")


def test_width_presets_and_validation():
    assert resolve_width("W32") == 32 and resolve_width("w48") == 48 and resolve_width(18) == 18
    with pytest.raises(ValueError, match="Received: width=0"):
        resolve_width(0)
    with pytest.raises(ValueError, match="Received: width='w40'"):
        resolve_width("w40")


def test_stage_modules_set_the_depth():
    def modules(**kw):
        x = keras.Input((64, 64, 3))
        model = keras.Model(x, hrnet_features(x, 8, output="concat", name="h", **kw))
        found = {re.match(r"h_stage(\d)_module(\d+)_", layer.name).groups()
                 for layer in model.layers if re.match(r"h_stage\d_module", layer.name)}
        counts = collections.Counter(int(stage) for stage, _ in found)
        return [counts[s] for s in (2, 3, 4)], trainable_count(model)

    default, default_params = modules()
    assert default == [1, 4, 3]  # HRNet
    shallow, shallow_params = modules(stage_modules=[1, 1, 2])
    assert shallow == [1, 1, 2] and shallow_params < default_params
    with pytest.raises(ValueError, match=r"Received: stage_modules=\[1, 0, 1\]"):
        modules(stage_modules=[1, 0, 1])


def test_stride2_conv_pads_like_pytorch():
    # A centre-tap kernel with identity BN reads input[2i, 2j] (PyTorch padding=1); Keras "same"
    # would read input[2i + 1, 2j + 1].
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, conv_bn(inputs, 1, 3, strides=2, relu=False, name="s"))
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    model.get_layer("s_conv").set_weights([kernel])
    model.get_layer("s_bn").set_weights([np.ones(1), np.zeros(1), np.zeros(1), np.ones(1) - 1e-5])
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    np.testing.assert_allclose(model(x).numpy()[0, ..., 0], x[0, ::2, ::2, 0], rtol=1e-5)


def test_higher_hrnet_deconv_doubles_resolution():
    features = keras.Input((16, 16, 8))
    heatmaps = keras.Input((16, 16, 34))
    out = higher_hrnet_deconv(features, heatmaps, 8, num_blocks=4)
    model = keras.Model([features, heatmaps], out)
    assert tuple(out.shape) == (None, 32, 32, 8)
    # transposed conv (42 * 8 * 16) + BN (16) + 4 basic blocks (2 * (9 * 64 + 16) each).
    assert trainable_count(model) == 42 * 8 * 16 + 16 + 4 * 2 * (9 * 64 + 16)


@pytest.mark.parametrize("width, paper_millions", [("w32", 28.5), ("w48", 63.6)])
def test_pose_net_parameter_count_matches_paper(width, paper_millions):
    """HRNet paper Table 1 (COCO val, 256x192): W32 28.5M, W48 63.6M parameters.

    Counted: every trainable weight of the top-down pose network (stem, 4 stages, the last
    module fusing into the 1/4 branch only, 1x1 conv head with bias to 17 heatmaps), i.e. conv
    kernels, BN gamma/beta and the head bias; not the BN moving statistics (non-trainable here,
    buffers in PyTorch). The model is built, never run.
    """
    model = hrnet_pose_model(width, num_keypoints=17)
    assert tuple(model.output.shape) == (None, 64, 48, 17)  # "highest" output: the 1/4 branch
    count = trainable_count(model)
    assert count == {"w32": 28_536_113, "w48": 63_595_745}[width]
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.01



def test_nearest_upsampling_equals_repeat():
    x = np.random.default_rng(5).normal(size=(2, 3, 5, 4)).astype(np.float32)
    layer = NearestUpsampling2D(4)
    expected = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    np.testing.assert_array_equal(layer(x).numpy(), expected)
    assert NearestUpsampling2D.from_config(layer.get_config()).size == 4
    with pytest.raises(ValueError, match="Received: size=0"):
        NearestUpsampling2D(0)


def test_module_and_concat_convert_to_delegate_ops_only(tmp_path):
    """One 4-branch module (fusion up/down paths, stride-2 pads) + bilinear concat -> TFLite.

    (A whole tiny HRNet converts to the same op set but takes minutes to convert on 2 cores.)
    """
    inputs = keras.Input((16, 24, 4), batch_size=1)
    branches = [inputs]
    for b in range(1, 4):
        branches.append(conv_bn(branches[-1], 4 * 2**b, 3, strides=2, name=f"down{b}"))
    fused = hrnet_module(branches, [4, 8, 16, 32], num_blocks=0, name="m")
    model = keras.Model(inputs, concat_branches(fused))
    content = keras_to_tflite(model, [tf.TensorSpec((1, 16, 24, 4), tf.float32)], str(tmp_path))
    used = set(operator_names(content))
    assert {"PAD", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"} <= used
    allowed = {"CONV_2D", "ADD", "MUL", "RELU", "PAD", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR",
               "CONCATENATION"}  # fmt: skip
    assert used <= allowed <= GPU_DELEGATE_OPS, sorted(used - allowed)
