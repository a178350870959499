"""Object Keypoint Similarity in TF ops (static shapes, batched) for OKS-based NMS in codecs.

Same definition as the numpy reference :func:`tfpose.evaluation.oks.oks` (cocoapi
``COCOeval.computeOks``), computed in float32 with broadcasting only (no gather, no dynamic
shapes), so it runs inside ``tf.function``, tf.data and TFLite/ONNX exports.
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
