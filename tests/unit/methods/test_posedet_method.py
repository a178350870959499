"""The posedet method: cross-field config checks naming the key at fault, and one training step
of a tiny model through the codec targets and the real loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from method_cases import raw_config

from tfpose.config import ConfigError, config_from_dict
from tfpose.registry import METHODS, build_codec

_BASE = {"method": "posedet",
         "model": {"type": "posedet", "backbone": "mobilenetv3", "width": 8,
                   "fpn_channels": 16, "head_channels": 16, "head_convs": 1,
                   "bypass_convs": 1},
         "codec": {"type": "posedet", "max_people": 4},
         "loss": {"type": "posedet"}, "data": {"keypoints": "coco", "input_size": 64}}


def _raw(**changes):
    return raw_config(_BASE, **changes)


def test_valid_config_passes():
    cfg = config_from_dict(_raw())
    assert cfg.method == "posedet" and cfg.codec.strides == cfg.model.strides == [8, 16, 32]
    assert METHODS["posedet"].codec == "posedet"


@pytest.mark.parametrize("changes, message", [
    ({"codec": {"type": "ae"}}, "needs 'codec.type: posedet'"),
    ({"model": {"type": "dekr"}}, "needs 'model.type: posedet'"),
    ({"loss": None}, "needs 'loss.type: posedet'"),
    ({"codec__strides": [8, 16], "codec__level_boundaries": [64.0]},
     "codec.strides = [8, 16] must equal model.strides = [8, 16, 32]"),
    ({"data__input_size": 100}, "data.input_size = 100 must be a multiple of 32"),
    ({"model__strides": [8, 16, 32, 64], "codec__strides": [8, 16, 32, 64],
      "codec__level_boundaries": [64.0, 128.0, 256.0], "data__input_size": 96},
     "data.input_size = 96 must be a multiple of 64"),
])
def test_cross_field_errors_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")
                       .replace("]", r"\]")):
        config_from_dict(_raw(**changes))


def _person(x0, y0, size, k):
    """A hand-made person: K labelled keypoints spread over a size x size box at (x0, y0)."""
    t = np.linspace(0.0, 1.0, k)
    return np.stack([x0 + size * t, y0 + size * (0.5 + 0.5 * np.sin(6 * t)), np.full(k, 2.0)], -1)


def test_one_training_step_through_the_real_loss():
    cfg = config_from_dict(_raw())
    method, codec = METHODS["posedet"], build_codec(cfg)
    k = cfg.spec.num_keypoints
    samples = [np.stack([_person(6, 8, 40, k), _person(30, 20, 20, k)]).astype(np.float32),
               np.zeros((0, k, 3), np.float32)]  # an image with nobody
    valid = np.ones((64, 64), np.float32)
    encoded = [codec.encode(tf.constant(p), tf.constant(valid)) for p in samples]
    targets = {key: tf.stack([e[key] for e in encoded]) for key in encoded[0]}
    assert int(tf.reduce_sum(tf.cast(targets["assigned"][0] >= 0, tf.int32))) == 2
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)), tf.float32)

    keras.utils.set_random_seed(cfg.seed)
    model = method.build_model(cfg)
    loss_fn = method.build_loss(cfg)
    optimizer = keras.optimizers.Adam(1e-3)
    with tf.GradientTape() as tape:
        terms = loss_fn(targets, model(images, training=True))
        loss = tf.add_n([tf.reduce_sum(v) for v in terms.values()]) / 2.0
    assert sorted(terms) == ["cls", "coarse", "heatmap", "refine"]
    for name, value in terms.items():
        assert value.shape == (2,) and np.isfinite(value.numpy()).all(), name
    assert float(terms["coarse"][0]) > 0 and float(terms["coarse"][1]) == 0.0  # nobody: 0
    assert float(terms["heatmap"][0]) > 0 and float(terms["cls"][0]) > 0
    grads = tape.gradient(loss, model.trainable_variables)
    named = {v.path: g for v, g in zip(model.trainable_variables, grads)}
    for name in ("head_coarse/kernel", "head_logits/bias", "head_heatmaps/kernel"):
        assert np.abs(named[name].numpy()).max() > 0, name
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)
    before = model(images, training=False)["coarse"].numpy()
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    after = model(images, training=False)["coarse"].numpy()
    assert np.isfinite(after).all() and not np.allclose(before, after)
