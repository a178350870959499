"""The ``posedet`` loss, Eq. (4): coarse L2 + refinement L2 + focal classification + heatmap L2.

Paper: "PoseDet: Fast Multi-Person Pose Estimation Using Pose Embedding" (../shared/papers/001),
Sec. 3.2 "Training and Inference". Constants the paper leaves out come from its public reference
implementation (IIGROUP/PoseDet, "the reference"): configs/_base_/PoseDet_DLA34.py (loss weights
0.1 / 0.2 / 1, focal alpha 0.25 gamma 2), losses/keypoints_loss.py, roi_heads/PoseDet_head.py.

Per sample b, with the codec's targets (:mod:`tfpose.codecs.posedet`), candidate n of stride s_n
centred at c_n, coarse pose P^c_n = c_n + coarse_n s_n, refined pose
P^f_n = c_n + (sg(coarse_n) + refine_n) s_n (sg: stop-gradient; Eq. (4) writes the refinement
target as GTPose - delta^c, and the reference adds the coarse offsets detached), and G_m the
kept people::

    coarse[b]  = w_c * sum_{n: a_n >= 0} sum_k D(P^c_nk, G_{a_n, k}) / max(1, #{n: a_n >= 0})
    refine[b]  = w_r * sum_{n in R} sum_k D(P^f_nk, G_{r_n, k}) / max(1, |R|)
    cls[b]     = w_f * sum_{n in Pos u Neg} FL(logit_n, [n in Pos]) / max(1, |Pos|)
    heatmap[b] = w_h * mean_l mean_{h,w,K} W_l (H_l - H*_l)^2

with a_n = ``assigned``, the sums over labelled keypoints k, D(p, g) =
min(||p - g|| / (d s_n), max_distance) the Euclidean distance in units of d = ``distance_scale``
strides (reference: point_base_scale 4, L2 distance clamped at 5), FL the focal loss (Lin et
al. 2017) with alpha and gamma, and the assignment decided on the coarse poses, without
gradient, by the COCO OKS (:func:`tfpose.postprocess.oks.oks_tf`) with s^2 = ``people_areas``
(paper: "Based on the coarse prediction, we evaluate the candidate"; the reference assigns both
the refinement and the classification targets on the coarse poses):

    * R (refinement positives): best OKS over the people >= ``refine_pos``, r_n its person; also
      each person's best candidates when that OKS >= ``refine_best`` (the reference's
      low-quality matches; they take that person);
    * Pos / Neg: best OKS >= ``cls_pos`` / < ``cls_neg``; candidates in between or with
      ``candidate_valid`` 0 are ignored.

The heatmap term is the paper's L2 (the reference code trains the heatmaps with a
penalty-reduced focal loss instead).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfpose.config import ConfigError, field, register_section
from tfpose.postprocess.oks import oks_tf

# OKS of empty person slots in the best-match reduction (below every real OKS).
_NO_PERSON = -1.0


@register_section("loss", "posedet")
@dataclasses.dataclass
class PosedetLossConfig:
    """Weights and constants of the ``posedet`` loss (defaults: the reference COCO setting)."""

    coarse_weight: float = field(0.1, low=0.0, doc="w_c of the coarse-pose L2 (reference "
                                 "loss_keypoints_init weight 0.1)")
    refine_weight: float = field(0.2, low=0.0, doc="w_r of the refined-pose L2 (reference "
                                 "loss_keypoints_refine weight 0.2)")
    cls_weight: float = field(1.0, low=0.0, doc="w_f of the focal loss (reference loss_weight 1)")
    heatmap_weight: float = field(1.0, low=0.0, doc="w_h of the intermediate heatmap L2")
    focal_alpha: float = field(0.25, low=0.0, high=1.0, doc="focal loss alpha (Lin et al. 2017)")
    focal_gamma: float = field(2.0, low=0.0, doc="focal loss gamma (Lin et al. 2017)")
    distance_scale: float = field(4.0, low=0.0, doc="keypoint distances are measured in units "
                                  "of this many strides (reference point_base_scale 4)")
    max_distance: float = field(5.0, low=0.0, doc="per-keypoint distances are clamped at this "
                                "(reference KeypointsLoss clamp 5; 0 = no clamp)")

    def validate(self):
        if not self.distance_scale > 0:
            raise ConfigError(f"distance_scale = {self.distance_scale} must be positive")


def _norm(d: tf.Tensor) -> tf.Tensor:
    """Euclidean norm over the last axis with a zero (not NaN) gradient at 0."""
    sq = tf.reduce_sum(tf.square(d), axis=-1)
    nonzero = sq > 0
    return tf.where(nonzero, tf.sqrt(tf.where(nonzero, sq, 1.0)), 0.0)


def focal_loss(logits: tf.Tensor, positive: tf.Tensor, alpha: float, gamma: float) -> tf.Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017): -alpha (1 - p)^gamma log p for
    positives, -(1 - alpha) p^gamma log(1 - p) for the others, p = sigmoid(logits)."""
    p = tf.sigmoid(logits)
    pos = float(alpha) * tf.pow(1.0 - p, gamma) * tf.nn.softplus(-logits)
    neg = (1.0 - float(alpha)) * tf.pow(p, gamma) * tf.nn.softplus(logits)
    return tf.where(positive, pos, neg)


