"""MPII metrics: PCKh (single-person style) and the multi-person mAP protocol, in numpy.

PCKh@t (Andriluka et al. CVPR'14): a predicted joint is correct when its distance to the
ground truth is at most ``t * head_size``; ``head_size = 0.6 * |head box diagonal|``
(``SC_BIAS = 0.6`` in the MPII toolkit's ``util_get_head_size.m``). Only annotated ground-truth
joints count. The reported "Mean" pools all joints but pelvis and thorax, and the per-group
columns average left and right (HRNet / MMPose ``MpiiDataset`` evaluation).

Multi-person mAP (Pishchulin et al. DeepCut CVPR'16, Insafutdinov et al. DeeperCut ECCV'16;
toolkit ``evalMPII``: ``evaluateAP.m``, ``assignGTmulti.m``, ``getRPC.m``, ``VOCap``):

1. In each image, ``dist[p, g, j] = |pred_pj - gt_gj| / head_size_g`` where both the predicted
   and the ground-truth joint exist, else infinite; ``match = dist <= t`` (t = 0.5).
2. ``pck[p, g]`` = matched joints / annotated joints of g. Each prediction keeps only its best
   ground truth (first maximum); each ground truth then takes the prediction with the highest
   remaining pck (first maximum), none when that pck is 0.
3. Every predicted joint is a detection with its own score: a true positive when its prediction
   is assigned to a ground truth and the joint matches that ground truth, else a false
   positive. The positives of joint j are all annotated ground-truth joints j.
4. Per joint over the whole dataset: sort detections by score (descending, stable), precision
   and recall, AP = area under the monotone precision envelope (PASCAL VOC ``VOCap``).
   mAP = mean of the per-joint APs (MPII: the 14 joints without pelvis and thorax; the "Head"
   column averages upper neck and head top, as in ``genTableAP``).

The ground truth of :func:`evaluate_mpii` is :func:`tfpose.data.mpii.read_mpii`'s records (the
one MPII parser: image ids, coordinates, head sizes). The official benchmark scores only the
annotated multi-person groups of each test image; here every person of the annotation file with
a labelled joint and a head size is scored. Values are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np

from tfpose.data.mpii import read_mpii
from tfpose.evaluation import EvaluationError
from tfpose.evaluation.coco import load_results
from tfpose.keypoints import KeypointSpec, get_spec

logger = logging.getLogger(__name__)

PCKH_THRESHOLD = 0.5

# MPII joints left out of the mean (MMPose/HRNet PCKh "Mean"; the toolkit's 14 AP joints).
_MPII_UNSCORED = ("pelvis", "thorax")
_LIMBS = ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
# Column tables of the MPII spec: PCKh (MMPose / HRNet) and multi-person AP (genTableAP.m).
_MPII_PCKH_TABLE = (("Head", ("head_top",)),) + tuple(
    (limb.title(), (f"left_{limb}", f"right_{limb}")) for limb in _LIMBS)
_MPII_AP_TABLE = (("Head", ("upper_neck", "head_top")),) + _MPII_PCKH_TABLE[1:]


def _is_mpii(spec: KeypointSpec) -> bool:
    return set(get_spec("mpii").names) <= set(spec.names)


def _tables(spec: KeypointSpec):
    """(PCKh columns, AP columns, joints of the mean) as name tuples for a spec."""
    if _is_mpii(spec):
        scored = tuple(n for n in spec.names if n not in _MPII_UNSCORED)
        return _MPII_PCKH_TABLE, _MPII_AP_TABLE, scored
    groups: dict = {}
    for name in spec.names:
        base = name.removeprefix("left_").removeprefix("right_")
        groups.setdefault(base.replace("_", " ").title().replace(" ", ""), []).append(name)
    table = tuple((k, tuple(v)) for k, v in groups.items())
    return table, table, tuple(spec.names)


def _columns(values: np.ndarray, spec: KeypointSpec, table) -> dict:
    index = {n: i for i, n in enumerate(spec.names)}
    out = {}
    for column, names in table:
        v = values[[index[n] for n in names]]
        out[column] = float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else -1.0
    return out


# --- PCKh -----------------------------------------------------------------------------------


def pckh_per_joint(pred, gt, head_sizes, threshold: float = PCKH_THRESHOLD, visible=None):
    """Per-joint PCKh of predictions aligned one-to-one with ground-truth persons.

    Args:
        pred: float [N, K, 2+]: predicted (x, y, ...) of the person of each ground truth;
            non-finite coordinates count as missed joints.
        gt: float [N, K, 2] or [N, K, 3] (x, y[, v]).
        head_sizes: float [N] (ImageRecord.head_size of tfpose.data.mpii).
        threshold: float, the fraction of the head size (0.5 for PCKh@0.5).
        visible: optional bool [N, K], the annotated joints; default v > 0 (all with 2 channels).

    Returns:
        (pckh float64 [K] (NaN where no joint is annotated), counts int [K] annotated joints).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    head_sizes = np.asarray(head_sizes, dtype=np.float64).reshape(-1)
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[:2] != gt.shape[:2] or pred.shape[2] < 2:
        raise ValueError(f"pred [N, K, 2+] and gt [N, K, 2|3] must be aligned, got {pred.shape} "
                         f"and {gt.shape}")
    if head_sizes.shape[0] != gt.shape[0]:
        raise ValueError(f"head_sizes must be [{gt.shape[0]}], got {head_sizes.shape}")
    if visible is None:
        visible = gt[..., 2] > 0 if gt.shape[2] > 2 else np.ones(gt.shape[:2], bool)
    visible = np.asarray(visible, dtype=bool)
    if np.any(~(head_sizes[visible.any(axis=1)] > 0)):
        raise ValueError("head sizes of annotated persons must be positive")
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1) / head_sizes[:, None]
        correct = (dist <= threshold) & visible  # NaN distances compare False
        counts = visible.sum(axis=0)
        pckh = np.where(counts > 0, correct.sum(axis=0) / np.maximum(counts, 1), np.nan)
    return pckh, counts


