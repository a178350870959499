"""tfpose.models.dekr: outputs, head structure, ART block, precision, sizes, paper parameter counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import Config, ConfigError, DataConfig, config_from_dict
from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operator_names
from tfpose.models.backbones.hrnet import basic_block
from tfpose.models.dekr import (
    DekrModelConfig,
    art_residual_block,
    build_dekr_model,
    dekr_network,
    keypoint_heatmap_head,
    keypoint_regression_head,
)

K = 3
TINY = DekrModelConfig(width=8, regression_channels=16, offset_branch_channels=4)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return dekr_network(TINY, K)


def test_output_names_shapes_dtypes_any_multiple_of_32(tiny):
    assert sorted(tiny.output) == ["center", "heatmaps", "offsets"]
    for size in [(64, 96), (128, 64)]:
        h, w = size[0] // 4, size[1] // 4
        out = tiny(images((2,) + size + (3,)), training=False)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "heatmaps": (2, h, w, K), "center": (2, h, w, 1), "offsets": (2, h, w, 2 * K)}
        assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()).all() for v in out.values())


def test_heatmaps_are_the_branch_mean_and_offsets_interleave_per_keypoint(tiny):
    branches = [tiny.get_layer(f"heatmap_branch{i}_final").output for i in range(3)]
    offsets = [tiny.get_layer(f"regression_offset{k}_final").output for k in range(K)]
    probe = keras.Model(tiny.input, [tiny.output, branches, offsets])
    # Perturb the N(0, 0.001) final convs so the three branches differ visibly.
    layers = [tiny.get_layer(f"heatmap_branch{i}_final") for i in range(3)]
    saved = [layer.get_weights() for layer in layers]
    try:
        for i, (layer, (kernel, bias)) in enumerate(zip(layers, saved)):
            layer.set_weights([kernel * 100, bias + i])
        out, branch_maps, offset_maps = probe(images((1, 64, 64, 3), 1), training=False)
    finally:
        for layer, weights in zip(layers, saved):
            layer.set_weights(weights)
    mean = np.mean([b.numpy() for b in branch_maps], axis=0)
    assert np.ptp([b.numpy().mean() for b in branch_maps]) > 0.5
    np.testing.assert_allclose(out["heatmaps"].numpy(), mean, rtol=1e-5, atol=1e-6)
    for k, o in enumerate(offset_maps):
        np.testing.assert_array_equal(out["offsets"].numpy()[..., 2 * k:2 * k + 2], o.numpy())
    # Dilations 1, 2, 3 of the branches; heatmap head width = backbone width (heatmap_channels 0).
    assert [tiny.get_layer(f"heatmap_branch{i}_aconv1").dilation_rate for i in range(3)] == [1, 2, 3]
    assert tiny.get_layer("heatmap_transition_conv").filters == 8
    # The regression head sees concat(F, H): 15C + K channels.
    assert tiny.get_layer("regression_transition_conv").kernel.shape == (1, 1, 15 * 8 + K, 16)


def test_offset_branches_take_their_own_channels_of_one_transition(tiny):
    transition = tiny.get_layer("regression_offset_transition_relu").output  # [.., 4K]
    inputs = [tiny.get_layer(f"regression_offset{k}_block_aconv1").input for k in range(K)]
    got, *branch_inputs = keras.Model(tiny.input, [transition, *inputs])(
        images((1, 64, 64, 3), 2), training=False)
    assert got.shape[-1] == 4 * K
    for k, x in enumerate(branch_inputs):
        np.testing.assert_array_equal(x.numpy(), got.numpy()[..., 4 * k:4 * k + 4])


def test_final_convs_start_like_the_reference(tiny):
    for name in ["heatmap_branch0_final", "regression_center", "regression_offset0_final"]:
        layer = tiny.get_layer(name)
        assert layer.dtype_policy.name == "float32"
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
    kernel = tiny.get_layer("regression_center").kernel.numpy()
    assert 0.0003 < kernel.std() < 0.003
    assert not tiny.get_layer("heatmap_branch0_aconv1").use_translation  # 2x2 transform only


def test_art_residual_block_at_identity_is_a_dilated_basic_block():
    """At the identity start every adaptive conv equals a Conv2D with the same kernel, so the
    block equals conv-BN-ReLU-conv-BN + x, ReLU with dilated 3x3 convs (reference STNBLOCK)."""
    inputs = keras.Input((8, 10, 4))
    block = keras.Model(inputs, art_residual_block(inputs, dilation_rate=2, name="b"))
    ref_in = keras.Input((8, 10, 4))
    y = ref_in
    for unit in (1, 2):
        y = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2, use_bias=False,
                                name=f"c{unit}")(y)
        y = keras.layers.BatchNormalization(epsilon=1e-5, name=f"n{unit}")(y)
        if unit == 1:
            y = keras.layers.ReLU()(y)
    ref = keras.Model(ref_in, keras.layers.ReLU()(keras.layers.Add()([y, ref_in])))
    rng = np.random.default_rng(2)
    for unit in (1, 2):
        kernel = rng.normal(0, 0.3, (3, 3, 4, 4)).astype(np.float32)
        bn = [rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.2, 4), rng.normal(0, 0.2, 4),
              rng.uniform(0.5, 1.5, 4)]
        aconv = block.get_layer(f"b_aconv{unit}")
        aconv.kernel.assign(kernel)
        ref.get_layer(f"c{unit}").set_weights([kernel])
        block.get_layer(f"b_bn{unit}").set_weights(bn)
        ref.get_layer(f"n{unit}").set_weights(bn)
    x = rng.normal(size=(2, 8, 10, 4)).astype(np.float32)
    np.testing.assert_allclose(block(x, training=False).numpy(), ref(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-5)
    # Same parameter count as a basic block plus the two 3x3 transform convs (4 + 4 bias).
    basic = keras.Model(ref_in, basic_block(ref_in, 4, name="basic"))
    assert trainable_count(block) == trainable_count(basic) + 2 * (9 * 4 * 4 + 4)


def test_build_from_config_under_mixed_bfloat16_one_offset_conv():
    spec = {"names": ["a", "b"], "sigmas": [0.1, 0.1], "skeleton": [["a", "b"]]}
    cfg = Config(data=DataConfig(keypoints=spec),
                 model=DekrModelConfig(width=8, regression_channels=16, offset_branch_channels=0,
                                       heatmap_dilations=[1]))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_dekr_model(cfg, input_shape=(64, 64, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("hrnet_stem1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("regression_offsets").kernel.shape == (1, 1, 16, 4)
    out = model(images((1, 64, 64, 3), 3), training=False)
    assert {k: (tuple(v.shape), v.dtype) for k, v in out.items()} == {
        "heatmaps": ((1, 16, 16, 2), tf.float32), "center": ((1, 16, 16, 1), tf.float32),
        "offsets": ((1, 16, 16, 4), tf.float32)}
    assert all(np.isfinite(v.numpy()).all() for v in out.values())


def test_input_and_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        dekr_network(TINY, K, input_shape=(100, 64, 3))
    with pytest.raises(ValueError, match="num_keypoints"):
        dekr_network(TINY, 0)
    with pytest.raises(ConfigError, match="model.type must be 'dekr'"):
        build_dekr_model(Config(model=None))
    base = {"codec": {"type": "ae"}}
    cfg = config_from_dict(dict(base, model={"type": "dekr", "width": 48}))
    assert cfg.model == DekrModelConfig(width=48) and cfg.model.heatmap_width == 48
    assert (cfg.model.heatmap_dilations, cfg.model.regression_channels,
            cfg.model.offset_branch_channels) == ([1, 2, 3], 256, 15)
    for bad, key in [({"heatmap_dilations": []}, "heatmap_dilations"),
                     ({"heatmap_dilations": [1, 0]}, r"model.heatmap_dilations\[1\]|heatmap_dilations"),
                     ({"width": 0}, "model.width"),
                     ({"stage_modules": [1, 4]}, "stage_modules must name the modules"),
                     ({"stage_modules": [1, 0, 1]}, r"model.stage_modules"),
                     ({"scorer_learning_rate": 0.0}, "scorer_learning_rate"),
                     ({"offset_branch_channels": -1}, "model.offset_branch_channels"),
                     ({"stride": 4}, "model.stride")]:
        with pytest.raises(ConfigError, match=key):
            config_from_dict(dict(base, model={"type": "dekr", **bad}))


def test_heads_convert_to_delegate_ops_only(tmp_path):
    """H and P on a small feature map -> TFLite: only GPU-delegate ops (the whole network takes
    minutes to convert on 2 cores; the backbone has its own conversion test)."""
    features = keras.Input((8, 8, 12), batch_size=1)
    heat = keypoint_heatmap_head(features, 2, 6, [1, 2, 3])
    center, offsets = keypoint_regression_head(features, heat, 2, 8, 4)
    model = keras.Model(features, {"heatmaps": heat, "center": center, "offsets": offsets})
    assert model.get_layer("heatmap_transition_conv").filters == 6
    content = keras_to_tflite(model, [tf.TensorSpec((1, 8, 8, 12), tf.float32)], str(tmp_path))
    ops = set(operator_names(content))
    assert ops <= GPU_DELEGATE_OPS, ops - GPU_DELEGATE_OPS
    assert "GATHER" in ops and "GATHER_ND" not in ops


@pytest.mark.parametrize("width, size, paper_millions, expected", [
    (32, 512, 30.7, 30_867_072), (48, 640, 66.8, 67_040_912)])
def test_parameter_count_matches_paper(width, size, paper_millions, expected):
    """Paper Table 1: H-W32 30.7M (512), H-W48 66.8M (640), K = 17. Trainable weights, BN
    moving statistics excluded (as tests/unit/models/test_hrnet.py); built, never run."""
    model = dekr_network(DekrModelConfig(width=width), 17, input_shape=(size, size, 3))
    assert tuple(model.output["offsets"].shape) == (None, size // 4, size // 4, 34)
    count = trainable_count(model)
    assert count == expected
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.03