def assign_candidates(coarse_poses, people, people_areas, candidate_valid, sigmas,
                      codec_cfg) -> dict:
    """OKS assignment of the refinement and classification targets (module docstring).

    Args:
        coarse_poses: float [B, N, K, 2], coarse poses in input pixels (gradients are stopped).
        people: float [B, M, K, 3]; people_areas: float [B, M]; candidate_valid: float [B, N].
        sigmas: K OKS sigmas.
        codec_cfg: PosedetConfig (thresholds).

    Returns:
        dict of ``oks`` float [B, N, M], ``best_oks`` float [B, N] (-1 without people),
        ``refine_positive`` bool [B, N], ``refine_person`` int32 [B, N],
        ``cls_positive`` bool [B, N], ``cls_negative`` bool [B, N].
    """
    people = tf.convert_to_tensor(people, tf.float32)
    oks = tf.stop_gradient(oks_tf(tf.stop_gradient(coarse_poses), people, people_areas, sigmas))
    present = tf.reduce_any(people[..., 2] > 0, axis=-1)[:, None, :]  # [B, 1, M]
    oks = tf.where(present, oks, _NO_PERSON)
    best = tf.reduce_max(oks, axis=-1)
    best_person = tf.argmax(oks, axis=-1, output_type=tf.int32)
    # each person's best candidates (all of equal OKS), when good enough
    col_max = tf.reduce_max(oks, axis=1, keepdims=True)  # [B, 1, M]
    low = (tf.equal(oks, col_max) & (col_max >= float(codec_cfg.refine_best)) & present)
    low_any = tf.reduce_any(low, axis=-1)
    low_person = tf.argmax(tf.where(low, oks, _NO_PERSON), axis=-1, output_type=tf.int32)
    valid = tf.convert_to_tensor(candidate_valid, tf.float32) > 0
    return {
        "oks": oks, "best_oks": best,
        "refine_positive": (best >= float(codec_cfg.refine_pos)) | low_any,
        "refine_person": tf.where(low_any, low_person, best_person),
        "cls_positive": valid & (best >= float(codec_cfg.cls_pos)),
        "cls_negative": valid & (best < float(codec_cfg.cls_neg)),
    }


