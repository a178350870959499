"""Evaluation metrics: COCO keypoint AP/AR, CrowdPose AP (easy/medium/hard), MPII PCKh and mAP.

    evaluate("coco", "person_keypoints_val2017.json", results, "coco")
    evaluate("crowdpose", cfg.data.val, "results.json", cfg.spec)
    evaluate("mpii", cfg.data.val, results, "mpii")               # PCKh@0.5 + multi-person mAP

Predictions are given in the COCO keypoint results format (a list of
``{"image_id", "category_id": 1, "keypoints": [x, y, score] * K, "score"}`` or the path of a JSON
file holding one), in original image pixels. Every function returns a flat ``dict`` of floats
(fractions in [0, 1]; -1 where a metric has no ground truth, pycocotools' convention), which
:func:`tfpose.evaluation.report.format_table` prints.

Modules: :mod:`.oks` (numpy OKS), :mod:`.coco`, :mod:`.crowdpose`, :mod:`.mpii`, :mod:`.report`.
"""

from __future__ import annotations

import os

METRICS = ("coco", "crowdpose", "mpii")


class EvaluationError(ValueError):
    """Evaluation input that cannot be used; the one-line message names the file or value."""


def _annotation_path(annotations) -> str:
    """A path, or the ``annotations`` field of a split config (tfpose.config.SplitConfig)."""
    path = getattr(annotations, "annotations", annotations)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise EvaluationError(f"evaluation needs an annotation file path, got {path!r}")
    return os.fspath(path)


def _images_dir(annotations, ann_file: str) -> str:
    """The split's ``images`` folder; empty (or a plain path given) means the annotation file's
    folder, as in tfpose.data.readers.read_split."""
    images = getattr(annotations, "images", "")
    return os.fspath(images) if images else os.path.dirname(ann_file) or "."


def evaluate(metric: str, annotations, results, spec=None, **kwargs) -> dict:
    """Computes one dataset's metrics.

    Args:
        metric: str, ``coco``, ``crowdpose`` or ``mpii``.
        annotations: the ground-truth file path, or a split config with an ``annotations`` path
            (and for ``mpii`` an ``images`` folder, read by tfpose.data.mpii.read_mpii).
        results: COCO-format keypoint results: a list of dicts or the path of a JSON file.
        spec: KeypointSpec or built-in spec name; defaults to the metric's dataset spec.
        **kwargs: passed on to :func:`.coco.evaluate_coco`, :func:`.crowdpose.evaluate_crowdpose`
            or :func:`.mpii.evaluate_mpii` (e.g. ``image_ids``, ``verbose``).

    Returns:
        dict name -> float.
    """
    if metric not in METRICS:
        raise EvaluationError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")
    ann_file = _annotation_path(annotations)
    split_format = None if isinstance(annotations, (str, os.PathLike)) else \
        getattr(annotations, "format", None)
    wanted = "mpii" if metric == "mpii" else "coco"
    if split_format is not None and split_format != wanted:
        raise EvaluationError(f"{ann_file}: metric '{metric}' needs a {wanted}-format annotation "
                              f"file, the split says format '{split_format}'")
    if metric == "coco":
        from tfpose.evaluation.coco import evaluate_coco

        return evaluate_coco(ann_file, results, spec if spec is not None else "coco", **kwargs)
    if metric == "crowdpose":
        from tfpose.evaluation.crowdpose import evaluate_crowdpose

        return evaluate_crowdpose(ann_file, results, spec if spec is not None else "crowdpose",
                                  **kwargs)
    from tfpose.evaluation.mpii import evaluate_mpii

    return evaluate_mpii(ann_file, _images_dir(annotations, ann_file), results,
                         spec if spec is not None else "mpii", **kwargs)
