"""Converts a configured split to TFRecord shards.

    python -m tfpose.data.convert --config C --split train|val --out PREFIX --shards N \
        [--set key=value ...]

Images are validated first (tfpose.data.images.validate_images); bad ones are skipped with one
counted warning. Shards are written atomically as ``PREFIX-00000-of-0000N.tfrecord``. Bad input
(config, annotations, images) ends in one ``error: ...`` line and exit status 2 (tfpose.cli).
"""

from __future__ import annotations

import logging

from tfpose import cli
from tfpose.config import load_config
from tfpose.data.images import validate_images
from tfpose.data.readers import read_split
from tfpose.data.records import DatasetError
from tfpose.data.tfrecord import write_shards

logger = logging.getLogger(__name__)

FLAGS = cli.FLAGS


def convert(config_path: str, split: str, out_prefix: str, num_shards: int,
            overrides=(), decode_check: bool = False) -> list:
    """Reads ``cfg.data.<split>``, drops undecodable images, writes shards.

    Args:
        config_path: str, YAML config.
        split: 'train' or 'val'.
        out_prefix: str, shard path prefix.
        num_shards: int >= 1.
        overrides: iterable of 'key=value' strings.
        decode_check: bool, also decode each image (slow, exact).

    Returns:
        list of shard paths.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', received: split={split!r}")
    cfg = load_config(config_path, overrides)
    records = read_split(getattr(cfg.data, split), cfg.spec)
    records = validate_images(records, on_error="skip", decode=decode_check)
    if not records:
        raise DatasetError(f"{config_path}: data.{split} has no usable image")
    paths = write_shards(records, out_prefix, num_shards)
    logger.info("wrote %d images to %d shards %s", len(records), len(paths),
                paths[0] if len(paths) == 1 else f"{paths[0]} ...")
    return paths


def main(argv):
    if len(argv) > 1:
        raise cli.app.UsageError(f"unexpected arguments: {argv[1:]}")
    paths = convert(FLAGS.config, FLAGS.split, FLAGS.out, FLAGS.shards, FLAGS.set,
                    FLAGS.decode_check)
    for path in paths:
        print(path)


if __name__ == "__main__":
    cli.define_config_flags()
    cli.flags.DEFINE_enum("split", "train", ["train", "val"], "Split of cfg.data to convert.")
    cli.flags.DEFINE_string("out", None, "Output path prefix of the shards.")
    cli.flags.DEFINE_integer("shards", 1, "Number of shards.", lower_bound=1)
    cli.flags.DEFINE_boolean("decode_check", False, "Also decode every image while validating "
                             "(slow).")
    cli.flags.mark_flag_as_required("out")
    cli.run(main)
