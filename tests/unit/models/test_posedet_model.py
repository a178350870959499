"""tfpose.models.posedet: outputs and their order, pose embedding at the coarse pose, gradient
factor, init, precision, config validation, GPU-delegate ops."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import Config, ConfigError, DataConfig, config_from_dict
from tfpose.export.tflite import GPU_DELEGATE_OPS, keras_to_tflite, operator_names
from tfpose.models.posedet import (
    GradientScale,
    PosedetModelConfig,
    build_posedet_model,
    posedet_head,
    posedet_network,
)

K = 3
STRIDES = [8, 16, 32]
TINY = PosedetModelConfig(backbone="mobilenetv3", width=8, strides=STRIDES, fpn_channels=16,
                          head_channels=16, head_convs=1, bypass_convs=1)


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return posedet_network(TINY, K)


def _level_probe(model, names):
    """Model image -> per-level intermediate tensors: layer name -> its input or output."""
    tensors = {n: (model.get_layer(n).input if kind == "in" else model.get_layer(n).output)
               for n, kind in names}
    return keras.Model(model.input, tensors)


def test_outputs_keys_shapes_dtypes(tiny):
    for h, w in [(64, 64), (96, 64)]:
        out = tiny(images((2, h, w, 3)), training=False)
        n = sum((h // s) * (w // s) for s in STRIDES)
        want = {"coarse": (2, n, K, 2), "refine": (2, n, K, 2), "logits": (2, n)}
        want.update({f"heatmaps_s{s}": (2, h // s, w // s, K) for s in STRIDES})
        assert {k: tuple(v.shape) for k, v in out.items()} == want
        assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()).all() for v in out.values())


def test_candidates_are_level_by_level_row_major(tiny):
    """Output candidate n = level offset + i * w_l + j; channels (dx_0, dy_0, dx_1, ...)."""
    names = [(f"{out}_flat_s{s}", "in") for out in ("coarse", "refine", "logits") for s in STRIDES]
    probe = _level_probe(tiny, names)
    x = images((2, 64, 96, 3), 1)
    maps, out = probe(x, training=False), tiny(x, training=False)
    for key, tail in (("coarse", (K, 2)), ("refine", (K, 2)), ("logits", ())):
        per_level = [maps[f"{key}_flat_s{s}"].numpy() for s in STRIDES]
        b, h, w = per_level[0].shape[:3]
        assert (h, w) == (8, 12)
        want = np.concatenate([m.reshape((b, -1) + tail) for m in per_level], axis=1)
        np.testing.assert_array_equal(out[key].numpy(), want)
        # candidate (i=2, j=5) of stride 16 holds map pixel [2, 5]
        n = 8 * 12 + 2 * 6 + 5
        np.testing.assert_array_equal(out[key].numpy()[:, n].reshape(b, -1),
                                      per_level[1][:, 2, 5].reshape(b, -1))


def _np_bilinear_zero_pad(feature, x, y):
    """feature [H, W, C] at continuous (x, y), pixel centres at +0.5, zero outside."""
    h, w, c = feature.shape
    u, v = x - 0.5, y - 0.5
    j0, i0 = math.floor(u), math.floor(v)
    out = np.zeros(c)
    for i, wy in ((i0, 1 - (v - i0)), (i0 + 1, v - i0)):
        for j, wx in ((j0, 1 - (u - j0)), (j0 + 1, u - j0)):
            if 0 <= i < h and 0 <= j < w:
                out += wy * wx * feature[i, j]
    return out


@pytest.mark.parametrize("branch", ["head_reg", "head_cls"])
def test_pose_embedding_samples_each_candidate_at_its_coarse_keypoints(branch):
    """DCN(features, coarse): numpy bilinear sampling at centre + coarse (feature pixels)."""
    keras.utils.set_random_seed(1)
    model = posedet_network(TINY, K)
    coarse_conv = model.get_layer("head_coarse")
    rng = np.random.default_rng(2)
    kernel, bias = coarse_conv.get_weights()
    # offsets of a few pixels, some pointing outside the map
    coarse_conv.set_weights([rng.normal(0, 0.5, kernel.shape).astype(np.float32),
                             rng.normal(0, 2.0, bias.shape).astype(np.float32)])
    s = 8
    probe = _level_probe(model, [(f"{branch}1_relu_s{s}", "out"), (f"coarse_flat_s{s}", "in"),
                                 (f"{branch}_dcn_relu_s{s}", "in")])
    got = probe(images((1, 64, 64, 3), 3), training=False)
    features = got[f"{branch}1_relu_s{s}"].numpy()[0]
    offsets = got[f"coarse_flat_s{s}"].numpy()[0]
    dcn_out = got[f"{branch}_dcn_relu_s{s}"].numpy()[0]
    assert np.abs(offsets).max() > 3.0
    dcn = model.get_layer(f"{branch}_dcn")
    w_p, b = dcn.kernel.numpy(), dcn.bias.numpy()  # [K, C, F], [F]
    h, w = features.shape[:2]
    for i in range(h):
        for j in range(w):
            want = b.copy()
            for p in range(K):
                x = j + 0.5 + offsets[i, j, 2 * p]
                y = i + 0.5 + offsets[i, j, 2 * p + 1]
                want += _np_bilinear_zero_pad(features, x, y) @ w_p[p]
            np.testing.assert_allclose(dcn_out[i, j], want, rtol=1e-4, atol=1e-4)


def test_offset_gradient_factor_scales_the_refine_gradient_into_the_bypass(tiny):
    layer = tiny.get_layer("head_offset_gradient")
    assert layer.scale == pytest.approx(0.1)  # the reference's gradient_mul
    x = images((1, 64, 64, 3), 4)
    kernel = tiny.get_layer("head_coarse").kernel
    grads = {}
    try:
        for scale in (0.0, 0.1, 1.0):
            layer.scale = scale
            with tf.GradientTape() as tape:
                out = tiny(x, training=False)
                target = tf.reduce_sum(tf.square(out["refine"])) + tf.reduce_sum(out["logits"])
            grads[scale] = tape.gradient(target, kernel)
    finally:
        layer.scale = 0.1
    assert grads[0.0] is None or not np.any(grads[0.0].numpy())
    assert np.abs(grads[1.0].numpy()).max() > 0
    np.testing.assert_allclose(grads[0.1].numpy(), 0.1 * grads[1.0].numpy(), rtol=1e-3,
                               atol=1e-9)


def test_gradient_scale_layer():
    x = tf.constant([[1.0, -2.0, 3.0]])
    for scale in (0.0, 0.25, 1.0):
        layer = GradientScale(scale)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            target = tf.reduce_sum(y * [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(y.numpy(), x.numpy())
        grad = tape.gradient(target, x)
        want = scale * np.array([[1.0, 2.0, 3.0]])
        np.testing.assert_allclose(0 if grad is None else grad.numpy(), want)
        again = GradientScale.from_config(layer.get_config())
        assert again.scale == scale
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match=r"Received: scale="):
            GradientScale(bad)


def test_final_convs_start_from_the_reference_init_and_the_prior(tiny):
    prior_bias = -math.log((1 - 0.01) / 0.01)
    np.testing.assert_allclose(tiny.get_layer("head_logits").bias.numpy(), [prior_bias],
                               rtol=1e-6)
    for name in ("head_coarse", "head_refine", "head_heatmaps"):
        layer = tiny.get_layer(name)
        assert layer.dtype_policy.name == "float32"
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
    kernels = np.concatenate([tiny.get_layer(n).kernel.numpy().ravel()
                              for n in ("head_coarse", "head_refine", "head_heatmaps")])
    assert 0.007 < kernels.std() < 0.013
    # every candidate starts near the prior probability
    scores = tf.sigmoid(tiny(images((1, 64, 64, 3), 5), training=False)["logits"]).numpy()
    assert abs(scores.mean() - 0.01) < 0.005


def test_head_layers_are_shared_by_the_levels_with_per_level_batch_norm(tiny):
    conv = tiny.get_layer("head_reg1_conv")
    assert len(conv._inbound_nodes) == len(STRIDES)
    assert len(tiny.get_layer("head_reg_dcn")._inbound_nodes) == len(STRIDES)
    assert tiny.get_layer("head_reg_dcn").num_points == K
    bns = {tiny.get_layer(f"head_reg1_bn_s{s}") for s in STRIDES}
    assert len(bns) == len(STRIDES)
    # heatmap branch: 3x3 conv at fpn_channels (heatmap_channels 0), then 1x1 to K
    assert tiny.get_layer("head_heatmap_conv").kernel.shape == (3, 3, 16, 16)
    assert tiny.get_layer("head_heatmaps").kernel.shape == (1, 1, 16, K)


def test_build_from_config_under_mixed_bfloat16_custom_spec():
    spec = {"names": ["a", "b"], "sigmas": [0.1, 0.1], "skeleton": [["a", "b"]]}
    cfg = Config(data=DataConfig(keypoints=spec), model=TINY)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_posedet_model(cfg, input_shape=(64, 64, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("head_reg1_conv").compute_dtype == "bfloat16"
    out = model(images((1, 64, 64, 3), 6), training=False)
    assert {k: (tuple(v.shape), v.dtype) for k, v in out.items()} == {
        "coarse": ((1, 84, 2, 2), tf.float32), "refine": ((1, 84, 2, 2), tf.float32),
        "logits": ((1, 84), tf.float32), "heatmaps_s8": ((1, 8, 8, 2), tf.float32),
        "heatmaps_s16": ((1, 4, 4, 2), tf.float32), "heatmaps_s32": ((1, 2, 2, 2), tf.float32)}
    assert all(np.isfinite(v.numpy()).all() for v in out.values())


def test_input_and_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        posedet_network(TINY, K, input_shape=(80, 64, 3))
    big = PosedetModelConfig(backbone="mobilenetv3", width=8, strides=[8, 16, 32, 64],
                             fpn_channels=8, head_channels=8)
    with pytest.raises(ValueError, match="multiples of 64"):
        posedet_network(big, K, input_shape=(96, 96, 3))
    with pytest.raises(ValueError, match="num_keypoints"):
        posedet_network(TINY, 0)
    with pytest.raises(ConfigError, match="model.type must be 'posedet'"):
        build_posedet_model(Config(model=None))
    base = {"codec": {"type": "ae"}}
    cfg = config_from_dict(dict(base, model={"type": "posedet", "backbone": "dla34"}))
    assert cfg.model == PosedetModelConfig(backbone="dla34")
    assert (cfg.model.heatmap_width, cfg.model.input_multiple) == (256, 32)
    for bad, key in [({"strides": []}, "strides must name at least one"),
                     ({"strides": [16, 8]}, r"strides \[16, 8\] must be increasing"),
                     ({"strides": [8, 0]}, "model.strides = 0 is out of range"),
                     ({"prior_probability": 0.0}, "prior_probability must be in"),
                     ({"backbone": "hrnet"}, "backbone 'hrnet' needs width"),
                     ({"backbone": "resnet50"}, "model.backbone = 'resnet50'"),
                     ({"head_channels": 0}, "model.head_channels = 0"),
                     ({"offset_gradient_scale": 2.0}, "model.offset_gradient_scale = 2.0"),
                     ({"stride": 8}, "unknown key 'model.stride'")]:
        with pytest.raises(ConfigError, match=key):
            config_from_dict(dict(base, model={"type": "posedet", **bad}))


def test_head_converts_to_delegate_ops_only_and_matches_keras(tmp_path):
    """The head (shared convs, DCNs, gradient factor, flattening) -> TFLite: only GPU-delegate
    ops (DCN sampling as 1-D GATHER) and the Keras outputs, with coarse offsets of several
    pixels. The FPN backbones have their own conversion tests; converting the whole network
    takes about a minute on 2 shared cores."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    keras.utils.set_random_seed(3)
    shapes = [(64 // s, 64 // s, 8) for s in STRIDES]
    levels = [keras.Input(shape, batch_size=1) for shape in shapes]
    cfg = PosedetModelConfig(backbone="mobilenetv3", strides=STRIDES, fpn_channels=8,
                             head_channels=8, head_convs=1, bypass_convs=1)
    model = keras.Model(levels, posedet_head(levels, STRIDES, K, cfg))
    rng = np.random.default_rng(8)
    for name in ("head_coarse", "head_refine", "head_logits"):
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights(
            [kernel * 100, rng.normal(0.0, 2.0, bias.shape).astype(np.float32)])
    specs = [tf.TensorSpec((1,) + shape, tf.float32) for shape in shapes]
    content = keras_to_tflite(model, [specs], str(tmp_path))
    ops = set(operator_names(content))
    assert ops <= GPU_DELEGATE_OPS, ops - GPU_DELEGATE_OPS
    assert "GATHER" in ops and "GATHER_ND" not in ops
    interpreter = interpreter_module.Interpreter(model_content=content)
    (key, signature), = interpreter.get_signature_list().items()
    x = [rng.normal(0.0, 1.0, (1,) + shape).astype(np.float32) for shape in shapes]
    want = model(x, training=False)
    # signature inputs are named in the order of the levels
    got = interpreter.get_signature_runner(key)(**dict(zip(sorted(signature["inputs"]), x)))
    assert sorted(got) == sorted(want)
    assert np.abs(want["coarse"].numpy()).max() > 2.0
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)
