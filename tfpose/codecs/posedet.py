"""Single-stage pose detection codec (``posedet``).

Paper: "PoseDet: Fast Multi-Person Pose Estimation Using Pose Embedding" (Tian et al.;
../shared/papers/001), Sec. 3.2 (candidates on FPN levels, Eq. 3 coarse + refined
displacements, assignment, intermediate heatmaps, OKS NMS) and Table 5 (centroid and NMS
ablations). Constants the paper leaves out come from its public reference implementation
(IIGROUP/PoseDet, "the reference" below) and name the file.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import tensorflow as tf

from tfpose.codecs import heatmaps as maps
from tfpose.codecs.base import Codec
from tfpose.config import ConfigError, field
from tfpose.postprocess import nms as pose_nms
from tfpose.postprocess.oks import keypoint_box_areas, keypoint_boxes

# Logit of the oracle outputs: sigmoid(+-_ORACLE_LOGIT) is 1 - 5e-5 / 5e-5.
_ORACLE_LOGIT = 10.0
# Squared-distance penalty of a candidate on another level than the person's (finite; only used
# when every candidate of the person's level is taken) and of a taken candidate.
_OTHER_LEVEL = 1e12
_TAKEN = 1e30


@dataclasses.dataclass
class PosedetConfig:
    """PoseDet codec settings. Defaults: paper 001 Sec. 3.2 and the reference's HRNet configs
    (configs/_base_/PoseDet_DLA34.py with point_strides [8, 16, 32] of the HRNet / HRFPN
    configs, configs/COCO/PoseDet_HRNetW32_coco.py)."""

    strides: list[int] = field(default_factory=lambda: [8, 16, 32], low=1,
                               doc="FPN level strides, ascending (reference HRFPN: 8, 16, 32)")
    level_boundaries: list[float] = field(
        default_factory=lambda: [64.0, 128.0], low=0.0,
        doc="person size sqrt(w h) of its labelled-keypoint box (input pixels) separating "
        "consecutive levels: level l takes sizes in [b_{l-1}, b_l). The reference's "
        "KeypointsAssigner picks level floor(log2(size / 4)) = log2(stride), i.e. boundaries "
        "8 * stride of the lower level, clamped to the first and last level")
    centroid: Literal["keypoints", "box"] = field(
        "keypoints", doc="a person's candidate is the one nearest the centroid of its labelled "
        "keypoints (paper) or the centre of their box (Table 5 ablation)")
    min_keypoints: int = field(3, low=1, doc="people with fewer labelled keypoints get no "
                               "candidate and no OKS (reference number_keypoints_thr 3)")
    max_people: int = field(30, low=1, doc="M ground-truth people per image and decoded people")
    sigma: float = field(2.0, low=0.0, doc="Gaussian sigma of the intermediate heatmaps in the "
                         "pixels of each level (Sec. 3.2 'a standard deviation of 2 pixels')")
    oks_min_area: float = field(1024.0, low=0.0, doc="keypoint-box areas are at least this "
                                "(input pixels^2; reference keypoints_nms.py clamps at 32 x 32)")
    oks_area_factor: float = field(0.5, low=0.0, doc="OKS scale s^2 = factor * keypoint-box "
                                   "area. The reference's OKS (utils.py computeOks, "
                                   "keypoints_nms.py) is exp(-d^2 / ((2 sigma)^2 A)), COCO's "
                                   "exp(-d^2 / (2 s^2 (2 sigma)^2)) with s^2 = A / 2")
    refine_pos: float = field(0.7, low=0.0, high=1.0, doc="refinement positives: OKS of the "
                              "coarse pose with a person >= this (Sec. 3.2)")
    refine_best: float = field(0.52, low=0.0, doc="also a refinement positive: each person's "
                               "best coarse pose when its OKS >= this (reference OksAssigner "
                               "match_low_quality, min_pos_iou 0.52); > 1 disables")
    cls_pos: float = field(0.6, low=0.0, high=1.0, doc="classification positives: OKS of the "
                           "coarse pose >= this (Sec. 3.2 'higher than 0.6')")
    cls_neg: float = field(0.5, low=0.0, high=1.0, doc="classification negatives: best OKS "
                           "below this (Sec. 3.2 'lower than 0.5'); in between is ignored")
    score_threshold: float = field(0.05, low=0.0, high=1.0, doc="decoded candidates need a "
                                   "larger score (reference test_cfg score_thr)")
    top_k: int = field(500, low=1, doc="highest-scored candidates over all levels passed to NMS "
                       "(reference test_cfg nms_pre 500, there per level)")
    nms: Literal["oks", "iou"] = field("oks", doc="OKS NMS (paper) or IoU NMS of keypoint boxes "
                                       "(Table 5 ablation)")
    nms_threshold: float = field(0.2, low=0.0, high=1.0, doc="suppress a pose whose OKS (or "
                                 "IoU) with a kept one is above this (reference: 0.2 COCO, "
                                 "0.3 CrowdPose)")

    def validate(self):
        if len(self.strides) < 1:
            raise ConfigError("strides must list at least one stride")
        if any(b <= a for a, b in zip(self.strides, self.strides[1:])):
            raise ConfigError(f"strides {self.strides} must be strictly increasing")
        if len(self.level_boundaries) != len(self.strides) - 1:
            raise ConfigError(f"level_boundaries {self.level_boundaries} must have "
                              f"len(strides) - 1 = {len(self.strides) - 1} values")
        bounds = self.level_boundaries
        if any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ConfigError(f"level_boundaries {bounds} must be strictly increasing")
        if not self.sigma > 0:
            raise ConfigError(f"sigma = {self.sigma} must be positive")
        if not self.oks_area_factor > 0:
            raise ConfigError(f"oks_area_factor = {self.oks_area_factor} must be positive")
        for key, low in (("min_keypoints", 1), ("max_people", 1), ("top_k", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"{key} = {getattr(self, key)} must be at least {low}")
        for key in ("refine_pos", "cls_pos", "cls_neg", "score_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} = {getattr(self, key)} must be in [0, 1]")
        if self.cls_neg > self.cls_pos:
            raise ConfigError(f"cls_neg = {self.cls_neg} is larger than cls_pos = {self.cls_pos}")


class PosedetCodec(Codec):
    """Pose candidates on FPN levels: assignment targets, intermediate heatmaps, detection decode.

    Symbols as in :mod:`tfpose.codecs.base`; levels l with strides s_l (``strides``), maps of
    H_l = W_l = S / s_l, N = sum_l H_l W_l candidates ordered level by level (ascending stride),
    row-major inside a level; candidate (i, j) of level l is centred at (j + 0.5, i + 0.5) s_l
    input pixels (:meth:`candidate_centers`). M = ``max_people``. A keypoint is labelled when
    v > 0 and it lies in [0, S) x [0, S).

    Assignment (Sec. 3.2 "Training and Inference", Table 5):
        * people with fewer than ``min_keypoints`` labelled keypoints are dropped: no candidate,
          no OKS in the loss. Their region is not ignored: as in the reference (OksAssigner
          gives them OKS -1, so they never match), candidates there may be negatives; only
          ``valid_mask`` (crowds, people without labelled keypoints) makes candidates ignored.
          The first M of the others, in input order, are kept;
        * level: by the size sqrt(w h) of the labelled-keypoint box, level l for sizes in
          [b_{l-1}, b_l) of ``level_boundaries`` (below b_0: the first level, from the last
          boundary on: the last);
        * candidate: the cell of that level holding the centroid of the labelled keypoints
          (``centroid: box``: the centre of their box), i.e. the candidate nearest it. The
          centroid of keypoints inside the image is inside the image. When two people fall on
          the same candidate (same level and cell), people are served in slot order and a
          later one takes the nearest free candidate of its level (Euclidean distance of the
          centres to its centroid; the reference lets the closer person overwrite the other,
          leaving it untrained); only when the whole level is taken does it go to the nearest
          free candidate of another level.

    Encoded keys (one sample, ``target_signature``):
        * ``people`` float [M, K, 3]: (x, y, v) of the kept people (input pixels; x = y = v = 0
          for unlabelled keypoints), zero rows past them;
        * ``people_areas`` float [M]: the OKS scale s^2 of each person: ``oks_area_factor`` *
          max(w h of the labelled-keypoint box, ``oks_min_area``) (0 for empty rows);
        * ``assigned`` int32 [N]: the slot in ``people`` whose pose the candidate regresses
          (the coarse target; one candidate per person), -1 elsewhere;
        * ``candidate_valid`` float [N]: 0 where ``valid_mask`` is 0 at the input pixel holding
          the candidate centre, else 1;
        * ``heatmaps_s{s}`` float [S/s, S/s, K] for each stride s: per type the max over every
          person (also those below ``min_keypoints``) of the Gaussian with ``sigma`` (pixels of
          that map) at each labelled keypoint (:func:`tfpose.codecs.heatmaps.gaussian_heatmaps`);
        * ``heatmap_weights_s{s}`` float [S/s, S/s, 1]: the valid mask of that map
          (:func:`~tfpose.codecs.heatmaps.valid_cells`).

    Network outputs for ``decode`` (``outputs``):
        * ``coarse`` float [B, N, K, 2]: coarse displacements in units of the candidate's stride
          (coarse pose = centre + coarse * s);
        * ``refine`` float [B, N, K, 2]: refinements in stride units (Eq. 3: refined pose =
          centre + (coarse + refine) * s);
        * ``logits`` float [B, N]: classification logits; ``heatmaps_s{s}`` are ignored.

    Decoding (TF ops, static shapes, TFLite builtins):
        1. scores = sigmoid(logits); the ``top_k`` highest over all levels;
        2. their refined poses (Eq. 3), in input pixels, not clipped to the image;
        3. candidates with a score above ``score_threshold`` go through greedy NMS
           (:mod:`tfpose.postprocess.nms`): ``nms: oks`` with the symmetric OKS of the spec's
           sigmas and s^2 from each pose's keypoint box as for ``people_areas`` (reference
           keypoints_nms.py), or ``nms: iou`` on the keypoint boxes; suppression above
           ``nms_threshold``; at most M kept;
        4. keypoints (x, y, pose score), people by decreasing score, rows past ``num_people``
           zero.

    Test-time hooks: :meth:`flip_outputs` (flip testing averages the outputs of mirrored
    candidates). ``resize_outputs`` is not provided: the paper's multi-scale testing runs NMS
    over the poses of every scale, which per-candidate outputs of different grids cannot be
    averaged into.
    """

    config_class = PosedetConfig

    def __init__(self, config, spec, input_size):
        super().__init__(config, spec, input_size)
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"codec: {e}") from None
        self.strides = [int(s) for s in config.strides]
        for s in self.strides:
            if self.input_size % s:
                raise ConfigError(f"codec.strides: input_size {self.input_size} is not a "
                                  f"multiple of stride {s}")
        self.level_shapes = [(self.input_size // s, self.input_size // s) for s in self.strides]
        sizes = [h * w for h, w in self.level_shapes]
        self.level_offsets = [int(v) for v in np.cumsum([0] + sizes[:-1])]
        self.num_candidates = int(sum(sizes))
        if self.max_people > self.num_candidates:
            raise ConfigError(f"codec.max_people = {self.max_people} is more than the "
                              f"{self.num_candidates} candidates of a {self.input_size} px input")
        self._centers = self._make_centers()
        self._strides = np.concatenate([np.full(n, s, np.float32)
                                        for n, s in zip(sizes, self.strides)])
        self._levels = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(sizes)])

    # -- candidates --------------------------------------------------------------------------------
    def _make_centers(self) -> np.ndarray:
        out = []
        for (h, w), s in zip(self.level_shapes, self.strides):
            cols, rows = np.meshgrid(np.arange(w), np.arange(h))
            out.append(np.stack([cols + 0.5, rows + 0.5], axis=-1).reshape(-1, 2) * s)
        return np.concatenate(out).astype(np.float32)

    def candidate_centers(self) -> np.ndarray:
        """float32 [N, 2]: (x, y) of every candidate centre in input pixels."""
        return self._centers.copy()

    def candidate_strides(self) -> np.ndarray:
        """float32 [N]: the stride of every candidate's level."""
        return self._strides.copy()

    def candidate_levels(self) -> np.ndarray:
        """int32 [N]: the level index of every candidate."""
        return self._levels.copy()

    def person_areas(self, keypoints, labelled=None) -> tf.Tensor:
        """OKS scale s^2 of poses [..., K, C] (class docstring, ``people_areas``). float32 [...]."""
        cfg = self.config
        return float(cfg.oks_area_factor) * keypoint_box_areas(keypoints, labelled,
                                                               cfg.oks_min_area)

    def decoded_poses(self, outputs: dict, refined: bool = True) -> tf.Tensor:
        """Every candidate's pose in input pixels: centre + (coarse [+ refine]) * stride.

        Returns:
            float32 [B, N, K, 2].
        """
        offsets = self._output(outputs, "coarse")
        if refined:
            offsets = offsets + self._output(outputs, "refine")
        return (tf.constant(self._centers)[:, None, :]
                + offsets * tf.constant(self._strides)[:, None, None])

    # -- shapes ------------------------------------------------------------------------------------
    def target_signature(self) -> dict:
        m, k, n = self.max_people, self.num_keypoints, self.num_candidates
        sig = {"people": tf.TensorSpec([m, k, 3], tf.float32),
               "people_areas": tf.TensorSpec([m], tf.float32),
               "assigned": tf.TensorSpec([n], tf.int32),
               "candidate_valid": tf.TensorSpec([n], tf.float32)}
        for (h, w), s in zip(self.level_shapes, self.strides):
            sig[f"heatmaps_s{s}"] = tf.TensorSpec([h, w, k], tf.float32)
            sig[f"heatmap_weights_s{s}"] = tf.TensorSpec([h, w, 1], tf.float32)
        return sig

    # -- encode ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def encode(self, keypoints, valid_mask) -> dict:
        """Targets of one sample (class docstring): keypoints [N_gt, K, 3], valid_mask [S, S]."""
        cfg = self.config
        m, k = self.max_people, self.num_keypoints
        raw_v = tf.reshape(tf.convert_to_tensor(keypoints, tf.float32), [-1, k, 3])[..., 2]
        x, y, inside, valid_mask = self.labelled_inside(keypoints, valid_mask)  # [N_gt, K]
        v = tf.where(inside, raw_v, 0.0)

        # the first M people with enough labelled keypoints, padded to M slots
        count = tf.reduce_sum(tf.cast(inside, tf.int32), axis=1)
        kept = tf.where(count >= int(cfg.min_keypoints))[:m, 0]
        people = tf.gather(tf.stack([x, y, v], axis=-1), kept)
        people = tf.pad(people, [[0, m - tf.shape(kept)[0]], [0, 0], [0, 0]])
        people = tf.ensure_shape(people, [m, k, 3])
        labelled = people[..., 2] > 0  # [M, K]
        present = tf.reduce_any(labelled, axis=1)  # [M]
        areas = tf.where(present, self.person_areas(people, labelled), 0.0)

        targets = {"people": people, "people_areas": areas,
                   "assigned": self._assign(people, labelled, present),
                   "candidate_valid": self._candidate_valid(valid_mask)}
        for (h, w), s in zip(self.level_shapes, self.strides):
            targets[f"heatmaps_s{s}"] = maps.gaussian_heatmaps(x, y, inside, h, s, cfg.sigma)
            targets[f"heatmap_weights_s{s}"] = maps.valid_cells(valid_mask, h, s)[..., None]
        return targets

    def _candidate_valid(self, valid_mask) -> tf.Tensor:
        """float32 [N]: valid_mask at the input pixel holding each candidate centre."""
        parts = []
        for s in self.strides:
            # centre (j + 0.5) s lies in input pixel j s + floor(s / 2)
            parts.append(tf.reshape(valid_mask[s // 2::s, s // 2::s], [-1]))
        return tf.concat(parts, axis=0)

    def _assign(self, people, labelled, present) -> tf.Tensor:
        """int32 [N]: the person slot of each assigned candidate, -1 elsewhere (class docstring)."""
        cfg = self.config
        m, n = self.max_people, self.num_candidates
        box = keypoint_boxes(people, labelled)  # [M, 4]
        w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        size = tf.sqrt(w * h)
        bounds = tf.constant(cfg.level_boundaries, tf.float32)
        level = tf.reduce_sum(tf.cast(size[:, None] >= bounds[None, :], tf.int32), axis=1)
        if cfg.centroid == "box":
            centre = tf.stack([(box[:, 0] + box[:, 2]) * 0.5, (box[:, 1] + box[:, 3]) * 0.5], -1)
        else:
            on = tf.cast(labelled, tf.float32)[..., None]
            centre = (tf.reduce_sum(people[..., :2] * on, axis=1)
                      / tf.maximum(tf.reduce_sum(on, axis=1), 1.0))  # [M, 2]

        # the candidate of the person's level whose cell holds the centre (first choice)
        stride = tf.gather(tf.constant(self.strides, tf.float32), level)
        width = tf.gather(tf.constant([w_ for _, w_ in self.level_shapes], tf.int32), level)
        offset = tf.gather(tf.constant(self.level_offsets, tf.int32), level)
        cell = tf.clip_by_value(tf.cast(tf.floor(centre / stride[:, None]), tf.int32), 0,
                                width[:, None] - 1)
        home = offset + cell[:, 1] * width + cell[:, 0]  # [M]
        # then the nearest candidates: of the level first, then of the others
        d2 = tf.reduce_sum(tf.square(centre[:, None, :] - tf.constant(self._centers)[None]), -1)
        same = tf.equal(tf.constant(self._levels)[None, :], level[:, None])
        cost = tf.where(same, d2, d2 + _OTHER_LEVEL)
        cost = tf.where(tf.one_hot(home, n, dtype=tf.float32) > 0, -1.0, cost)  # [M, N]

        def body(i, assigned, taken):
            pick = tf.argmin(tf.where(taken, _TAKEN, cost[i]), output_type=tf.int32)
            hit = tf.one_hot(pick, n, on_value=True, off_value=False) & present[i]
            return i + 1, tf.where(hit, i, assigned), taken | hit

        _, assigned, _ = tf.while_loop(
            lambda i, assigned, taken: i < m, body,
            (tf.constant(0), tf.fill([n], -1), tf.zeros([n], tf.bool)))
        return assigned

    # -- oracle ------------------------------------------------------------------------------------
    def oracle_outputs(self, targets: dict) -> dict:
        """Ideal outputs for batched targets: each assigned candidate's coarse displacements reach
        its person's labelled keypoints exactly (unlabelled ones stay at the centre), refine 0,
        logits +10 on assigned candidates and -10 elsewhere, heatmaps = their targets."""
        people = tf.convert_to_tensor(targets["people"], tf.float32)  # [B, M, K, 3]
        assigned = tf.convert_to_tensor(targets["assigned"], tf.int32)  # [B, N]
        mine = assigned >= 0
        target = tf.gather(people, tf.maximum(assigned, 0), batch_dims=1)  # [B, N, K, 3]
        labelled = mine[:, :, None] & (target[..., 2] > 0)
        centres = tf.constant(self._centers)[None, :, None, :]
        strides = tf.constant(self._strides)[None, :, None, None]
        coarse = tf.where(labelled[..., None], (target[..., :2] - centres) / strides, 0.0)
        out = {"coarse": coarse, "refine": tf.zeros_like(coarse),
               "logits": tf.where(mine, _ORACLE_LOGIT, -_ORACLE_LOGIT)}
        for s in self.strides:
            out[f"heatmaps_s{s}"] = tf.convert_to_tensor(targets[f"heatmaps_s{s}"], tf.float32)
        return out

    # -- test-time hooks ---------------------------------------------------------------------------
    def _output(self, outputs: dict, key: str) -> tf.Tensor:
        t = tf.convert_to_tensor(outputs[key], tf.float32)
        n, k = self.num_candidates, self.num_keypoints
        want = [n] if key == "logits" else [n, k, 2]
        if t.shape[1:].as_list() != want:
            raise ValueError(f"posedet output '{key}' must be [B, {', '.join(map(str, want))}] "
                             f"(N = {n} candidates of strides {self.strides}), got {t.shape}")
        return t

    def flip_outputs(self, outputs: dict) -> dict:
        """Outputs of the horizontally flipped image in the original frame: candidate (i, j) of
        a level takes the values of (i, W_l - 1 - j) (its mirror: centre x -> S - x), keypoint
        types permuted by ``spec.flip_index``, x displacements negated; heatmaps mirrored along
        W with their channels permuted."""
        flip = tf.constant(self.spec.flip_index, tf.int32)
        k = self.num_keypoints

        def mirror(t, tail):
            parts, start = [], 0
            for h, w in self.level_shapes:
                level = tf.reshape(t[:, start:start + h * w], [-1, h, w] + tail)
                parts.append(tf.reshape(tf.reverse(level, axis=[2]), [-1, h * w] + tail))
                start += h * w
            return tf.concat(parts, axis=1)

        out = {"logits": mirror(self._output(outputs, "logits"), [])}
        for key in ("coarse", "refine"):
            t = tf.gather(mirror(self._output(outputs, key), [k, 2]), flip, axis=2)
            out[key] = t * tf.constant([-1.0, 1.0])
        for s in self.strides:
            key = f"heatmaps_s{s}"
            if key in outputs:
                heat = tf.convert_to_tensor(outputs[key], tf.float32)
                out[key] = tf.gather(tf.reverse(heat, axis=[2]), flip, axis=3)
        return out

    # -- decode ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def decode(self, outputs: dict) -> dict:
        """Poses (class docstring, steps 1-4): keypoints [B, M, K, 3], scores [B, M],
        num_people [B]."""
        cfg = self.config
        m = self.max_people
        t = min(int(cfg.top_k), self.num_candidates)
        scores = tf.sigmoid(self._output(outputs, "logits"))
        top_scores, top = tf.math.top_k(scores, k=t)  # [B, T]
        offsets = self._output(outputs, "coarse") + self._output(outputs, "refine")
        offsets = tf.gather(offsets, top, batch_dims=1)  # [B, T, K, 2]
        centres = tf.gather(tf.constant(self._centers), top)  # [B, T, 2]
        strides = tf.gather(tf.constant(self._strides), top)  # [B, T]
        poses = centres[:, :, None, :] + offsets * strides[:, :, None, None]
        valid = top_scores > float(cfg.score_threshold)
        if cfg.nms == "oks":
            kept = pose_nms.oks_nms(poses, top_scores, self.person_areas(poses), self.spec.sigmas,
                                    cfg.nms_threshold, m, valid)
        else:
            kept = pose_nms.iou_nms(poses, top_scores, cfg.nms_threshold, m, valid)
        on = kept.valid  # [B, M]
        xy = tf.gather(poses, kept.indices, batch_dims=1)
        score = tf.where(on, tf.gather(top_scores, kept.indices, batch_dims=1), 0.0)
        keypoints = tf.concat([xy, score[:, :, None, None] * tf.ones_like(xy[..., :1])], -1)
        return {"keypoints": tf.where(on[:, :, None, None], keypoints, 0.0),
                "scores": score,
                "num_people": kept.num_kept}


# Registered as the last statement (as tfpose.codecs.dekr): tfpose.registry imports the method
# modules, which import this module's names, so both classes must exist before it is loaded.
from tfpose.registry import register_codec  # noqa: E402

register_codec("posedet")(PosedetCodec)
