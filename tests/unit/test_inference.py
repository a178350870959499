"""tfpose.inference: flip and multi-scale testing against numpy/hand-made references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpose.codecs.base import Codec
from tfpose.config import ConfigError
from tfpose.inference import checkpoint_run_dir, network_outputs, predictor, scaled_sizes
from tfpose.keypoints import spec_from_dict

TINY = spec_from_dict({"name": "tiny", "names": ["l", "r", "c"], "sigmas": [0.5, 0.5, 0.5],
                       "flip_pairs": [["l", "r"]]})
K = TINY.num_keypoints
S = 64


class FakeCodec(Codec):
    """Heatmaps [B, h, w, K] and interleaved offsets [B, h, w, 2K] in map pixels (dekr layout)."""

    name = "fake"

    def __init__(self):
        super().__init__(None, TINY, S)
        self.flip_index = tf.constant(TINY.flip_index, tf.int32)

    def flip_outputs(self, outputs):
        heat = tf.gather(tf.reverse(outputs["heatmaps"], [2]), self.flip_index, axis=3)
        off = tf.reverse(outputs["offsets"], [2])
        shape = tf.concat([tf.shape(off)[:3], [K, 2]], 0)
        off = tf.gather(tf.reshape(off, shape), self.flip_index, axis=3) * [-1.0, 1.0]
        return {"heatmaps": heat, "offsets": tf.reshape(off, tf.shape(outputs["offsets"]))}

    def resize_outputs(self, outputs, size, scale):
        heat = tf.image.resize(outputs["heatmaps"], [size, size], "bilinear")
        off = tf.image.resize(outputs["offsets"], [size, size], "bilinear") / scale
        return {"heatmaps": heat, "offsets": off}

    def decode(self, outputs):
        heat = outputs["heatmaps"]
        return {"peak": tf.reduce_max(heat, axis=[1, 2]),
                "num_people": tf.ones(tf.shape(heat)[:1], tf.int32)}


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    x = keras.layers.AveragePooling2D(4)(keras.layers.Rescaling(1 / 255.0)(inp))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    heat = keras.layers.Conv2D(K, 3, padding="same", bias_initializer="random_normal")(x)
    off = keras.layers.Conv2D(2 * K, 3, padding="same", bias_initializer="random_normal")(x)
    return keras.Model(inp, {"heatmaps": heat, "offsets": off})


class Recorder:
    """Callable model wrapper that records the input shapes it is called with."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __call__(self, images, training=False):
        self.shapes.append(tuple(images.shape))
        return self.model(images, training=training)


def np_flip_back(outputs):
    """numpy reference of flip_outputs: mirror columns, swap l/r, negate dx."""
    heat = outputs["heatmaps"][:, :, ::-1][..., TINY.flip_index]
    off = outputs["offsets"][:, :, ::-1].reshape(*outputs["offsets"].shape[:3], K, 2)
    off = off[..., TINY.flip_index, :] * np.array([-1.0, 1.0], np.float32)
    return {"heatmaps": heat, "offsets": off.reshape(outputs["offsets"].shape)}


def run(model, images, **kw):
    return {k: v.numpy() for k, v in network_outputs(model, FakeCodec(), images, **kw).items()}


def plain(model, images):
    return {k: v.numpy() for k, v in model(images, training=False).items()}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, [2, S, S, 3]).astype(np.float32)


def test_single_pass_is_the_model(model, images):
    out, ref = run(model, images), plain(model, images)
    assert set(out) == {"heatmaps", "offsets"}
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])


def test_flip_test_matches_numpy_reference(model, images):
    recorder = Recorder(model)
    out = {k: v.numpy() for k, v in
           network_outputs(recorder, FakeCodec(), images, flip_test=True).items()}
    assert recorder.shapes == [(4, S, S, 3)]  # original and flipped in one batch
    back = np_flip_back(plain(model, images[:, :, ::-1]))
    ref = plain(model, images)
    for k in ref:
        np.testing.assert_allclose(out[k], (ref[k] + back[k]) / 2, atol=1e-5)
        assert not np.allclose(out[k], ref[k], atol=1e-3)  # the flip pass changes something


