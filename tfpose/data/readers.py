"""Reads one configured split into ImageRecords, dispatching on its format."""

from __future__ import annotations

import os

from tfpose.data.coco import read_coco
from tfpose.data.mpii import read_mpii
from tfpose.data.records import DatasetError

READERS = {"coco": read_coco, "mpii": read_mpii}


def read_split(split_cfg, spec) -> list:
    """Reads a split given as annotation file + image folder.

    Args:
        split_cfg: tfpose.config.SplitConfig; ``format`` 'coco' (COCO-style JSON: COCO,
            CrowdPose, OCHuman, HumanArt, PoseTrack) or 'mpii' (MPII JSON). An empty ``images``
            means the annotation file's folder.
        spec: KeypointSpec or name.

    Returns:
        list of ImageRecord.

    Raises:
        DatasetError: the split has no annotation file (TFRecord splits are read with
            tfpose.data.tfrecord.read_shards), or the reader's errors.
    """
    if not split_cfg.annotations:
        where = f"tfrecords '{split_cfg.tfrecords}'" if split_cfg.tfrecords else "it"
        raise DatasetError(f"split has no 'annotations' file ({where} cannot be read as "
                           f"annotations)")
    if split_cfg.format not in READERS:
        raise DatasetError(f"{split_cfg.annotations}: unknown format {split_cfg.format!r} "
                           f"(one of {sorted(READERS)})")
    images = split_cfg.images or os.path.dirname(split_cfg.annotations) or "."
    return READERS[split_cfg.format](split_cfg.annotations, images, spec)
