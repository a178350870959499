"""The in-memory annotation record every reader produces, and the tf.data element contract.

Readers (COCO-format, MPII JSON) turn a file into a list of :class:`ImageRecord`. The pipeline
turns records (or TFRecord shards written from records) into *source elements*: dicts of tensors
with the keys below, identical for both paths, before decoding and augmentation.

Source element (one image):
    ``image_bytes``  string scalar: the encoded image file (JPEG/PNG).
    ``image_id``     int64 scalar.
    ``keypoints``    float32 [N, K, 3]: (x, y, v) in original image pixels, continuous coordinates
                     (see tfpose.codecs.base). Only persons with at least one labelled keypoint.
    ``boxes``        float32 [N, 4]: (x, y, w, h) person boxes of those persons.
    ``ignore_png``   string scalar: PNG of the uint8 ignore mask (1 = ignore: crowd regions and
                     persons with no labelled keypoint), or "" when nothing is ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


class DatasetError(ValueError):
    """An annotation file or image that cannot be used; the message names the file and the field."""


@dataclasses.dataclass
class ImageRecord:
    """One image and its people.

    Args:
        image_id: int.
        path: str, absolute path of the image file.
        height: int, image height in pixels (from the annotation file).
        width: int.
        keypoints: float32 [N, K, 3], (x, y, v) per person, v in {0, 1, 2}; persons with at least
            one labelled keypoint and not crowd.
        boxes: float32 [N, 4] (x, y, w, h).
        areas: float32 [N], COCO segment areas (used for OKS scale).
        ignore_regions: list of COCO segmentations (polygon lists or RLE dicts) and boxes of crowd
            annotations and of persons with no labelled keypoint; rasterised into the ignore mask.
        crowd_index: optional float, CrowdPose `crowdIndex`.
        head_size: optional float32 [N], MPII head segment length for PCKh.
    """

    image_id: int
    path: str
    height: int
    width: int
    keypoints: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    ignore_regions: list = dataclasses.field(default_factory=list)
    crowd_index: Optional[float] = None
    head_size: Optional[np.ndarray] = None

    @property
    def num_people(self) -> int:
        return int(self.keypoints.shape[0])
