"""A toy method for the training-engine tests: a tiny conv net, a heatmap codec, a two-term loss
and in-memory datasets.

Imported by the tests in this folder; run as a script (by path) it trains the toy in a fresh
process, as ``python -m tfpose.train`` would (subprocess tests: kill -9, multi-worker, Mirrored):

    python tests/unit/training/toy_method.py --out DIR [--resume] [--steps-per-epoch N] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

INPUT_SIZE = 16
STRIDE = 4
NUM_IMAGES = 12
SPEC = {"names": ["a", "b"], "sigmas": [0.1, 0.1], "skeleton": [["a", "b"]]}


@dataclasses.dataclass
class ToyCodecConfig:
    max_people: int = 1


def make_codec_class():
    from tfpose.codecs.base import Codec
    import tensorflow as tf

    class ToyCodec(Codec):
        """One person: each keypoint at the arg-max of its heatmap channel."""

        name = "toy"
        config_class = ToyCodecConfig

        def decode(self, outputs):
            heat = outputs["heatmap"]
            b = tf.shape(heat)[0]
            size, k = heat.shape[1], heat.shape[3]
            flat = tf.reshape(tf.transpose(heat, [0, 3, 1, 2]), [b, k, size * size])
            index = tf.argmax(flat, axis=-1, output_type=tf.int32)
            score = tf.reduce_max(flat, axis=-1)
            x = (tf.cast(index % size, tf.float32) + 0.5) * STRIDE
            y = (tf.cast(index // size, tf.float32) + 0.5) * STRIDE
            keypoints = tf.stack([x, y, score], axis=-1)[:, None]
            return {"keypoints": keypoints, "scores": tf.reduce_mean(score, -1)[:, None],
                    "num_people": tf.ones([b], tf.int32)}

    return ToyCodec


def build_model(cfg, batch_norm: bool = True):
    import keras

    k = len(SPEC["names"])
    images = keras.Input((cfg.data.input_size, cfg.data.input_size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(images)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)
    if batch_norm:  # per-replica statistics: off where runs on different replicas are compared
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(k, 3, strides=2, padding="same")(x)
    return keras.Model(images, {"heatmap": x})


def build_loss(cfg):
    import tensorflow as tf

    def loss(targets, outputs):
        diff = outputs["heatmap"] - targets["heatmap"]
        return {"heatmap": tf.reduce_sum(tf.square(diff), [1, 2, 3]),
                "offset": 0.1 * tf.reduce_sum(tf.abs(diff), [1, 2, 3])}

    return loss


def make_method(stages=None, batch_norm: bool = True):
    from tfpose.registry import Method

    method = Method(name="toy", codec="toy", build_loss=build_loss,
                    build_model=lambda cfg: build_model(cfg, batch_norm))
    if stages:
        method.stages = stages
    return method


def _bank(num_images: int):
    """Fixed random images and heatmap targets."""
    rng = np.random.default_rng(1234)
    size = INPUT_SIZE // STRIDE
    images = rng.uniform(0, 255, (num_images, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
    heat = rng.uniform(0, 1, (num_images, size, size, len(SPEC["names"]))).astype(np.float32)
    return images, heat


def train_dataset_fn(base_seed: int = 0, num_images: int = NUM_IMAGES, nan_at=None,
                     repeat: bool = False):
    """A data function for Trainer: stream i shuffles the bank with seed ``cfg.seed``.

    Args:
        base_seed: int, cfg.seed of the run (stream = cfg.seed - base_seed).
        num_images: int, images in the bank.
        nan_at: optional (stream, batch index): that batch's heatmap targets are NaN.
        repeat: bool, repeat the pass forever (like the real pipeline) instead of one pass.
    """
    import tensorflow as tf

    images, heat = _bank(num_images)

    def fn(cfg, codec, ctx):
        order = np.random.default_rng(cfg.seed).permutation(num_images)
        order = order[ctx.input_pipeline_id::ctx.num_input_pipelines]
        batch = ctx.get_per_replica_batch_size(cfg.data.batch_size)
        targets = heat[order].copy()
        if nan_at is not None and cfg.seed - base_seed == nan_at[0]:
            targets[nan_at[1] * batch:(nan_at[1] + 1) * batch] = np.nan
        ds = tf.data.Dataset.from_tensor_slices((images[order], {"heatmap": targets}))
        ds = ds.batch(batch, drop_remainder=True)
        return ds.repeat() if repeat else ds

    return fn


def eval_dataset_fn(cfg, codec):
    import tensorflow as tf

    images, heat = _bank(4)
    transform = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (4, 1, 1))
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "image_id": np.arange(4, dtype=np.int64), "transform": transform,
        "targets": {"heatmap": heat}}).batch(2)


def metrics_fn(cfg, results, image_ids):
    """Stands in for COCO AP: the mean pose score of the results."""
    return {"AP": float(np.mean([r["score"] for r in results])), "people": float(len(results))}


def make_config(out_dir: str, **train):
    from tfpose.config import Config, DataConfig, EvalConfig, TrainConfig

    defaults = dict(out_dir=out_dir, epochs=3, steps_per_epoch=0, lr_steps=[2],
                    learning_rate=0.01, eval_every=0, log_every=1, checkpoint_every=2,
                    strategy="one_device", summary_images=0)
    defaults.update(train)
    return Config(method="toy", data=DataConfig(keypoints=SPEC, input_size=INPUT_SIZE,
                                                batch_size=4),
                  codec=ToyCodecConfig(), train=TrainConfig(**defaults), eval=EvalConfig(),
                  seed=0)


def weights(model) -> list:
    return [np.asarray(v) for v in model.weights]


def _main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--strategy", default="one_device")
    parser.add_argument("--cpus", type=int, default=1, help="logical CPU devices (Mirrored)")
    parser.add_argument("--weights", default="", help="write the final weights here (.npz)")
    parser.add_argument("--no-batch-norm", action="store_true")
    parser.add_argument("--clip-norm", type=float, default=0.0)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--eval-every", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    if args.cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpus)
    from tfpose import train
    from tfpose.registry import register_codec
    from tfpose.training.strategy import make_strategy

    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.cpus)])
                if args.strategy == "mirrored" else make_strategy(args.strategy))
    codec_cls = register_codec("toy")(make_codec_class())
    cfg = make_config(args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                      checkpoint_every=args.checkpoint_every, strategy=args.strategy,
                      clip_norm=args.clip_norm, optimizer=args.optimizer,
                      eval_every=args.eval_every)
    cfg.data.batch_size = args.batch_size
    result = train.run(cfg, resume=args.resume, strategy=strategy,
                       method=make_method(batch_norm=not args.no_batch_norm),
                       codec=codec_cls(cfg.codec, cfg.spec, cfg.data.input_size),
                       train_dataset_fn=train_dataset_fn(cfg.seed),
                       eval_dataset_fn=eval_dataset_fn, metrics_fn=metrics_fn)
    print(f"done step {result.step} reason {result.reason}", flush=True)
    if args.weights:
        os.makedirs(os.path.dirname(os.path.abspath(args.weights)), exist_ok=True)
        np.savez(args.weights, *weights(result.model))


if __name__ == "__main__":
    _main()