def test_flip_test_commutes_with_flipping_the_image(model, images):
    # F(flip(x)) = flip_outputs(F(x)) for any model, as flip_outputs is a linear involution.
    codec = FakeCodec()
    of_flipped = run(model, images[:, :, ::-1].copy(), flip_test=True)
    flipped_of = np_flip_back(run(model, images, flip_test=True))
    for k in of_flipped:
        np.testing.assert_allclose(of_flipped[k], flipped_of[k], atol=1e-5)
    outputs = plain(model, images)
    twice = codec.flip_outputs(codec.flip_outputs(outputs))
    for k in outputs:
        np.testing.assert_allclose(twice[k].numpy(), outputs[k], atol=1e-6)


def test_scales_resize_inputs_and_bring_outputs_back(model, images):
    recorder = Recorder(model)
    out = {k: v.numpy() for k, v in
           network_outputs(recorder, FakeCodec(), images, scales=(0.5, 1.0, 2.0)).items()}
    assert [s[1] for s in recorder.shapes] == [32, 64, 128]
    h = S // 4
    parts = [plain(model, images)]
    for scale in (0.5, 2.0):
        size = int(S * scale)
        o = plain(model, tf.image.resize(images, [size, size], "bilinear").numpy())
        assert o["heatmaps"].shape[1] == h * scale
        parts.append({"heatmaps": tf.image.resize(o["heatmaps"], [h, h]).numpy(),
                      "offsets": tf.image.resize(o["offsets"], [h, h]).numpy() / scale})
    for k in out:
        assert out[k].shape == parts[0][k].shape
        np.testing.assert_allclose(out[k], np.mean([p[k] for p in parts], axis=0), atol=1e-5)


def test_flip_and_scale_average_all_passes(model, images):
    recorder = Recorder(model)
    out = {k: v.numpy() for k, v in network_outputs(
        recorder, FakeCodec(), images, flip_test=True, scales=(1.0, 2.0)).items()}
    assert [s[:2] for s in recorder.shapes] == [(4, 64), (4, 128)]
    h = S // 4
    big = tf.image.resize(images, [128, 128], "bilinear").numpy()
    passes = [plain(model, images), np_flip_back(plain(model, images[:, :, ::-1])),
              plain(model, big), np_flip_back(plain(model, big[:, :, ::-1]))]
    for p in passes[2:]:
        p["heatmaps"] = tf.image.resize(p["heatmaps"], [h, h]).numpy()
        p["offsets"] = tf.image.resize(p["offsets"], [h, h]).numpy() / 2.0
    for k in out:
        np.testing.assert_allclose(out[k], np.mean([p[k] for p in passes], axis=0), atol=1e-5)


def test_works_inside_tf_function(model, images):
    codec = FakeCodec()
    fn = tf.function(lambda x: network_outputs(model, codec, x, True, (1.0, 0.5)))
    eager = run(model, images, flip_test=True, scales=(1.0, 0.5))
    for k, v in fn(tf.constant(images)).items():
        np.testing.assert_allclose(v.numpy(), eager[k], atol=1e-5)


def test_scaled_sizes_and_bad_scales():
    assert scaled_sizes(512, [0.5, 1.0, 2.0]) == [(0.5, 256), (1.0, 512), (2.0, 1024)]
    assert scaled_sizes(100, [1.0]) == [(1.0, 100)]  # scale 1 keeps any input size
    for bad in ([0.75], [0.0], [-1.0], []):
        with pytest.raises(ConfigError, match="eval.scales"):
            scaled_sizes(64, bad)
    with pytest.raises(ConfigError, match=r"scale 0\.75 .* 48-pixel"):
        network_outputs(tiny_model(), FakeCodec(), np.zeros([1, S, S, 3], np.float32),
                        scales=(1.0, 0.75))


def test_codec_without_flip_or_resize_is_a_config_error(model, images):
    class Plain(Codec):
        name = "plain"

    codec = Plain(None, TINY, S)
    with pytest.raises(ConfigError, match="eval.flip_test.*'plain'"):
        network_outputs(model, codec, images, flip_test=True)
    with pytest.raises(ConfigError, match="eval.scales.*'plain'"):
        network_outputs(model, codec, images, scales=(2.0,))


