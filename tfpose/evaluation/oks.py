"""Object Keypoint Similarity (OKS) in numpy, exactly as COCO defines it.

    OKS(p, g) = sum_i exp(-d_i^2 / (2 s^2 k_i^2)) [v_i > 0] / sum_i [v_i > 0],  k_i = 2 sigma_i

with d_i the distance between predicted and ground-truth keypoint i, s^2 the object area and
v_i the ground-truth visibility (cocoapi ``COCOeval.computeOks``; the area gets ``np.spacing(1)``
added as there). A ground truth with no labelled keypoint (v = 0 everywhere) is scored the COCO
way when its box is given: d_i is the distance from the predicted keypoint to the box enlarged
to [x - w, x + 2w] x [y - h, y + 2h] (0 inside it), averaged over all K keypoints.

The TF version for graph code (NMS in codecs) is :func:`tfpose.postprocess.oks.oks_tf`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# cocoapi adds np.spacing(1) to the area so that a zero area does not divide by zero.
AREA_EPS = float(np.spacing(1))


def oks(pred, gt, areas, sigmas, boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """OKS between every prediction and every ground-truth person.

    Args:
        pred: float [P, K, 2] or [P, K, 3]: predicted (x, y[, score]); the score is not used.
        gt: float [G, K, 3]: ground-truth (x, y, v); keypoints with v > 0 are labelled.
        areas: float [G]: object areas s^2 (COCO segment area).
        sigmas: float [K]: per-keypoint OKS sigmas (``KeypointSpec.sigmas``).
        boxes: optional float [G, 4]: ground-truth (x, y, w, h) boxes, used only for ground
            truths without a labelled keypoint. Without boxes such ground truths get OKS 0.

    Returns:
        float64 [P, G].
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    k = sigmas.shape[0]
    if pred.ndim != 3 or pred.shape[1] != k or pred.shape[2] not in (2, 3):
        raise ValueError(f"pred must be [P, {k}, 2 or 3], got shape {pred.shape}")
    if gt.ndim != 3 or gt.shape[1:] != (k, 3):
        raise ValueError(f"gt must be [G, {k}, 3], got shape {gt.shape}")
    if areas.shape[0] != gt.shape[0]:
        raise ValueError(f"areas must be [{gt.shape[0]}], got shape {areas.shape}")
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return np.zeros((pred.shape[0], gt.shape[0]), dtype=np.float64)

    variances = (sigmas * 2) ** 2  # [K]
    scale = (areas + AREA_EPS)[None, :, None]  # [1, G, 1]
    xd, yd = pred[:, None, :, 0], pred[:, None, :, 1]  # [P, 1, K]
    xg, yg = gt[None, :, :, 0], gt[None, :, :, 1]  # [1, G, K]
    labelled = gt[..., 2] > 0  # [G, K]
    num_labelled = labelled.sum(axis=-1)  # [G]

    e = ((xd - xg) ** 2 + (yd - yg) ** 2) / variances / scale / 2  # [P, G, K]
    out = (np.exp(-e) * labelled[None]).sum(axis=-1) / np.maximum(num_labelled, 1)[None]

    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] != gt.shape[0]:
            raise ValueError(f"boxes must be [{gt.shape[0]}, 4], got shape {boxes.shape}")
        bx, by, bw, bh = (boxes[None, :, i, None] for i in range(4))  # [1, G, 1] each
        x0, x1, y0, y1 = bx - bw, bx + bw * 2, by - bh, by + bh * 2
        dx = np.maximum(0.0, x0 - xd) + np.maximum(0.0, xd - x1)
        dy = np.maximum(0.0, y0 - yd) + np.maximum(0.0, yd - y1)
        e_box = (dx ** 2 + dy ** 2) / variances / scale / 2
        out_box = np.exp(-e_box).sum(axis=-1) / k
    else:
        out_box = np.zeros_like(out)
    return np.where(num_labelled[None] > 0, out, out_box)
