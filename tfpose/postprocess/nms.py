"""Greedy non-maximum suppression of poses in TF ops with static shapes (graph, TFLite builtins).

Symbols: B batch, T input poses per image, K keypoints, M = ``max_output`` kept poses.

Greedy NMS: visit the poses by decreasing score (equal scores: lower index first) and keep a
pose unless its similarity to an already kept pose is above ``threshold``; stop after M kept.
Invalid poses (``valid`` False) are never kept and suppress nothing. Similarities:

    * :func:`oks_nms`: the symmetric pose OKS of :func:`tfpose.postprocess.oks.pose_oks`
      (OKS NMS, Papandreou et al. 2017; PoseDet Sec. 3.2 "Training and Inference");
    * :func:`iou_nms`: IoU of the keypoint boxes (the IoU NMS of PoseDet's Table 5 ablation).

The greedy pass runs as at most M rounds of a ``tf.while_loop``: take the best alive pose of
each image (top-1), keep it, and drop it and every alive pose whose similarity to it is above
the threshold; stop after M rounds or when no image has an alive pose. Each round computes one
row of similarities (T x K work), never the T x T matrix: at T = 500 candidates the matrix
took ~17 ms on a 2-core CPU, the rounds well under that. Converts to TFLite builtins
(TOPK_V2, GATHER, WHILE, ...).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfpose.postprocess.oks import keypoint_boxes, pose_oks

# Sort key of invalid poses: below every real score (finite, no inf in the graph).
_LOWEST = float(np.finfo(np.float32).min)
# Union area below which two boxes count as not overlapping (degenerate boxes).
_TINY_AREA = 1e-12


class NmsResult(NamedTuple):
    """What the NMS functions return.

    Attributes:
        indices: int32 [B, M], the kept poses (indices into T) by decreasing score; 0 in the
            slots past the kept ones.
        valid: bool [B, M], the slots holding a kept pose (the first ``num_kept``).
        keep: bool [B, T], the kept poses as a mask over the inputs.
    """

    indices: tf.Tensor
    valid: tf.Tensor
    keep: tf.Tensor

    @property
    def num_kept(self) -> tf.Tensor:
        """int32 [B]."""
        return tf.reduce_sum(tf.cast(self.valid, tf.int32), axis=1)


def _static_count(t: tf.Tensor, what: str) -> int:
    n = t.shape[1]
    if n is None:
        raise ValueError(f"{what} needs a static number of poses T, got shape {t.shape}")
    return int(n)


@tf.autograph.experimental.do_not_convert
def greedy_nms(similarity_to: Callable[[tf.Tensor], tf.Tensor], scores: tf.Tensor,
               threshold: float, max_output: int, valid: Optional[tf.Tensor] = None) -> NmsResult:
    """Greedy NMS (module docstring) with similarities computed one kept pose at a time.

    Args:
        similarity_to: maps the index [B] (int32) of one pose per image to float [B, T], its
            similarity to every pose of the image (symmetric similarities).
        scores: float [B, T].
        threshold: float, a pose is suppressed by a kept one when their similarity is above it.
        max_output: int M >= 1.
        valid: optional bool [B, T] (default all True).

    Returns:
        :class:`NmsResult`.
    """
    scores = tf.convert_to_tensor(scores, tf.float32)
    t = _static_count(scores, "greedy_nms")
    m = int(max_output)
    if m < 1:
        raise ValueError(f"max_output must be >= 1, got {max_output}")
    if valid is None:
        valid = tf.ones_like(scores, tf.bool)
    valid = tf.convert_to_tensor(valid, tf.bool)
    candidates = tf.range(t)[None]
    slots = tf.range(m)[None]

    def body(r, alive, keep, indices):
        # the best alive pose of each image (top_k: the lower index first among equal scores)
        best = tf.math.top_k(tf.where(alive, scores, _LOWEST), k=1).indices[:, 0]  # [B]
        found = tf.reduce_any(alive, axis=1)  # [B]
        chosen = tf.equal(candidates, best[:, None]) & found[:, None]  # [B, T]
        alive = alive & ~chosen & ~(similarity_to(best) > float(threshold))
        indices += tf.where(found, best, 0)[:, None] * tf.cast(tf.equal(slots, r), tf.int32)
        return r + 1, alive, keep | chosen, indices

    _, _, keep, indices = tf.while_loop(
        lambda r, alive, keep, indices: (r < m) & tf.reduce_any(alive), body,
        (tf.constant(0), valid, tf.zeros_like(valid), tf.zeros_like(scores, tf.int32)[:, :1]
         * slots))
    num_kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    return NmsResult(indices=indices, valid=slots < num_kept[:, None], keep=keep)


def _one_against_all(poses: tf.Tensor, *per_pose: tf.Tensor):
    """Picks pose ``index`` [B] of each image: (poses[b, index[b]] [B, 1, ...], ...) helper."""
    return lambda index: [tf.gather(x, index, batch_dims=1)[:, None] for x in (poses,) + per_pose]


@tf.autograph.experimental.do_not_convert
def oks_nms(poses: tf.Tensor, scores: tf.Tensor, areas: tf.Tensor, sigmas: Sequence[float],
            threshold: float, max_output: int, valid: Optional[tf.Tensor] = None) -> NmsResult:
    """OKS NMS: greedy NMS with the symmetric :func:`~tfpose.postprocess.oks.pose_oks`.

    Args:
        poses: float [B, T, K, C], C >= 2 (x, y, ...) in pixels; every keypoint counts.
        scores: float [B, T].
        areas: float [B, T], s^2 of each pose (e.g. its keypoint-box area).
        sigmas: K OKS sigmas of the keypoint spec.
        threshold, max_output, valid: as :func:`greedy_nms`.
    """
    poses = tf.convert_to_tensor(poses, tf.float32)
    areas = tf.convert_to_tensor(areas, tf.float32)
    pick = _one_against_all(poses, areas)

    def similarity_to(index):
        pose, area = pick(index)
        return pose_oks(pose, area, poses, areas, sigmas)[:, 0]

    return greedy_nms(similarity_to, scores, threshold, max_output, valid)


def box_iou(boxes: tf.Tensor, others: Optional[tf.Tensor] = None) -> tf.Tensor:
    """IoU of boxes (x0, y0, x1, y1) [B, P, 4] with ``others`` [B, Q, 4] (default: ``boxes``)
    -> float32 [B, P, Q] (0 where the union is empty)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    others = boxes if others is None else tf.convert_to_tensor(others, tf.float32)
    a0, b0, a1, b1 = (boxes[:, :, None, i] for i in range(4))  # [B, P, 1] each
    c0, d0, c1, d1 = (others[:, None, :, i] for i in range(4))  # [B, 1, Q] each
    w = tf.maximum(tf.minimum(a1, c1) - tf.maximum(a0, c0), 0.0)
    h = tf.maximum(tf.minimum(b1, d1) - tf.maximum(b0, d0), 0.0)
    inter = w * h
    union = (tf.maximum(a1 - a0, 0.0) * tf.maximum(b1 - b0, 0.0)
             + tf.maximum(c1 - c0, 0.0) * tf.maximum(d1 - d0, 0.0) - inter)
    return tf.where(union > _TINY_AREA, inter / tf.maximum(union, _TINY_AREA), 0.0)


@tf.autograph.experimental.do_not_convert
def iou_nms(poses: tf.Tensor, scores: tf.Tensor, threshold: float, max_output: int,
            valid: Optional[tf.Tensor] = None) -> NmsResult:
    """IoU NMS on the keypoint boxes (min / max of every keypoint of a pose).

    Args:
        poses: float [B, T, K, C], C >= 2 (x, y, ...).
        scores, threshold, max_output, valid: as :func:`greedy_nms`.
    """
    boxes = keypoint_boxes(poses)
    pick = _one_against_all(boxes)
    return greedy_nms(lambda index: box_iou(pick(index)[0], boxes)[:, 0], scores, threshold,
                      max_output, valid)
