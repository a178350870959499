"""COCO keypoint evaluation (pycocotools ``COCOeval``, iouType ``keypoints``) for any keypoint spec.

Ground truth is read from the annotation file into memory and completed on that copy where
pycocotools needs a field the file lacks (``area`` from the box, ``iscrowd`` 0, ``num_keypoints``
from the visibilities, a ``person`` category); the file itself is never written. OKS uses
``spec.sigmas``, so 14-keypoint CrowdPose or custom skeletons evaluate the same way.

Results are the COCO keypoint results format::

    [{"image_id": int, "category_id": 1, "keypoints": [x1, y1, s1, ..., xK, yK, sK],
      "score": float}]
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from tfpose.evaluation import EvaluationError
from tfpose.fileio import atomic_write
from tfpose.keypoints import get_spec

PERSON_CATEGORY = 1

# pycocotools COCOeval.stats order for iouType 'keypoints' (cocoeval.py, _summarizeKps).
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def quiet(verbose: bool):
    """Silences pycocotools' prints unless verbose."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


# --- ground truth ---------------------------------------------------------------------------


def read_json(path: str, what: str):
    """Loads a JSON file; a missing, unreadable or malformed file is an EvaluationError."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvaluationError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{what} {path} is not valid JSON ({e})") from None
    except OSError as e:
        raise EvaluationError(f"{what} {path} cannot be read ({e.strerror})") from None


def load_ground_truth(ann_file, spec, area_fn: Optional[Callable[[dict], float]] = None) -> dict:
    """Reads a COCO-format keypoint annotation file into a dataset dict ready for pycocotools.

    Args:
        ann_file: path of the JSON file (never modified).
        spec: KeypointSpec or built-in name; every person annotation must have 3 * K values.
        area_fn: optional callable(annotation) -> OKS area, overriding the file's ``area``
            (CrowdPose uses 0.53 * box area). Without it, a missing ``area`` is the box area.

    Returns:
        dict with ``images``, ``annotations``, ``categories`` (a completed copy).
    """
    spec = get_spec(spec)
    path = os.fspath(ann_file)
    data = read_json(path, "annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise EvaluationError(f"annotation file {path}: needs 'images' and 'annotations' lists")
    k = spec.num_keypoints
    images = []
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise EvaluationError(f"annotation file {path}: an image entry has no 'id'")
        images.append(dict(img))
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise EvaluationError(f"annotation file {path}: annotation #{i} is not an object")
        ann = dict(ann)
        ann_id = ann.get("id", f"#{i}")
        if ann.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
            annotations.append(ann)  # other categories are not evaluated
            continue
        ann.setdefault("category_id", PERSON_CATEGORY)
        kpts = ann.get("keypoints")
        if not isinstance(kpts, list) or len(kpts) != 3 * k:
            n = len(kpts) if isinstance(kpts, list) else 0
            raise EvaluationError(f"annotation file {path}: annotation {ann_id} has {n} keypoint "
                                  f"values, spec '{spec.name}' needs {3 * k} ({k} x 3)")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise EvaluationError(f"annotation file {path}: annotation {ann_id} has no 'bbox' "
                                  f"[x, y, w, h]")
        if "id" not in ann:
            raise EvaluationError(f"annotation file {path}: annotation #{i} has no 'id'")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("num_keypoints", int(sum(1 for v in kpts[2::3] if v > 0)))
        if area_fn is not None:
            ann["area"] = float(area_fn(ann))
        elif "area" not in ann:
            ann["area"] = float(bbox[2]) * float(bbox[3])
        annotations.append(ann)
    categories = [dict(c) for c in data.get("categories") or []]
    if not any(c.get("id") == PERSON_CATEGORY for c in categories):
        categories.append({"id": PERSON_CATEGORY, "name": "person", "supercategory": "person"})
    return {"images": images, "annotations": annotations, "categories": categories}


def build_coco(dataset: dict, verbose: bool = False):
    """A pycocotools COCO object built in memory from a dataset dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with quiet(verbose):
        coco.createIndex()
    return coco


# --- results --------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _normalise_result(entry, where: str, index: int, k: Optional[int] = None) -> dict:
    """One result dict -> plain JSON types; `k` (keypoints per person) is checked when given."""
    if not isinstance(entry, Mapping):
        raise EvaluationError(f"{where}: result #{index} is not an object")
    image_id = entry.get("image_id")
    if not _is_int(image_id):
        raise EvaluationError(f"{where}: result #{index} has image_id {image_id!r}, not an int")
    image_id = int(image_id)
    try:
        kpts = np.asarray(entry["keypoints"], dtype=np.float64).reshape(-1)
        score = float(entry["score"])
    except KeyError as e:
        raise EvaluationError(f"{where}: result #{index} (image_id {image_id}) has no "
                              f"{e.args[0]!r}") from None
    except (TypeError, ValueError):
        raise EvaluationError(f"{where}: result #{index} (image_id {image_id}) has non-numeric "
                              f"keypoints or score") from None
    if kpts.size % 3 or (k is not None and kpts.size != 3 * k):
        need = f"{3 * k} ({k} x 3)" if k is not None else "a multiple of 3"
        raise EvaluationError(f"{where}: result #{index} (image_id {image_id}) has {kpts.size} "
                              f"keypoint values, needs {need}")
    if not (np.all(np.isfinite(kpts)) and math.isfinite(score)):
        raise EvaluationError(f"{where}: result #{index} (image_id {image_id}) has a non-finite "
                              f"keypoint or score")
    category = entry.get("category_id", PERSON_CATEGORY)
    if category != PERSON_CATEGORY:
        raise EvaluationError(f"{where}: result #{index} (image_id {image_id}) has category_id "
                              f"{category!r}, keypoint results use {PERSON_CATEGORY} (person)")
    return {"image_id": image_id, "category_id": PERSON_CATEGORY,
            "keypoints": [float(v) for v in kpts], "score": score}


