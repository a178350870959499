"""MPII reader for the common JSON conversion (a list of person entries).

Each entry: ``image`` (file name), ``joints`` [16, 2], ``joints_vis`` [16], ``center`` [2],
``scale`` (person height / 200 px), optionally ``headbox`` and ``image_id``. Entries with the
same ``image`` are one image with several people. This is the only MPII parser in tfpose: the
data pipeline and the MPII evaluation (tfpose.evaluation.mpii) both read through it.

Conventions (documented choices):
    * Coordinates: the file (MMPose's conversion of the MATLAB annotations) keeps MATLAB's
      1-based pixel indices, so MATLAB pixel p covers the continuous interval [p - 1, p) and has
      its centre at p - 0.5 in tfpose's continuous convention (tfpose.codecs.base). The reader
      subtracts 0.5 from ``joints`` and ``center``. (MMPose subtracts 1 because its pixel
      centres are the integers.) Head boxes are used only through their diagonal, which the
      shift does not change.
    * v = 1 for a labelled joint; joints with ``joints_vis`` 0 or a negative coordinate (MPII
      writes -1 for missing joints) get (0, 0, 0), as unlabelled COCO keypoints.
    * Box: the square of side ``scale * 200`` centred on ``center``; area = its area (used only
      as an OKS scale if COCO-style AP is computed on MPII).
    * ``head_size`` (PCKh normaliser): with a ``headbox`` key ([x1, y1, x2, y2] or
      [[x1, y1], [x2, y2]]) it is 0.6 * the box diagonal, as the official MPII evaluation
      (``SC_BIAS = 0.6``); otherwise the fallback is the distance upper_neck <-> head_top
      (spec keypoints 'upper_neck' and 'head_top'), NaN when either joint is unlabelled or the
      spec has no such names.
    * An entry with no labelled joint is not a person of the record: its box goes to
      ``ignore_regions`` (as the COCO reader does for people with 0 keypoints).
    * Image ids: the entry's ``image_id`` when given (all entries of one image must agree), else
      the numeric file stem as MMPose does (``005808361.jpg`` -> 5808361), else (a non-numeric
      name) the image's 1-based position in sorted file-name order, so a file of non-numeric
      names gets 1..N whatever the entry order. Two images with one id are an error.
    * Height and width come from the image file header.
"""

from __future__ import annotations

import math
import os

import numpy as np

from tfpose.data.coco import image_path, load_json
from tfpose.data.images import image_size
from tfpose.data.records import DatasetError, ImageRecord
from tfpose.keypoints import get_spec

# Official MPII evaluation: head size = 0.6 * head-box diagonal (evaluatePCKh.m, SC_BIAS).
HEAD_SIZE_FACTOR = 0.6
# MPII `scale` is the person height divided by 200 pixels.
SCALE_UNIT = 200.0
# The file's 1-based MATLAB pixel index p has its centre at p - 0.5 in continuous coordinates.
PIXEL_INDEX_OFFSET = 0.5

_REQUIRED = ("image", "joints", "joints_vis", "center", "scale")


