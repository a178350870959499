"""Shared by the per-method "learns on coco_mini" tests: a tiny config on the real images and a
few plain optimizer steps through the method's network and loss."""

import tensorflow as tf

from tfpose.config import config_from_dict
from tfpose.data.pipeline import build_dataset
from tfpose.registry import METHODS, build_codec


def tiny_config(data_dir, method: str, model: dict, codec: dict):
    """A 128 px, batch-4 config of `method` on coco_mini without augmentation."""
    mini = data_dir / "coco_mini"
    return config_from_dict({
        "method": method,
        "model": {"type": method, **model},
        "codec": {"type": method, **codec},
        "loss": {"type": method},
        "data": {"keypoints": "coco", "input_size": 128, "batch_size": 4,
                 "train": {"annotations": str(mini / "test_coco.json"), "images": str(mini)},
                 "augment": {"rotation": 0.0, "scale_min": 1.0, "scale_max": 1.0,
                             "translation": 0.0, "flip": 0.0}},
        "seed": 3,
    })


def first_batch(cfg):
    """(images, targets) of the first training batch, encoded by the method's codec."""
    return next(iter(build_dataset(cfg, "train", build_codec(cfg), training=True)))


def train_on_batch(cfg, images, targets, steps: int = 25) -> list:
    """Adam steps on one batch; returns the batch-mean loss terms of every step."""
    method = METHODS[cfg.method]
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

    return [{k: float(v) for k, v in step().items()} for _ in range(steps)]
