"""The dekr method learns on the real coco_mini images: codec targets from the training pipeline,
the network and the loss of tfpose.methods.dekr, a few optimizer steps."""

import numpy as np
import tensorflow as tf

from tfpose.config import config_from_dict
from tfpose.data.pipeline import build_dataset
from tfpose.registry import METHODS, build_codec


def _tiny_config(data_dir):
    mini = data_dir / "coco_mini"
    return config_from_dict({
        "method": "dekr",
        "model": {"type": "dekr", "width": 8, "stem_channels": 16, "regression_channels": 16,
                  "offset_branch_channels": 4},
        "codec": {"type": "dekr"},
        "loss": {"type": "dekr"},
        "data": {"keypoints": "coco", "input_size": 128, "batch_size": 4,
                 "train": {"annotations": str(mini / "test_coco.json"), "images": str(mini)},
                 "augment": {"rotation": 0.0, "scale_min": 1.0, "scale_max": 1.0,
                             "translation": 0.0, "flip": 0.0}},
        "seed": 3,
    })


def test_training_loss_decreases_on_coco_mini(data_dir):
    cfg = _tiny_config(data_dir)
    method = METHODS["dekr"]
    codec = build_codec(cfg)
    images, targets = next(iter(build_dataset(cfg, "train", codec, training=True)))
    assert float(tf.reduce_sum(targets["offset_weights"])) > 0  # people with centre regions
    tf.keras.utils.set_random_seed(cfg.seed)
    model = method.build_model(cfg)
    loss_fn = method.build_loss(cfg)
    optimizer = tf.keras.optimizers.Adam(2e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            terms = loss_fn(targets, model(images, training=True))
            loss = tf.add_n([tf.reduce_mean(v) for v in terms.values()])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {k: tf.reduce_mean(v) for k, v in terms.items()}

    history = [{k: float(v) for k, v in step().items()} for _ in range(25)]
    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for h in history for v in h.values())
    assert sum(last.values()) < 0.7 * sum(first.values())
    for name in ("heatmap", "center", "offset"):
        assert last[name] < first[name], (name, first[name], last[name])
