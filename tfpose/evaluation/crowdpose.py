"""CrowdPose keypoint evaluation on top of pycocotools' COCOeval.

The CrowdPose toolkit (github.com/Jeff-sjtu/CrowdPose, ``crowdpose-api/PythonAPI/crowdposetools/
cocoeval.py``) is COCOeval with these differences, all reproduced here (its wheels do not build
against NumPy 2, so it is not a dependency):

* OKS sigmas of its 14 keypoints (``keypoints.py``, spec ``crowdpose``);
* the OKS scale is ``0.53 * w * h`` of the ground-truth box (``tmparea`` in ``computeOks`` and
  ``evaluateImg``), whatever the file's ``area`` says;
* every person is evaluated whatever its size: one area range, "all" (summarize reports no
  medium/large), maxDets 20;
* AP easy / medium / hard: AP over the images whose ``crowdIndex`` is ``< t1``, in
  ``[t1, t2)``, and ``>= t2`` (``split``/``get_type_result``). The toolkit's ``summarize`` calls
  ``get_type_result(first=0.2, second=0.8)``; :data:`CROWD_INDEX_SPLIT` holds those values.
  An empty level reports -1, as the toolkit does.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from tfpose.evaluation import EvaluationError
from tfpose.evaluation.coco import (build_coco, check_image_ids, load_ground_truth, load_results,
                                    make_cocoeval, quiet)
from tfpose.keypoints import get_spec

# crowdposetools/cocoeval.py: COCOeval.summarize -> get_type_result(first=0.2, second=0.8).
CROWD_INDEX_SPLIT = (0.2, 0.8)
# crowdposetools/cocoeval.py: computeOks / evaluateImg use tmparea = w * h * 0.53.
BOX_AREA_FACTOR = 0.53
MAX_DETS = 20
CROWDPOSE_METRIC_NAMES = ("AP", "AP50", "AP75", "AR", "AR50", "AR75",
                          "AP_easy", "AP_medium", "AP_hard")


def crowd_levels(images: Sequence[dict], split: Sequence[float] = CROWD_INDEX_SPLIT,
                 where: str = "annotation file") -> dict:
    """Image ids per crowding level.

    Args:
        images: the annotation file's image entries (each with ``id`` and ``crowdIndex``).
        split: (t1, t2): easy is crowdIndex < t1, medium t1 <= crowdIndex < t2, hard >= t2.
        where: names the file in errors.

    Returns:
        dict ``easy`` / ``medium`` / ``hard`` -> sorted list of image ids.
    """
    t1, t2 = (float(t) for t in split)
    if not t1 <= t2:
        raise EvaluationError(f"crowd index split must be increasing, got {list(split)}")
    levels = {"easy": [], "medium": [], "hard": []}
    for img in images:
        ci = img.get("crowdIndex")
        if ci is None:
            raise EvaluationError(f"{where}: image {img.get('id')} has no 'crowdIndex'")
        level = "easy" if ci < t1 else "medium" if ci < t2 else "hard"
        levels[level].append(img["id"])
    return {k: sorted(v) for k, v in levels.items()}


def _mean_precision(coco_eval) -> float:
    """AP of an accumulated COCOeval over all its settings; -1 when nothing was evaluated."""
    precision = coco_eval.eval["precision"]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def evaluate_crowdpose(ann_file, results, spec="crowdpose",
                       image_ids: Optional[Sequence[int]] = None,
                       split: Sequence[float] = CROWD_INDEX_SPLIT, verbose: bool = False) -> dict:
    """CrowdPose AP/AR and AP easy/medium/hard.

    Args:
        ann_file: CrowdPose JSON (COCO-like, ``crowdIndex`` per image; ``area`` not needed).
        results: list of COCO result dicts, or the path of a results JSON file.
        spec: KeypointSpec or name (K and sigmas), ``crowdpose`` by default.
        image_ids: optional subset of image ids (default: all); the levels are split within it.
        split: crowdIndex thresholds (t1, t2) of the easy/medium/hard levels.
        verbose: let pycocotools print.

    Returns:
        dict with AP, AP50, AP75, AR, AR50, AR75, AP_easy, AP_medium, AP_hard.
    """
    spec = get_spec(spec)
    ann_file = os.fspath(ann_file)
    gt = load_ground_truth(
        ann_file, spec, area_fn=lambda a: BOX_AREA_FACTOR * float(a["bbox"][2]) * a["bbox"][3])
    ids = check_image_ids(image_ids, gt, ann_file)
    selected = set(ids)
    levels = crowd_levels([img for img in gt["images"] if img["id"] in selected], split,
                          f"annotation file {ann_file}")
    res = load_results(results, spec, (img["id"] for img in gt["images"]), ann_file)
    coco_eval = make_cocoeval(build_coco(gt, verbose), res, spec.sigmas, ids, verbose)
    params = coco_eval.params
    params.areaRng, params.areaRngLbl, params.maxDets = [[0.0, 1e10]], ["all"], [MAX_DETS]
    with quiet(verbose):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = coco_eval.stats  # _summarizeKps order: AP AP50 AP75 APm APl AR AR50 AR75 ARm ARl
    out = {"AP": stats[0], "AP50": stats[1], "AP75": stats[2],
           "AR": stats[5], "AR50": stats[6], "AR75": stats[7]}
    for level, level_ids in levels.items():
        if not level_ids:
            out[f"AP_{level}"] = -1.0
            continue
        params.imgIds = level_ids
        with quiet(verbose):
            coco_eval.evaluate()
            coco_eval.accumulate()
        out[f"AP_{level}"] = _mean_precision(coco_eval)
    return {name: float(out[name]) for name in CROWDPOSE_METRIC_NAMES}