def evaluate_pckh(pred, gt, head_sizes, spec="mpii", threshold: float = PCKH_THRESHOLD,
                  visible=None) -> dict:
    """PCKh table: one column per joint group and the pooled mean.

    Args:
        pred, gt, head_sizes, threshold, visible: as :func:`pckh_per_joint`.
        spec: KeypointSpec or name. For MPII the columns are Head (head top), Shoulder, Elbow,
            Wrist, Hip, Knee, Ankle and Mean pools all joints but pelvis and thorax; other
            specs get one column per left/right pair and Mean over all joints.

    Returns:
        dict column -> float (-1 where no joint is annotated).
    """
    spec = get_spec(spec)
    pckh, counts = pckh_per_joint(pred, gt, head_sizes, threshold, visible)
    if pckh.shape[0] != spec.num_keypoints:
        raise ValueError(f"{pckh.shape[0]} joints given, spec '{spec.name}' has "
                         f"{spec.num_keypoints}")
    table, _, scored = _tables(spec)
    out = _columns(pckh, spec, table)
    idx = [spec.names.index(n) for n in scored]
    total = counts[idx].sum()
    correct = np.nan_to_num(pckh[idx] * counts[idx]).sum()
    out["Mean"] = float(correct / total) if total else -1.0
    return out


# --- multi-person mAP -----------------------------------------------------------------------


