"""COCO keypoint JSON reader (also CrowdPose, OCHuman, HumanArt and PoseTrack COCO-style files).

What is read, and the quirks handled:
    * ``images``: ``id``, ``file_name`` (may contain sub-folders, joined to ``images_dir``),
      ``height``/``width`` (read from the image header when absent), CrowdPose ``crowdIndex``,
      PoseTrack ``ignore_regions_x``/``ignore_regions_y`` polygons (added to the ignore regions)
      and ``is_labeled`` (PoseTrack frames with ``is_labeled: false`` carry no annotation and are
      dropped, so unlabelled people are not taught as background).
    * ``categories``: with several categories, only the person category is read: the one whose
      ``keypoints`` list has the spec's length (``id`` 1 preferred among several), else ``id`` 1.
      Annotations of other categories are skipped.
    * ``annotations``: ``iscrowd`` as 0/1 or boolean; ``keypoints`` of K*3 numbers, ``null`` or
      ``[]`` meaning no keypoints; ``v > 0`` counts as labelled (``num_keypoints`` is recomputed
      from v, the stored value is not trusted: CrowdPose's differs); missing ``area`` -> bbox
      area; ``segmentation`` as polygons or RLE (compressed or not); unknown keys are ignored.
    * Crowd annotations and persons with no labelled keypoint go to ``ignore_regions`` (their
      segmentation, else their bbox as a 4-point polygon); the others become the record's people.
    * Keypoints outside the image are kept as they are; augmentation's crop drops them later.
    * Annotations whose ``image_id`` is not in ``images`` are skipped with one counted warning
      (pycocotools would silently ignore them).
Records keep the order of the ``images`` list; images with zero people are kept.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from tfpose.data.images import image_size
from tfpose.data.records import DatasetError, ImageRecord
from tfpose.keypoints import get_spec

logger = logging.getLogger(__name__)


def load_json(path: str):
    """Parses a JSON file; DatasetError naming the file (and line) when missing or not JSON."""
    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "r") as f:
                return json.load(f)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None


def image_path(images_dir: str, file_name: str) -> str:
    """The absolute path of an image named relative to the image folder."""
    path = os.path.join(images_dir, file_name)
    return path if "://" in path else os.path.abspath(path)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(value, where: str) -> int:
    if not _is_number(value) or value != int(value) or value <= 0:
        raise DatasetError(f"{where} must be a positive integer, got {value!r}")
    return int(value)


def _person_category(categories, num_keypoints: int, path: str):
    """The category id whose annotations are read, or None to read every annotation."""
    if not isinstance(categories, list) or not categories:
        return None
    ids = [c.get("id") for c in categories if isinstance(c, dict)]
    matching = [c.get("id") for c in categories
                if isinstance(c, dict) and len(c.get("keypoints") or ()) == num_keypoints]
    if matching:
        return 1 if 1 in matching else matching[0]
    if 1 in ids:
        return 1
    if len(ids) == 1:
        return ids[0]
    raise DatasetError(f"{path}: no category has {num_keypoints} keypoint names and none has "
                       f"id 1 (category ids: {ids})")


def _bbox_polygon(box) -> list:
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _has_segmentation(seg) -> bool:
    if isinstance(seg, dict):
        return "counts" in seg
    return isinstance(seg, list) and any(isinstance(p, list) and len(p) >= 6 for p in seg)


def _read_images(images, images_dir: str, path: str):
    """image id -> dict(record fields) in file order."""
    out = {}
    for i, im in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict):
            raise DatasetError(f"{where} must be an object, got {type(im).__name__}")
        for key in ("id", "file_name"):
            if key not in im:
                raise DatasetError(f"{where}: missing required key '{key}'")
        image_id = im["id"]
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DatasetError(f"{where}: id must be an integer, got {image_id!r}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DatasetError(f"{where} (id {image_id}): file_name must be a non-empty string, "
                               f"got {im['file_name']!r}")
        if image_id in out:
            raise DatasetError(f"{path}: duplicate image id {image_id} ('{im['file_name']}' and "
                               f"'{out[image_id]['file_name']}')")
        file_path = image_path(images_dir, im["file_name"])
        if "height" in im and "width" in im:
            height = _positive_int(im["height"], f"{where} (id {image_id}): height")
            width = _positive_int(im["width"], f"{where} (id {image_id}): width")
        else:
            height, width = image_size(file_path)
        crowd_index = im.get("crowdIndex")
        if crowd_index is not None and not _is_number(crowd_index):
            raise DatasetError(f"{where} (id {image_id}): crowdIndex must be a number, "
                               f"got {crowd_index!r}")
        regions = []
        xs, ys = im.get("ignore_regions_x"), im.get("ignore_regions_y")
        if xs and ys:  # PoseTrack: one list of x and one of y per region
            for rx, ry in zip(xs, ys):
                if len(rx) != len(ry):
                    raise DatasetError(f"{where} (id {image_id}): ignore_regions_x and "
                                       f"ignore_regions_y lengths differ")
                regions.append([[float(v) for xy in zip(rx, ry) for v in xy]])
        out[image_id] = {
            "file_name": im["file_name"], "path": file_path, "height": height, "width": width,
            "crowd_index": None if crowd_index is None else float(crowd_index),
            "labeled": im.get("is_labeled", True) is not False,
            "keypoints": [], "boxes": [], "areas": [], "ignore": regions,
        }
    return out


def _parse_annotation(ann, j: int, k: int, spec_name: str, path: str):
    """Returns (image_id, crowd, keypoints [K, 3] or None, bbox [4], area, segmentation)."""
    if not isinstance(ann, dict):
        raise DatasetError(f"{path}: annotations[{j}] must be an object, got {type(ann).__name__}")
    name = f"annotation id {ann['id']}" if "id" in ann else f"annotations[{j}]"
    where = f"{path}: {name}"
    for key in ("image_id", "bbox"):
        if key not in ann:
            raise DatasetError(f"{where}: missing required key '{key}'")
    crowd = bool(ann.get("iscrowd", 0))
    if "keypoints" not in ann and not crowd:
        raise DatasetError(f"{where}: missing required key 'keypoints'")
    bbox = ann["bbox"]
    if (not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox)
            or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0):
        raise DatasetError(f"{where}: bbox must be [x, y, w, h] with w, h >= 0, got {bbox!r}")
    values = ann.get("keypoints") or []
    keypoints = None
    if values:
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise DatasetError(f"{where}: keypoints must be a list of numbers")
        if len(values) != 3 * k:
            raise DatasetError(f"{where}: {len(values)} keypoint values ({len(values) / 3:g} "
                               f"keypoints), expected {3 * k} ({k} keypoints of spec "
                               f"'{spec_name}')")
        keypoints = np.asarray(values, np.float32).reshape(k, 3)
        if not np.isfinite(keypoints).all():
            raise DatasetError(f"{where}: keypoints contain NaN or infinity")
    area = ann.get("area")
    if area is None:
        area = float(bbox[2]) * float(bbox[3])
    elif not _is_number(area) or not math.isfinite(area):
        raise DatasetError(f"{where}: area must be a number, got {area!r}")
    return ann["image_id"], crowd, keypoints, [float(v) for v in bbox], float(area), \
        ann.get("segmentation")


def read_coco(annotations_path: str, images_dir: str, spec) -> list:
    """Reads a COCO-format keypoint file into ImageRecords.

    Args:
        annotations_path: str, the JSON file.
        images_dir: str, folder the images' ``file_name`` are relative to.
        spec: KeypointSpec or built-in spec name; K = spec.num_keypoints.

    Returns:
        list of ImageRecord, keypoints float32 [N, K, 3], boxes float32 [N, 4], areas float32 [N].

    Raises:
        DatasetError: one line naming the file and the image/annotation (id or index) and key,
            for a missing or non-JSON file, missing required keys, wrong keypoint counts (got vs
            expected), duplicate image ids, or no images at all.
    """
    spec = get_spec(spec)
    k = spec.num_keypoints
    path = str(annotations_path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be an object with 'images' and "
                           f"'annotations', got {type(data).__name__}")
    if "images" not in data:
        raise DatasetError(f"{path}: missing required key 'images'")
    if not isinstance(data["images"], list):
        raise DatasetError(f"{path}: 'images' must be a list")
    if not data["images"]:
        raise DatasetError(f"{path}: no images (empty dataset)")
    if "annotations" not in data:
        logger.warning("%s has no 'annotations' key: every image has zero people", path)
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise DatasetError(f"{path}: 'annotations' must be a list")
    category = _person_category(data.get("categories"), k, path)
    images = _read_images(data["images"], str(images_dir), path)

    orphans = []
    for j, ann in enumerate(annotations):
        if category is not None and isinstance(ann, dict) and \
                ann.get("category_id", category) != category:
            continue
        image_id, crowd, keypoints, bbox, area, seg = _parse_annotation(ann, j, k, spec.name, path)
        image = images.get(image_id)
        if image is None:
            orphans.append((ann.get("id", f"annotations[{j}]"), image_id))
            continue
        if crowd or keypoints is None or not (keypoints[:, 2] > 0).any():
            image["ignore"].append(seg if _has_segmentation(seg) else _bbox_polygon(bbox))
            continue
        image["keypoints"].append(keypoints)
        image["boxes"].append(bbox)
        image["areas"].append(area)
    if orphans:
        logger.warning("%s: skipped %d annotations whose image_id is not in 'images' (first: "
                       "annotation %s -> image_id %r)", path, len(orphans), *orphans[0])

    records = []
    for image_id, im in images.items():
        if not im["labeled"]:
            continue
        n = len(im["keypoints"])
        records.append(ImageRecord(
            image_id=image_id, path=im["path"], height=im["height"], width=im["width"],
            keypoints=(np.stack(im["keypoints"]).astype(np.float32) if n
                       else np.zeros((0, k, 3), np.float32)),
            boxes=np.asarray(im["boxes"], np.float32).reshape(n, 4),
            areas=np.asarray(im["areas"], np.float32).reshape(n),
            ignore_regions=im["ignore"],
            crowd_index=im["crowd_index"],
        ))
    if not records:
        raise DatasetError(f"{path}: no labelled images (empty dataset)")
    return records
