"""The posedet method learns on the real coco_mini images: codec targets from the training
pipeline, the network and the loss of tfpose.methods.posedet, a few optimizer steps."""

import numpy as np
import tensorflow as tf

from tfpose.config import config_from_dict
from tfpose.data.pipeline import build_dataset
from tfpose.registry import METHODS, build_codec


def _tiny_config(data_dir):
    mini = data_dir / "coco_mini"
    return config_from_dict({
        "method": "posedet",
        "model": {"type": "posedet", "backbone": "mobilenetv3", "width": 8,
                  "fpn_channels": 16, "head_channels": 16, "head_convs": 1, "bypass_convs": 1},
        "codec": {"type": "posedet", "level_boundaries": [32.0, 64.0], "max_people": 8},
        "loss": {"type": "posedet"},
        "data": {"keypoints": "coco", "input_size": 128, "batch_size": 4,
                 "train": {"annotations": str(mini / "test_coco.json"), "images": str(mini)},
                 "augment": {"rotation": 0.0, "scale_min": 1.0, "scale_max": 1.0,
                             "translation": 0.0, "flip": 0.0}},
        "seed": 3,
    })


def test_training_loss_decreases_on_coco_mini(data_dir):
    cfg = _tiny_config(data_dir)
    method = METHODS["posedet"]
    codec = build_codec(cfg)
    images, targets = next(iter(build_dataset(cfg, "train", codec, training=True)))
    assert int(tf.reduce_sum(tf.cast(targets["assigned"] >= 0, tf.int32))) > 0  # people
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
    for name in ("coarse", "heatmap"):
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])
    # At the start no coarse pose is near a person (OKS < 0.52): no refinement positives, and
    # the focal loss of the negatives alone is tiny. Once the coarse poses fit, candidates pass
    # the OKS thresholds and both terms switch on (Sec. 3.2: assignment on the coarse poses).
    assert first["refine"] == 0.0 and first["cls"] < 1e-2
    assert max(h["refine"] for h in history[-5:]) > 0 and max(h["cls"] for h in history) > 0.1