def read_coco_results(path) -> list:
    """Reads a COCO keypoint results JSON file (a list of result dicts)."""
    path = os.fspath(path)
    data = read_json(path, "results file")
    if not isinstance(data, list):
        raise EvaluationError(f"results file {path}: expected a JSON list of results, got "
                              f"{type(data).__name__}")
    return data


def load_results(results, spec, image_ids: Iterable[int], ann_file: str) -> list:
    """Validated, normalised results (copies) for the ground truth's images.

    Args:
        results: list of result dicts, or the path of a results JSON file.
        spec: KeypointSpec or name: each result needs 3 * K keypoint values.
        image_ids: the ground truth's image ids; any other image id is an error.
        ann_file: the annotation file, named in errors.
    """
    spec = get_spec(spec)
    if isinstance(results, (str, os.PathLike)):
        where = f"results file {os.fspath(results)}"
        results = read_coco_results(results)
    else:
        where = "results"
        if isinstance(results, Mapping) or not isinstance(results, Iterable):
            raise EvaluationError(f"results must be a list of dicts or a file path, got "
                                  f"{type(results).__name__}")
    known = set(image_ids)
    out = []
    for i, entry in enumerate(results):
        res = _normalise_result(entry, where, i, spec.num_keypoints)
        if res["image_id"] not in known:
            raise EvaluationError(f"{where}: image_id {res['image_id']} is not in {ann_file}")
        out.append(res)
    return out


def write_coco_results(poses: Iterable[Mapping], path) -> str:
    """Writes COCO keypoint results atomically (temporary file in the same folder + os.replace).

    Args:
        poses: iterable of dicts with ``image_id`` (int), ``keypoints`` ([K, 3] or flat [K * 3],
            (x, y, score) in original image pixels), ``score`` (float) and optionally
            ``category_id`` (must be 1).
        path: destination file; its folder is created. An existing file is replaced whole, or
            left as it was when anything fails.

    Returns:
        str, the path written.
    """
    path = os.fspath(path)
    results, k = [], None
    for i, entry in enumerate(poses):
        res = _normalise_result(entry, "write_coco_results", i, k)
        k = len(res["keypoints"]) // 3
        results.append(res)
    return atomic_write(path, json.dumps(results, allow_nan=False).encode("utf-8"))


# --- evaluation -----------------------------------------------------------------------------


def check_image_ids(image_ids: Optional[Sequence[int]], gt_dataset: dict, ann_file: str) -> list:
    """The image ids to evaluate: all of the ground truth's, or the given ones (checked)."""
    all_ids = [img["id"] for img in gt_dataset["images"]]
    if image_ids is None:
        return sorted(all_ids)
    ids = [int(i) for i in image_ids]
    if not ids:
        raise EvaluationError(f"image_ids is empty (annotation file {ann_file})")
    known = set(all_ids)
    for i in ids:
        if i not in known:
            raise EvaluationError(f"image_id {i} is not in {ann_file}")
    return sorted(set(ids))


def make_cocoeval(gt_coco, results: list, sigmas, image_ids: list, verbose: bool = False):
    """A keypoint COCOeval over `image_ids` with the given sigmas (not yet evaluated).

    An empty result list gives an empty detection set (pycocotools' ``loadRes`` cannot).
    """
    from pycocotools.cocoeval import COCOeval

    with quiet(verbose):
        if results:
            dt_coco = gt_coco.loadRes(results)
        else:
            dt_coco = build_coco({"images": list(gt_coco.dataset["images"]), "annotations": [],
                                  "categories": list(gt_coco.dataset["categories"])}, verbose)
        coco_eval = COCOeval(gt_coco, dt_coco, iouType="keypoints")
    coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    coco_eval.params.imgIds = list(image_ids)
    coco_eval.params.catIds = [PERSON_CATEGORY]
    return coco_eval


def evaluate_coco(ann_file, results, spec="coco", image_ids: Optional[Sequence[int]] = None,
                  verbose: bool = False) -> dict:
    """COCO keypoint AP/AR with pycocotools (OKS with ``spec.sigmas``, maxDets 20).

    Args:
        ann_file: COCO-format keypoint annotation file.
        results: list of COCO result dicts, or the path of a results JSON file.
        spec: KeypointSpec or built-in name (K and OKS sigmas).
        image_ids: optional subset of the file's image ids to evaluate (default: all).
        verbose: let pycocotools print its progress and summary.

    Returns:
        dict with AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl (-1 where no ground truth).
    """
    spec = get_spec(spec)
    ann_file = os.fspath(ann_file)
    gt = load_ground_truth(ann_file, spec)
    ids = check_image_ids(image_ids, gt, ann_file)
    res = load_results(results, spec, (img["id"] for img in gt["images"]), ann_file)
    coco_eval = make_cocoeval(build_coco(gt, verbose), res, spec.sigmas, ids, verbose)
    with quiet(verbose):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(v) for name, v in zip(COCO_METRIC_NAMES, coco_eval.stats)}
