"""Greedy non-maximum suppression of poses in TF ops with static shapes (graph, TFLite builtins).

Symbols: B batch, T input poses per image, K keypoints, M = ``max_output`` kept poses.

Greedy NMS: visit the poses by decreasing score (equal scores: lower index first) and keep a
pose unless its similarity to an already kept pose is above ``threshold``; stop after M kept.
Invalid poses (``valid`` False) are never kept and suppress nothing. Similarities:

    * :func:`oks_nms`: the symmetric pose OKS of :func:`tfpose.postprocess.oks.pairwise_oks`
      (OKS NMS, Papandreou et al. 2017; PoseDet Sec. 3.2 "Training and Inference");
    * :func:`iou_nms`: IoU of the keypoint boxes (the IoU NMS of PoseDet's Table 5 ablation).

The greedy pass is the fixed point of ``keep_i = valid_i and no kept j before i suppresses i``
on the T x T suppression matrix of the sorted poses, iterated as a batched vector-matrix
product in a ``tf.while_loop``: round r settles the first r poses, so at most T + 1 rounds
are needed, and the loop stops at the first round that changes nothing (the fixed point is
unique, hence exactly the greedy result). Chains of suppressions are short in practice, so
T = 500 takes a handful of rounds of a 500 x 500 product. Converts to TFLite builtins
(TOPK_V2, GATHER, BATCH_MATMUL, WHILE, ...).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfpose.postprocess.oks import keypoint_boxes, pairwise_oks

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
def greedy_nms(similarity: tf.Tensor, scores: tf.Tensor, threshold: float, max_output: int,
               valid: Optional[tf.Tensor] = None) -> NmsResult:
    """Greedy NMS on a similarity matrix (module docstring).

    Args:
        similarity: float [B, T, T], symmetric (entry [i, j] is used when i is kept before j).
        scores: float [B, T].
        threshold: float, a pose is suppressed by a kept one when their similarity is above it.
        max_output: int M >= 1.
        valid: optional bool [B, T] (default all True).

    Returns:
        :class:`NmsResult`.
    """
    scores = tf.convert_to_tensor(scores, tf.float32)
    similarity = tf.convert_to_tensor(similarity, tf.float32)
    t = _static_count(scores, "greedy_nms")
    m = int(max_output)
    if m < 1:
        raise ValueError(f"max_output must be >= 1, got {max_output}")
    if valid is None:
        valid = tf.ones_like(scores, tf.bool)
    valid = tf.convert_to_tensor(valid, tf.bool)

    # sort by decreasing score, invalid last (top_k puts the lower index first among equals)
    _, order = tf.math.top_k(tf.where(valid, scores, _LOWEST), k=t)
    sim = tf.gather(tf.gather(similarity, order, batch_dims=1), order, axis=2, batch_dims=1)
    alive = tf.cast(tf.gather(valid, order, batch_dims=1), tf.float32)
    earlier = tf.constant(np.triu(np.ones((t, t), np.float32), k=1))  # [j, i]: j before i
    suppress = tf.cast(sim > float(threshold), tf.float32) * earlier  # [B, T (j), T (i)]

    def body(i, keep, _):
        hit = tf.matmul(keep[:, None, :], suppress)[:, 0, :]  # kept poses suppressing each
        new = alive * tf.cast(hit < 0.5, tf.float32)
        return i + 1, new, tf.reduce_any(tf.not_equal(new, keep))

    _, keep, _ = tf.while_loop(lambda i, keep, changed: (i <= t) & changed, body,
                               (tf.constant(0), alive, tf.constant(True)))
    # at most M: the first M kept in score order
    keep = keep * tf.cast(tf.cumsum(keep, axis=1) <= float(m), tf.float32)

    position = tf.range(t, dtype=tf.float32)
    k = min(m, t)
    _, slot = tf.math.top_k(tf.where(keep > 0.5, t - position, -1.0 - position), k=k)
    slot_valid = tf.gather(keep, slot, batch_dims=1) > 0.5
    indices = tf.where(slot_valid, tf.gather(order, slot, batch_dims=1), 0)
    if k < m:
        indices = tf.pad(indices, [[0, 0], [0, m - k]])
        slot_valid = tf.pad(slot_valid, [[0, 0], [0, m - k]])
    # back to the input order: inverse permutation of `order`
    _, inverse = tf.math.top_k(-order, k=t)
    keep_inputs = tf.gather(keep, inverse, batch_dims=1) > 0.5
    return NmsResult(indices=indices, valid=slot_valid, keep=keep_inputs)


@tf.autograph.experimental.do_not_convert
def oks_nms(poses: tf.Tensor, scores: tf.Tensor, areas: tf.Tensor, sigmas: Sequence[float],
            threshold: float, max_output: int, valid: Optional[tf.Tensor] = None) -> NmsResult:
    """OKS NMS: greedy NMS with :func:`~tfpose.postprocess.oks.pairwise_oks` as similarity.

    Args:
        poses: float [B, T, K, C], C >= 2 (x, y, ...) in pixels; every keypoint counts.
        scores: float [B, T].
        areas: float [B, T], s^2 of each pose (e.g. its keypoint-box area).
        sigmas: K OKS sigmas of the keypoint spec.
        threshold, max_output, valid: as :func:`greedy_nms`.
    """
    return greedy_nms(pairwise_oks(poses, areas, sigmas), scores, threshold, max_output, valid)


def box_iou(boxes: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU of boxes (x0, y0, x1, y1) [B, T, 4] -> float32 [B, T, T] (0 where the union
    is empty)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    area = tf.maximum(x1 - x0, 0.0) * tf.maximum(y1 - y0, 0.0)
    w = tf.maximum(tf.minimum(x1[:, :, None], x1[:, None]) - tf.maximum(x0[:, :, None],
                                                                        x0[:, None]), 0.0)
    h = tf.maximum(tf.minimum(y1[:, :, None], y1[:, None]) - tf.maximum(y0[:, :, None],
                                                                        y0[:, None]), 0.0)
    inter = w * h
    union = area[:, :, None] + area[:, None] - inter
    return tf.where(union > _TINY_AREA, inter / tf.maximum(union, _TINY_AREA), 0.0)


@tf.autograph.experimental.do_not_convert
def iou_nms(poses: tf.Tensor, scores: tf.Tensor, threshold: float, max_output: int,
            valid: Optional[tf.Tensor] = None) -> NmsResult:
    """IoU NMS on the keypoint boxes (min / max of every keypoint of a pose).

    Args:
        poses: float [B, T, K, C], C >= 2 (x, y, ...).
        scores, threshold, max_output, valid: as :func:`greedy_nms`.
    """
    return greedy_nms(box_iou(keypoint_boxes(poses)), scores, threshold, max_output, valid)
