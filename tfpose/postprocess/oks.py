"""Object Keypoint Similarity in TF ops (static shapes, batched) for OKS-based NMS in codecs.

Same definition as the numpy reference :func:`tfpose.evaluation.oks.oks` (cocoapi
``COCOeval.computeOks``), computed in float32 with broadcasting only (no gather, no dynamic
shapes), so it runs inside ``tf.function``, tf.data and TFLite/ONNX exports.

Also the pose-to-pose helpers of detection-style codecs: :func:`keypoint_boxes`,
:func:`keypoint_box_areas` and the symmetric :func:`pose_oks` used by OKS NMS
(:mod:`tfpose.postprocess.nms`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

# cocoapi adds np.spacing(1) to the area (kept in float32: 2.2e-16 is a normal float32).
AREA_EPS = float(np.spacing(1))


def oks_tf(pred: tf.Tensor, gt: tf.Tensor, areas: tf.Tensor, sigmas: Sequence[float],
           boxes: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Batched OKS between predictions and ground-truth (or reference) persons.

    For NMS between the poses of one image, pass the poses as both ``pred`` and ``gt`` with the
    third channel of ``gt`` set to a visibility (e.g. score > threshold) and ``areas`` the
    squared scales of the reference poses.

    Args:
        pred: float [B, P, K, C], C >= 2: (x, y, ...) predicted keypoints; extra channels are
            ignored.
        gt: float [B, G, K, 3]: (x, y, v); keypoints with v > 0 count.
        areas: float [B, G]: object areas s^2.
        sigmas: K per-keypoint OKS sigmas (a Python sequence or numpy array: a constant).
        boxes: optional float [B, G, 4] (x, y, w, h): scores ground truths without a labelled
            keypoint by the distance to the enlarged box, as COCO does. Without boxes they get
            OKS 0.

    Returns:
        float32 [B, P, G].
    """
    sigmas = np.asarray(sigmas, dtype=np.float32).reshape(-1)
    k = int(sigmas.shape[0])
    pred = tf.convert_to_tensor(pred, tf.float32)
    gt = tf.convert_to_tensor(gt, tf.float32)
    areas = tf.convert_to_tensor(areas, tf.float32)
    if pred.shape.rank != 4 or gt.shape.rank != 4:
        raise ValueError(f"pred and gt must be rank 4 [B, P, K, C] and [B, G, K, 3], got "
                         f"{pred.shape} and {gt.shape}")
    if pred.shape[2] != k or gt.shape[2] != k:
        raise ValueError(f"pred and gt must have K={k} keypoints, got {pred.shape} and {gt.shape}")

    variances = tf.constant((sigmas * 2) ** 2, tf.float32)  # [K]
    scale = (areas + AREA_EPS)[:, None, :, None]  # [B, 1, G, 1]
    xd, yd = pred[:, :, None, :, 0], pred[:, :, None, :, 1]  # [B, P, 1, K]
    xg, yg = gt[:, None, :, :, 0], gt[:, None, :, :, 1]  # [B, 1, G, K]
    labelled = tf.cast(gt[:, None, :, :, 2] > 0, tf.float32)  # [B, 1, G, K]
    num_labelled = tf.reduce_sum(labelled, axis=-1)  # [B, 1, G]

    e = ((xd - xg) ** 2 + (yd - yg) ** 2) / variances / scale / 2.0  # [B, P, G, K]
    out = tf.reduce_sum(tf.exp(-e) * labelled, axis=-1) / tf.maximum(num_labelled, 1.0)

    if boxes is None:
        out_box = tf.zeros_like(out)
    else:
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        bx, by, bw, bh = (boxes[:, None, :, i, None] for i in range(4))  # [B, 1, G, 1] each
        x0, x1, y0, y1 = bx - bw, bx + bw * 2.0, by - bh, by + bh * 2.0
        dx = tf.nn.relu(x0 - xd) + tf.nn.relu(xd - x1)
        dy = tf.nn.relu(y0 - yd) + tf.nn.relu(yd - y1)
        e_box = (dx ** 2 + dy ** 2) / variances / scale / 2.0
        out_box = tf.reduce_mean(tf.exp(-e_box), axis=-1)
    return tf.where(num_labelled > 0, out, out_box)


