"""Benchmarks that print figures (never asserted in tests).

    python -m tfpose.benchmark pipeline --config C [--split train] [--batches 30] [--json]

``pipeline``: images/s of the training input pipeline (decode + augment + encode + batch) on the
config's split, after a warm-up; the last line is one JSON object when --json is given.
"""

from __future__ import annotations

import json
import time

from tfpose import cli

FLAGS = cli.FLAGS


def benchmark_pipeline(cfg, split: str = "train", batches: int = 30, warmup: int = 5) -> dict:
    """Times `batches` batches of the training pipeline after `warmup` batches."""
    from tfpose.data.pipeline import build_dataset
    from tfpose.registry import build_codec

    codec = build_codec(cfg)
    iterator = iter(build_dataset(cfg, split, codec, training=True))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images_batch, _targets = next(iterator)
        images += int(images_batch.shape[0])
    seconds = time.perf_counter() - start
    return {"benchmark": "pipeline", "codec": codec.name, "input_size": cfg.data.input_size,
            "batch_size": cfg.data.batch_size, "images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 2)}


BENCHMARKS = {"pipeline": benchmark_pipeline}


def main(argv):
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        raise cli.ConfigError(f"usage: python -m tfpose.benchmark {{{'|'.join(BENCHMARKS)}}} "
                              "--config C [--json]")
    cfg = cli.load_config_from_flags()
    result = benchmark_pipeline(cfg, FLAGS.split, FLAGS.batches)
    if FLAGS.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>14}: {value}")


if __name__ == "__main__":
    cli.define_config_flags()
    cli.flags.DEFINE_string("split", "train", "Dataset split to read (train or val).")
    cli.flags.DEFINE_integer("batches", 30, "Batches to time after the warm-up.")
    cli.flags.DEFINE_bool("json", False, "Print the result as one JSON line.")
    cli.run(main)