def build_posedet_loss(cfg):
    """``Method.build_loss`` of ``posedet``.

    Args:
        cfg: tfpose.config.Config with ``codec`` a PosedetConfig and ``loss`` a
            PosedetLossConfig (``spec`` and ``data.input_size`` give the candidates).

    Returns:
        callable ``loss(targets, outputs) -> {"coarse", "refine", "cls", "heatmap": [B]}``
        float32 per-sample values (module docstring). ``targets``: the codec's encoded keys
        (batched); ``outputs``: ``coarse`` [B, N, K, 2], ``refine`` [B, N, K, 2], ``logits``
        [B, N], ``heatmaps_s{s}`` [B, S/s, S/s, K] for each stride.
    """
    from tfpose.codecs.posedet import PosedetCodec
    from tfpose.registry import build_codec

    loss_cfg = cfg.loss
    if not isinstance(loss_cfg, PosedetLossConfig):
        raise TypeError(f"the posedet loss needs loss.type: posedet, got "
                        f"{type(loss_cfg).__name__}")
    codec = build_codec(cfg)
    if not isinstance(codec, PosedetCodec):
        raise TypeError(f"the posedet loss needs codec.type: posedet, got {codec.name!r}")
    codec_cfg = codec.config
    sigmas = codec.spec.sigmas
    centres = tf.constant(codec.candidate_centers())[None, :, None, :]  # [1, N, 1, 2]
    strides = tf.constant(codec.candidate_strides())[None, :, None]  # [1, N, 1]
    scale = float(loss_cfg.distance_scale)
    max_distance = float(loss_cfg.max_distance)
    weights = {key: float(getattr(loss_cfg, f"{key}_weight"))
               for key in ("coarse", "refine", "cls", "heatmap")}
    alpha, gamma = float(loss_cfg.focal_alpha), float(loss_cfg.focal_gamma)

    def pose_term(poses, people, person, chosen):
        """sum over chosen candidates and labelled keypoints of D, / max(1, #chosen). [B]"""
        target = tf.gather(people, tf.maximum(person, 0), batch_dims=1)  # [B, N, K, 3]
        dist = _norm(poses - target[..., :2]) / (scale * strides)  # [B, N, K]
        if max_distance > 0:
            dist = tf.minimum(dist, max_distance)
        on = tf.cast(chosen[..., None] & (target[..., 2] > 0), tf.float32)
        count = tf.reduce_sum(tf.cast(chosen, tf.float32), axis=1)
        return tf.reduce_sum(dist * on, axis=[1, 2]) / tf.maximum(count, 1.0)

    def loss(targets, outputs):
        f32 = tf.float32
        people = tf.cast(targets["people"], f32)
        assigned = tf.cast(targets["assigned"], tf.int32)
        coarse = tf.cast(outputs["coarse"], f32)
        refine = tf.cast(outputs["refine"], f32)
        logits = tf.cast(outputs["logits"], f32)
        coarse_poses = centres + coarse * strides[..., None]
        refined_poses = centres + (tf.stop_gradient(coarse) + refine) * strides[..., None]

        match = assign_candidates(coarse_poses, people, tf.cast(targets["people_areas"], f32),
                                  targets["candidate_valid"], sigmas, codec_cfg)
        pos, neg = match["cls_positive"], match["cls_negative"]
        focal = focal_loss(logits, pos, alpha, gamma) * tf.cast(pos | neg, f32)
        num_pos = tf.reduce_sum(tf.cast(pos, f32), axis=1)

        heat = []
        for s in codec.strides:
            error = tf.square(tf.cast(outputs[f"heatmaps_s{s}"], f32)
                              - tf.cast(targets[f"heatmaps_s{s}"], f32))
            error = error * tf.cast(targets[f"heatmap_weights_s{s}"], f32)
            heat.append(tf.reduce_mean(error, axis=[1, 2, 3]))
        return {
            "coarse": weights["coarse"] * pose_term(coarse_poses, people, assigned,
                                                    assigned >= 0),
            "refine": weights["refine"] * pose_term(refined_poses, people,
                                                    match["refine_person"],
                                                    match["refine_positive"]),
            "cls": weights["cls"] * tf.reduce_sum(focal, axis=1) / tf.maximum(num_pos, 1.0),
            "heatmap": weights["heatmap"] * tf.add_n(heat) / float(len(heat)),
        }

    return loss