def test_images_must_be_square_with_static_size(model):
    with pytest.raises(ValueError, match="static square"):
        network_outputs(model, FakeCodec(), np.zeros([1, 64, 32, 3], np.float32))


def test_predictor_uses_eval_settings(model, images):
    from types import SimpleNamespace

    cfg = SimpleNamespace(eval=SimpleNamespace(flip_test=True, scales=[1.0, 2.0]),
                          data=SimpleNamespace(input_size=S))
    codec = FakeCodec()
    poses = predictor(cfg, model, codec)(tf.constant(images))
    ref = codec.decode(network_outputs(model, codec, images, True, (1.0, 2.0)))
    np.testing.assert_allclose(poses["peak"].numpy(), ref["peak"].numpy(), atol=1e-5)
    cfg.eval.scales = [0.3]
    with pytest.raises(ConfigError, match="eval.scales"):
        predictor(cfg, model, codec)


def test_checkpoint_run_dir(tmp_path):
    run = tmp_path / "run"
    assert checkpoint_run_dir(str(run / "checkpoints" / "ckpt-10" / "ckpt")) == str(run)
    assert checkpoint_run_dir(str(run / "best" / "ckpt-7.1" / "ckpt")) == str(run)
    assert checkpoint_run_dir(str(tmp_path / "elsewhere" / "ckpt"), "fallback") == "fallback"


# -- with the dekr codec and a tiny dekr network ---------------------------------------------------

TINY_DEKR = {"method": "dekr",
             "model": {"type": "dekr", "width": 8, "regression_channels": 16,
                       "offset_branch_channels": 4},
             "codec": {"type": "dekr"}, "loss": {"type": "dekr"},
             "data": {"keypoints": "coco", "input_size": 64}}


@pytest.fixture(scope="module")
def dekr():
    from tfpose.config import config_from_dict
    from tfpose.registry import METHODS, build_codec

    cfg = config_from_dict(TINY_DEKR)
    keras.utils.set_random_seed(0)
    return cfg, METHODS["dekr"].build_model(cfg), build_codec(cfg)


def test_dekr_flip_test_commutes_with_flipping_the_image(dekr, images):
    _, model, codec = dekr
    x = images[:1]
    of_flipped = network_outputs(model, codec, x[:, :, ::-1].copy(), flip_test=True)
    flipped_of = codec.flip_outputs(network_outputs(model, codec, x, flip_test=True))
    assert set(of_flipped) == {"heatmaps", "center", "offsets"}
    for k in of_flipped:
        np.testing.assert_allclose(of_flipped[k].numpy(), flipped_of[k].numpy(), atol=1e-4)


def test_dekr_multi_scale_outputs_decode(dekr, images):
    cfg, model, codec = dekr
    out = network_outputs(model, codec, images[:1], flip_test=True, scales=(0.5, 1.0, 2.0))
    assert out["offsets"].shape == (1, S // 4, S // 4, 2 * 17)
    poses = codec.decode(out)
    assert poses["keypoints"].shape == (1, codec.max_people, 17, 3)


def test_restore_for_inference_loads_weights_and_the_runs_scorer(dekr, tmp_path):
    from tfpose.config import config_from_dict
    from tfpose.inference import restore_for_inference
    from tfpose.postprocess.scoring import SCORER_WEIGHTS, build_scorer
    from tfpose.training.checkpoint import CheckpointStore

    _, model, _ = dekr
    run = tmp_path / "run"
    CheckpointStore(str(run / "checkpoints"), 1).save(tf.train.Checkpoint(model=model), 5)
    cfg = config_from_dict({**TINY_DEKR, "train": {"out_dir": str(tmp_path / "other")}})
    restored, codec = restore_for_inference(cfg, str(run))
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert codec.scorer is None  # no scorer trained in that run
    build_scorer(cfg.spec).save_weights(str(run / SCORER_WEIGHTS))
    _, codec = restore_for_inference(cfg, str(run / "checkpoints"))
    assert codec.scorer is not None