def _numbers(value, shape, where: str, key: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {key} must hold numbers, got {value!r}") from None
    if arr.shape != shape:
        raise DatasetError(f"{where}: {key} has shape {list(arr.shape)}, expected {list(shape)}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{where}: {key} contains NaN or infinity")
    return arr


def _head_size(entry, joints: np.ndarray, spec, where: str) -> float:
    if "headbox" in entry:
        try:
            box = np.asarray(entry["headbox"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            box = np.zeros(0)
        if box.size != 4 or not np.isfinite(box).all():
            raise DatasetError(f"{where}: headbox must be [x1, y1, x2, y2], "
                               f"got {entry['headbox']!r}")
        return HEAD_SIZE_FACTOR * float(math.hypot(box[2] - box[0], box[3] - box[1]))
    if "upper_neck" not in spec.names or "head_top" not in spec.names:
        return float("nan")
    neck, top = joints[spec.names.index("upper_neck")], joints[spec.names.index("head_top")]
    if neck[2] <= 0 or top[2] <= 0:
        return float("nan")
    return float(math.hypot(top[0] - neck[0], top[1] - neck[1]))


def _given_image_id(entry, where: str):
    """The entry's ``image_id`` (a non-negative int) or None."""
    if "image_id" not in entry:
        return None
    value = entry["image_id"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"{where}: image_id must be a non-negative integer, got {value!r}")
    return value


def _image_ids(names: list, given: dict, path: str) -> dict:
    """file name -> image id (module docstring); DatasetError naming both files on a clash."""
    ids, owner = {}, {}
    for rank, name in enumerate(sorted(names), start=1):
        stem = os.path.splitext(os.path.basename(name))[0]
        if given.get(name) is not None:
            image_id = given[name]
        elif stem.isascii() and stem.isdigit():
            image_id = int(stem)
        else:
            image_id = rank
        if image_id in owner:
            raise DatasetError(f"{path}: duplicate image id {image_id} ('{name}' and "
                               f"'{owner[image_id]}')")
        ids[name], owner[image_id] = image_id, name
    return ids


def read_mpii(annotations_path: str, images_dir: str, spec="mpii") -> list:
    """Reads an MPII JSON file into ImageRecords (one per distinct ``image``).

    Args:
        annotations_path: str, the JSON list of person entries.
        images_dir: str, folder of the images.
        spec: KeypointSpec or name; K must equal the entries' joint count.

    Returns:
        list of ImageRecord sorted by file name; keypoints float32 [N, K, 3] in continuous
        coordinates (0.5 less than the file's 1-based values), boxes float32 [N, 4] (x, y, w, h),
        areas float32 [N], head_size float32 [N].

    Raises:
        DatasetError: naming the file and entry index for non-JSON input, missing keys, joint
            counts other than K, bad or conflicting image ids, duplicate image ids, an
            unreadable image, or an empty list.
    """
    spec = get_spec(spec)
    k = spec.num_keypoints
    path = str(annotations_path)
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: top level must be a list of person entries, got "
                           f"{type(data).__name__}")
    if not data:
        raise DatasetError(f"{path}: no entries (empty dataset)")
    people: dict = {}
    given: dict = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry [{i}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} must be an object, got {type(entry).__name__}")
        for key in _REQUIRED:
            if key not in entry:
                raise DatasetError(f"{where}: missing required key '{key}'")
        name = entry["image"]
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: image must be a non-empty file name, got {name!r}")
        image_id = _given_image_id(entry, where)
        if name in given and given[name] != image_id:
            raise DatasetError(f"{where} ('{name}'): image_id {image_id!r} differs from the "
                               f"image's earlier entries ({given[name]!r})")
        given[name] = image_id
        joints_in = np.asarray(entry["joints"], dtype=object)
        if joints_in.ndim != 2 or joints_in.shape[1] != 2 or joints_in.shape[0] != k:
            raise DatasetError(f"{where} ('{name}'): joints has shape {list(joints_in.shape)}, "
                               f"expected [{k}, 2] ({k} keypoints of spec '{spec.name}')")
        xy = _numbers(entry["joints"], (k, 2), where, "joints")
        vis = _numbers(entry["joints_vis"], (k,), where, "joints_vis")
        center = _numbers(entry["center"], (2,), where, "center") - PIXEL_INDEX_OFFSET
        scale = entry["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 \
                or not math.isfinite(scale):
            raise DatasetError(f"{where}: scale must be a positive number, got {scale!r}")
        labelled = (vis > 0) & (xy >= 0).all(axis=1)
        keypoints = np.zeros((k, 3), np.float32)
        keypoints[labelled, :2] = xy[labelled] - PIXEL_INDEX_OFFSET
        keypoints[:, 2] = labelled.astype(np.float32)
        side = float(scale) * SCALE_UNIT
        box = [center[0] - side / 2, center[1] - side / 2, side, side]
        image = people.setdefault(name, {"people": [], "ignore": []})
        if not labelled.any():  # no labelled joint: an ignore region, as in the COCO reader
            image["ignore"].append([[box[0], box[1], box[0] + side, box[1], box[0] + side,
                                     box[1] + side, box[0], box[1] + side]])
            continue
        head = _head_size(entry, keypoints, spec, where)
        image["people"].append((keypoints, box, side * side, head))

    ids = _image_ids(list(people), given, path)
    records = []
    for name in sorted(people):
        file_path = image_path(str(images_dir), name)
        height, width = image_size(file_path)
        entries = people[name]["people"]
        records.append(ImageRecord(
            image_id=ids[name], path=file_path, height=height, width=width,
            keypoints=np.asarray([e[0] for e in entries], np.float32).reshape(-1, k, 3),
            boxes=np.asarray([e[1] for e in entries], np.float32).reshape(-1, 4),
            areas=np.asarray([e[2] for e in entries], np.float32).reshape(-1),
            head_size=np.asarray([e[3] for e in entries], np.float32).reshape(-1),
            ignore_regions=people[name]["ignore"],
        ))
    return records