# --- pose-to-pose similarity for NMS and the posedet assignment ---------------------------------

# Coordinate standing for "no keypoint" in the box min / max reductions (finite: no inf in graphs).
_FAR = 1e9


def keypoint_boxes(keypoints: tf.Tensor, labelled: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Boxes (x0, y0, x1, y1) around keypoints: min / max of x and y over the labelled ones.

    Args:
        keypoints: float [..., K, C], C >= 2: (x, y, ...).
        labelled: optional bool [..., K]; all keypoints count when None.

    Returns:
        float32 [..., 4]; (0, 0, 0, 0) where no keypoint is labelled.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    x, y = keypoints[..., 0], keypoints[..., 1]
    if labelled is None:
        return tf.stack([tf.reduce_min(x, -1), tf.reduce_min(y, -1),
                         tf.reduce_max(x, -1), tf.reduce_max(y, -1)], axis=-1)
    labelled = tf.convert_to_tensor(labelled, tf.bool)
    box = tf.stack([tf.reduce_min(tf.where(labelled, x, _FAR), -1),
                    tf.reduce_min(tf.where(labelled, y, _FAR), -1),
                    tf.reduce_max(tf.where(labelled, x, -_FAR), -1),
                    tf.reduce_max(tf.where(labelled, y, -_FAR), -1)], axis=-1)
    return tf.where(tf.reduce_any(labelled, -1)[..., None], box, 0.0)


def keypoint_box_areas(keypoints: tf.Tensor, labelled: Optional[tf.Tensor] = None,
                       min_area: float = 0.0) -> tf.Tensor:
    """Areas w * h of :func:`keypoint_boxes`, at least ``min_area``. float32 [...]."""
    box = keypoint_boxes(keypoints, labelled)
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    return tf.maximum(area, float(min_area))


def pose_oks(poses: tf.Tensor, areas: tf.Tensor, others: tf.Tensor, other_areas: tf.Tensor,
             sigmas: Sequence[float]) -> tf.Tensor:
    """Symmetric OKS between two sets of poses of each image, every keypoint counted.

    ``OKS_ij = mean_k exp(-d_ijk^2 / (2 s_ij^2 (2 sigma_k)^2))`` (COCO's per-keypoint term) with
    d the distance between keypoint k of poses i and j and s_ij^2 = (a_i + a_j) / 2 the mean of
    their areas, so OKS_ij = OKS_ji (OKS NMS of Papandreou et al. 2017 as PoseDet uses it).

    Args:
        poses: float [B, P, K, C], C >= 2: (x, y, ...).
        areas: float [B, P]: s^2 of every pose (e.g. :func:`keypoint_box_areas`).
        others, other_areas: float [B, Q, K, C] and [B, Q], the second set.
        sigmas: K per-keypoint OKS sigmas (a constant).

    Returns:
        float32 [B, P, Q].
    """
    sigmas = np.asarray(sigmas, dtype=np.float32).reshape(-1)
    poses, others = (tf.convert_to_tensor(p, tf.float32) for p in (poses, others))
    for p in (poses, others):
        if p.shape.rank != 4 or p.shape[2] != sigmas.shape[0]:
            raise ValueError(f"poses must be [B, P, {sigmas.shape[0]}, C], got {p.shape}")
    areas, other_areas = (tf.convert_to_tensor(a, tf.float32) for a in (areas, other_areas))
    # exponent -d^2 * c_k / s^2 with c_k = 1 / (2 (2 sigma_k)^2); x and y apart (a reduction
    # over a size-2 axis of [B, P, Q, K, 2] is several times slower)
    coef = tf.constant(-1.0 / (2.0 * (sigmas * 2) ** 2), tf.float32)  # [K]
    inv_scale = 1.0 / ((areas[:, :, None] + other_areas[:, None, :]) * 0.5 + AREA_EPS)
    dx = poses[:, :, None, :, 0] - others[:, None, :, :, 0]
    dy = poses[:, :, None, :, 1] - others[:, None, :, :, 1]  # [B, P, Q, K]
    return tf.reduce_mean(tf.exp((dx * dx + dy * dy) * coef * inv_scale[..., None]), axis=-1)