def assign_predictions(gt, head_sizes, pred, threshold: float = PCKH_THRESHOLD):
    """Assigns the predicted persons of one image to its ground-truth persons (``assignGTmulti``).

    Args:
        gt: float [G, K, 3] (x, y, v); v > 0 marks annotated joints.
        head_sizes: float [G].
        pred: float [P, K, 2+] (x, y, ...); non-finite coordinates mark joints not predicted.
        threshold: float, PCKh threshold.

    Returns:
        (match bool [P, G, K]: joint within threshold, pred_for_gt int [G]: the assigned
        prediction or -1).
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    head_sizes = np.asarray(head_sizes, dtype=np.float64).reshape(-1)
    n_pred, n_gt = pred.shape[0], gt.shape[0]
    if n_pred == 0 or n_gt == 0:
        return np.zeros((n_pred, n_gt, gt.shape[1]), bool), np.full(n_gt, -1, np.int64)
    has_gt = gt[..., 2] > 0  # [G, K]
    if np.any(~(head_sizes[has_gt.any(axis=1)] > 0)):
        raise ValueError("head sizes of annotated persons must be positive")
    has_pred = np.all(np.isfinite(pred[..., :2]), axis=-1)  # [P, K]
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.linalg.norm(pred[:, None, :, :2] - gt[None, :, :, :2], axis=-1)
        dist = dist / head_sizes[None, :, None]
    match = has_pred[:, None] & has_gt[None] & (dist <= threshold)  # [P, G, K]
    n_annotated = has_gt.sum(axis=-1)  # [G]
    pck = np.where(n_annotated > 0, match.sum(-1) / np.maximum(n_annotated, 1), 0.0)  # [P, G]
    best_gt = np.argmax(pck, axis=1)  # each prediction keeps its best ground truth only
    kept = np.zeros_like(pck)
    kept[np.arange(n_pred), best_gt] = pck[np.arange(n_pred), best_gt]
    pred_for_gt = np.argmax(kept, axis=0)
    pred_for_gt[kept.max(axis=0) == 0] = -1
    return match, pred_for_gt


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (PASCAL VOC 2010+ ``VOCap``)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def multi_person_ap(gt: Sequence, head_sizes: Sequence, pred: Sequence,
                    threshold: float = PCKH_THRESHOLD) -> np.ndarray:
    """Per-joint AP of the MPII multi-person protocol over a dataset.

    Args:
        gt: per image, float [G_i, K, 3] ground truth (x, y, v), v > 0 annotated.
        head_sizes: per image, float [G_i].
        pred: per image, float [P_i, K, 3] predictions (x, y, joint score); non-finite (x, y)
            marks a joint that is not predicted.
        threshold: float, PCKh threshold.

    Returns:
        float64 [K]: AP per joint, NaN for joints never annotated.
    """
    if not len(gt) == len(head_sizes) == len(pred):
        raise ValueError(f"gt, head_sizes and pred need one entry per image, got {len(gt)}, "
                         f"{len(head_sizes)} and {len(pred)}")
    gt = [np.asarray(g, dtype=np.float64) for g in gt]
    pred = [np.asarray(p, dtype=np.float64) for p in pred]
    ks = {a.shape[1] for a in gt + pred if a.ndim == 3}
    if len(ks) != 1:
        raise ValueError(f"gt [G, K, 3] and pred [P, K, 3] need one K, got K in {sorted(ks)}")
    k = ks.pop()
    positives = np.zeros(k, np.int64)
    joint, score, label = [], [], []
    for g, h, p in zip(gt, head_sizes, pred):
        g = g.reshape(-1, k, 3)
        p = p.reshape(-1, k, 3)
        match, pred_for_gt = assign_predictions(g, h, p, threshold)
        positives += (g[..., 2] > 0).sum(axis=0)
        has_pred = np.all(np.isfinite(p[..., :2]), axis=-1)
        for i in range(p.shape[0]):
            assigned = np.nonzero(pred_for_gt == i)[0]
            hit = match[i, assigned[0]] if assigned.size else np.zeros(k, bool)
            for j in np.nonzero(has_pred[i])[0]:
                joint.append(j)
                score.append(p[i, j, 2])
                label.append(bool(hit[j]))
    ap = np.full(k, np.nan)
    joint = np.asarray(joint, np.int64)
    score = np.asarray(score, np.float64)
    label = np.asarray(label, bool)
    for j in range(k):
        if positives[j] == 0:
            continue
        sel = joint == j
        order = np.argsort(-score[sel], kind="stable")
        tp = np.cumsum(label[sel][order])
        precision = tp / np.arange(1, tp.size + 1)
        ap[j] = voc_ap(tp / positives[j], precision)
    return ap


def evaluate_mpii_map(gt: Sequence, head_sizes: Sequence, pred: Sequence, spec="mpii",
                      threshold: float = PCKH_THRESHOLD) -> dict:
    """Multi-person AP table: per joint group AP and mAP (see :func:`multi_person_ap`).

    Returns:
        dict: for MPII Head (upper neck + head top), Shoulder, Elbow, Wrist, Hip, Knee, Ankle and
        mAP over the 14 joints without pelvis and thorax; other specs one column per left/right
        pair and mAP over all annotated joints.
    """
    spec = get_spec(spec)
    ap = multi_person_ap(gt, head_sizes, pred, threshold)
    if ap.shape[0] != spec.num_keypoints:
        raise ValueError(f"{ap.shape[0]} joints given, spec '{spec.name}' has "
                         f"{spec.num_keypoints}")
    _, table, scored = _tables(spec)
    out = _columns(ap, spec, table)
    v = ap[[spec.names.index(n) for n in scored]]
    out["mAP"] = float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else -1.0
    return out


# --- file level -----------------------------------------------------------------------------


def _ground_truth(records: list, spec: KeypointSpec, ann_file: str) -> dict:
    """image_id -> (gt float64 [G, K, 3], head sizes float64 [G]); persons without a positive
    head size are dropped with one counted warning."""
    out, skipped, total = {}, 0, 0
    for r in records:
        sizes = np.asarray(r.head_size, np.float64)
        keep = sizes > 0  # NaN compares False
        skipped += int((~keep).sum())
        total += keep.size
        keypoints = np.asarray(r.keypoints, np.float64).reshape(-1, spec.num_keypoints, 3)
        out[r.image_id] = (keypoints[keep], sizes[keep])
    if skipped:
        logger.warning("%s: skipped %d of %d persons without a head size (no headbox and "
                       "upper_neck or head_top unlabelled)", ann_file, skipped, total)
    return out


def evaluate_mpii(annotations, images_dir, results, spec="mpii",
                  threshold: float = PCKH_THRESHOLD,
                  image_ids: Optional[Sequence[int]] = None) -> dict:
    """MPII multi-person AP table and PCKh of COCO-format results against an MPII JSON file.

    The ground truth is :func:`tfpose.data.mpii.read_mpii`'s records: its image ids, continuous
    coordinates and head sizes (0.6 * head-box diagonal, else the upper_neck <-> head_top
    fallback). A person whose head size is NaN (no head box and a fallback joint unlabelled) or
    zero cannot be scored: it is left out of the ground truth with one warning counting such
    persons, so a prediction of it counts as a false positive in the AP.

    Args:
        annotations: MPII JSON file.
        images_dir: folder of its images (read_mpii reads their sizes).
        results: COCO keypoint results (list of dicts or file path); each result is one
            predicted person whose keypoint triples are (x, y, joint score) in the same
            continuous coordinates.
        spec: KeypointSpec or name.
        threshold: PCKh threshold.
        image_ids: optional subset of image ids (default: all).

    Returns:
        dict: the AP columns and mAP of :func:`evaluate_mpii_map`, and ``PCKh``: the pooled
        PCKh mean of the prediction assigned to each ground-truth person (missed persons count
        as wrong).
    """
    spec = get_spec(spec)
    ann_file = os.fspath(annotations)
    gt = _ground_truth(read_mpii(ann_file, os.fspath(images_dir), spec), spec, ann_file)
    if image_ids is None:
        ids = list(gt)
    else:
        ids = [int(i) for i in image_ids]
        for i in ids:
            if i not in gt:
                raise EvaluationError(f"image_id {i} is not in {ann_file}")
    res = load_results(results, spec, gt.keys(), ann_file)
    k = spec.num_keypoints
    preds = {i: [] for i in ids}
    for r in res:
        if r["image_id"] in preds:
            preds[r["image_id"]].append(np.asarray(r["keypoints"]).reshape(k, 3))
    gts = [gt[i][0] for i in ids]
    sizes = [gt[i][1] for i in ids]
    pred_arrays = [np.stack(preds[i]) if preds[i] else np.zeros((0, k, 3)) for i in ids]
    out = evaluate_mpii_map(gts, sizes, pred_arrays, spec, threshold)
    aligned = []
    for g, h, p in zip(gts, sizes, pred_arrays):
        _, pred_for_gt = assign_predictions(g, h, p, threshold)
        a = np.full((g.shape[0], k, 2), np.nan)
        a[pred_for_gt >= 0] = p[pred_for_gt[pred_for_gt >= 0], :, :2]
        aligned.append(a)
    out["PCKh"] = evaluate_pckh(np.concatenate(aligned), np.concatenate(gts),
                                np.concatenate(sizes), spec, threshold)["Mean"]
    return out
