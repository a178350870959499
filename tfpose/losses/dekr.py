"""The ``dekr`` loss: weighted heatmap L2 (Eq. (4)) + centre L2 and normalised smooth-L1 offset
loss (Eq. (5)), combined as Eq. (6).

Paper: "Bottom-Up Human Pose Estimation by Ranking Heatmap-Guided Adaptive Keypoint Estimates"
(../shared/papers/003), Sec. 3.1 "Loss function". The paper writes sums (entry-wise norms); the
normalisation of each term follows the public reference implementation, whose training produced
the published numbers (HRNet/HRNet-Bottom-Up-Pose-Estimation ``lib/core/loss.py`` and the COCO
yaml: ``HEATMAPS_LOSS_FACTOR 1.0``, ``OFFSETS_LOSS_FACTOR 0.01``, smooth-L1 beta 1/9).

Per sample b (h x w output map, K keypoints), with the codec's targets::

    heatmap[b] = heatmap_weight * sum_{h,w,K}( W_k * (H - H*)^2 ) / (h w (K + 1))    Eq. (4)
    center[b]  = center_weight  * sum_{h,w}( W_c * (C - C*)^2 ) / (h w (K + 1))  Eq. (5), 2nd term
    offset[b]  = offset_weight  * sum_{i,k} w_ik * (sL1(dx_ik - dx*_ik) + sL1(dy_ik - dy*_ik))
                 / max(1, 2 |{(i, k): w_ik > 0}|)                            lambda * Eq. (5), 1st

W = ``heatmap_weights`` (1 in keypoint regions, 0.1 elsewhere, 0 where ignored; channel K is the
centre's), w = ``offset_weights`` (1 / Z_i for the labelled keypoints of the pose owning pixel
i, 0 elsewhere), sL1 the smooth-L1 with beta (0.5 x^2 / beta if |x| < beta, else
|x| - 0.5 beta; beta = 0 is L1). As in the reference, the mask multiplies the squared error
(Eq. (4) writes ||M . (H - H*)||^2, i.e. the mask squared; same for the 0/1 parts).

The normalisation is the reference's:
    * the centre heatmap is one more heatmap channel: with both weights 1, heatmap + center is
      the mean over the K + 1 channels (Eq. (6) would put the centre L2 under lambda; the
      reference trains it at factor 1 beside the keypoints);
    * the offset sum is divided by the number of supervised offset coordinates (2 per labelled
      keypoint of each centre-region pixel), not by the pixels: lambda then weighs one
      coordinate's error against one heatmap entry's. The reference divides by the count of the
      whole batch; here each sample is divided by its own count, so the term does not depend on
      how a batch is split over replicas.
    Dividing the offsets by the pixels alone and the centre by h w instead makes the offset and
    centre terms about 2 x (labelled keypoints) and K + 1 times heavier against the keypoint
    heatmaps; on the Quickstart data they cut the AP after 1,000 steps from 0.45-0.48 to 0.37.
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
        coordinates = 2.0 * tf.reduce_sum(tf.cast(offset_w > 0, f32), [1, 2, 3])
        entries = tf.cast(tf.reduce_prod(tf.shape(heat)[1:3]) * (num_keypoints + 1), f32)
        return {
            "heatmap": heatmap_weight * tf.reduce_sum(heat_error, [1, 2, 3]) / entries,
            "center": center_weight * tf.reduce_sum(center_error, [1, 2, 3]) / entries,
            "offset": offset_weight * offset_sum / tf.maximum(coordinates, 1.0),
        }

    return loss
