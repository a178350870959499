"""The ``dekr`` loss: weighted heatmap L2 (Eq. (4)) + centre L2 and normalised smooth-L1 offset
loss (Eq. (5)), combined as Eq. (6).

Paper: "Bottom-Up Human Pose Estimation by Ranking Heatmap-Guided Adaptive Keypoint Estimates"
(../shared/papers/003), Sec. 3.1 "Loss function". Constants from the public reference
implementation (HRNet/HRNet-Bottom-Up-Pose-Estimation ``lib/core/loss.py`` and the COCO yaml:
``HEATMAPS_LOSS_FACTOR 1.0``, ``OFFSETS_LOSS_FACTOR 0.01``, smooth-L1 beta 1/9).

Per sample b (h x w output map, K keypoints), with the codec's targets::

    heatmap[b] = heatmap_weight * mean_{h,w,K}( W_k * (H - H*)^2 )                  Eq. (4)
    center[b]  = center_weight  * mean_{h,w}( W_c * (C - C*)^2 )                 Eq. (5), 2nd term
    offset[b]  = offset_weight  * sum_{i,k} w_ik * (sL1(dx_ik - dx*_ik) + sL1(dy_ik - dy*_ik))
                 / max(1, |C_b|)                                             lambda * Eq. (5), 1st

W = ``heatmap_weights`` (1 in keypoint regions, 0.1 elsewhere, 0 where ignored; channel K is the
centre's), w = ``offset_weights`` (1 / Z_i for the labelled keypoints of the pose owning pixel
i, 0 elsewhere), |C_b| = the number of centre-region pixels of the sample (pixels with a
positive offset weight), sL1 the smooth-L1 with beta (0.5 x^2 / beta if |x| < beta, else
|x| - 0.5 beta; beta = 0 is L1). As in the reference, the mask multiplies the squared error
(Eq. (4) writes ||M . (H - H*)||^2, i.e. the mask squared; same for the 0/1 parts).

Notes on the reference code (for reproducing its numbers):
    * Eq. (6) puts the centre L2 under lambda; the reference trains the centre heatmap as an
      extra heatmap channel, factor 1, averaged with the K keypoint channels over K + 1
      channels. That is this loss with heatmap_weight = K / (K + 1), center_weight = 1 / (K + 1);
      the defaults (1, 1) weight the centre K times more relative to the keypoints.
    * The reference divides the offset sum by the number of positive weight *entries* of the
      whole batch (pixels x 2 coordinates x labelled keypoints), not by the pixels of the
      sample, so at the same lambda its offset term is about 2 x (labelled keypoints per
      person) times smaller (up to 2K).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfpose.config import field, register_section

# Target/output keys (interfaces of the dekr codec and model).
HEATMAPS, CENTER, OFFSETS = "heatmaps", "center", "offsets"
HEATMAP_WEIGHTS, OFFSET_WEIGHTS = "heatmap_weights", "offset_weights"


@register_section("loss", "dekr")
@dataclasses.dataclass
class DekrLossConfig:
    """Weights of the ``dekr`` loss terms (defaults: the paper / reference COCO setting)."""

    heatmap_weight: float = field(1.0, low=0.0, doc="factor of the keypoint heatmap loss, "
                                  "Eq. (4) (reference HEATMAPS_LOSS_FACTOR 1.0)")
    center_weight: float = field(1.0, low=0.0, doc="factor of the centre heatmap L2. Eq. (5) "
                                 "puts it under lambda; the reference code trains the centre "
                                 "heatmap with the keypoint heatmaps at factor 1 (as one more "
                                 "heatmap channel), which produced the published numbers")
    offset_weight: float = field(0.01, low=0.0, doc="lambda of Eq. (6) on the normalised "
                                 "smooth-L1 offset loss (reference OFFSETS_LOSS_FACTOR 0.01)")
    smooth_l1_beta: float = field(1.0 / 9.0, low=0.0, doc="smooth-L1 transition point in "
                                  "output-map pixels (reference 1/9; 0 = L1)")


def smooth_l1(x, beta):
    """Smooth-L1 of ``x``: 0.5 x^2 / beta where |x| < beta, |x| - 0.5 beta elsewhere."""
    a = tf.abs(x)
    if beta <= 0:
        return a
    return tf.where(a < beta, 0.5 * tf.square(a) / beta, a - 0.5 * beta)


def build_dekr_loss(cfg):
    """``Method.build_loss`` of ``dekr``.

    Args:
        cfg: tfpose.config.Config whose ``loss`` is a DekrLossConfig (or a DekrLossConfig).

    Returns:
        callable ``loss(targets, outputs) -> {"heatmap": [B], "center": [B], "offset": [B]}``
        float32 per-sample values (see the module docstring). ``targets``: ``heatmaps``
        [B, h, w, K], ``center`` [B, h, w, 1], ``heatmap_weights`` [B, h, w, K + 1],
        ``offsets`` [B, h, w, 2K] (interleaved dx, dy), ``offset_weights`` [B, h, w, K];
        ``outputs``: ``heatmaps``, ``center``, ``offsets`` of the same shapes.
    """
    loss_cfg = cfg if isinstance(cfg, DekrLossConfig) else cfg.loss
    if not isinstance(loss_cfg, DekrLossConfig):
        raise TypeError(f"the dekr loss needs a DekrLossConfig, got {type(loss_cfg).__name__}")
    heatmap_weight = float(loss_cfg.heatmap_weight)
    center_weight = float(loss_cfg.center_weight)
    offset_weight = float(loss_cfg.offset_weight)
    beta = float(loss_cfg.smooth_l1_beta)

    def loss(targets, outputs):
        f32 = tf.float32
        heat = tf.cast(outputs[HEATMAPS], f32)
        num_keypoints = heat.shape[-1]
        weights = tf.cast(targets[HEATMAP_WEIGHTS], f32)
        heat_error = weights[..., :num_keypoints] * tf.square(
            heat - tf.cast(targets[HEATMAPS], f32))
        center_error = weights[..., num_keypoints:] * tf.square(
            tf.cast(outputs[CENTER], f32) - tf.cast(targets[CENTER], f32))

        offset_w = tf.cast(targets[OFFSET_WEIGHTS], f32)  # [B, h, w, K]
        diff = tf.cast(outputs[OFFSETS], f32) - tf.cast(targets[OFFSETS], f32)
        shape = tf.concat([tf.shape(diff)[:-1], [num_keypoints, 2]], 0)
        per_keypoint = tf.reduce_sum(smooth_l1(tf.reshape(diff, shape), beta), -1)  # [B,h,w,K]
        offset_sum = tf.reduce_sum(offset_w * per_keypoint, [1, 2, 3])
        region = tf.reduce_any(offset_w > 0, axis=-1)  # centre-region pixels [B, h, w]
        num_pixels = tf.reduce_sum(tf.cast(region, f32), [1, 2])
        return {
            "heatmap": heatmap_weight * tf.reduce_mean(heat_error, [1, 2, 3]),
            "center": center_weight * tf.reduce_mean(center_error, [1, 2, 3]),
            "offset": offset_weight * offset_sum / tf.maximum(num_pixels, 1.0),
        }

    return loss
