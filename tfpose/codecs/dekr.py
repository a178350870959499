"""Heatmap-guided pixel-wise keypoint regression codec (``dekr``).

Paper: "Bottom-Up Human Pose Estimation by Ranking Heatmap-Guided Adaptive Keypoint Estimates"
(Geng et al.; ../shared/papers/003), Sec. 3.1 (targets, Eqs. 4-5) and Sec. 3.2 (grouping by
absorption, scoring). Constants the paper leaves out come from its public reference
implementation (HRNet/HRNet-Bottom-Up-Pose-Estimation, "the reference" below) and name the file.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from tfpose.codecs import heatmaps as maps
from tfpose.codecs.base import Codec
from tfpose.config import ConfigError, field
from tfpose.postprocess import nms as pose_nms
from tfpose.postprocess import peaks

# Map pixels a keypoint Gaussian's tradeoff region reaches, in sigmas: the reference's
# HeatmapGenerator draws (and marks with weight 1) a window of 3 sigma around each point.
REGION_SIGMAS = 3.0
# Squared distance standing for "no candidate" in the absorption step (finite: no inf arithmetic).
_FAR = 1e30


def _static_hw(t: tf.Tensor):
    h, w = t.shape[1], t.shape[2]
    if h is None or w is None:
        raise ValueError(f"dekr outputs need a static H and W, got shape {t.shape}")
    return int(h), int(w)


@dataclasses.dataclass
class DekrConfig:
    """DEKR codec settings. Defaults: paper 003 Sec. 3.1-3.2 / 4.1 and the reference's COCO W32
    experiment (experiments/coco/w32/w32_4x_reg_delaysep_bg01_stn_512_adam_lr1e-3_coco_x140.yaml).
    """

    stride: int = field(4, low=1, doc="output stride (the heads run on HRNet's 1/4 map)")
    sigma: float = field(2.0, low=0.0, doc="keypoint Gaussian sigma, map pixels (reference "
                         "DATASET.SIGMA 2.0)")
    center_sigma: float = field(4.0, low=0.0, doc="centre Gaussian sigma, map pixels (reference "
                                "DATASET.CENTER_SIGMA 4)")
    center_radius: int = field(4, low=1, doc="half side of the square centre region, map pixels "
                               "(paper Sec. 3.1 'radius 4'; reference OFFSET_RADIUS 4)")
    bg_weight: float = field(0.1, low=0.0, high=1.0, doc="heatmap loss weight outside the "
                             "keypoint regions (Eq. 4 tradeoff mask; reference BG_WEIGHT 0.1)")
    max_people: int = field(30, low=1, doc="M centre candidates / decoded people (Sec. 3.2)")
    num_candidates: int = field(30, low=1, doc="keypoint candidates per type (Sec. 3.2: 30)")
    nms_kernel: int = field(5, low=1, doc="max-pool NMS window of the keypoint heatmaps "
                            "(reference TEST.NMS_KERNEL 5)")
    center_nms_kernel: int = field(3, low=1, doc="max-pool NMS window of the centre heatmap "
                                   "(reference lib/core/group.py hierarchical_pool: 3 x 3 for "
                                   "maps up to POOL_THRESHOLD2 = 200 px, e.g. 128 for 512 input)")
    keypoint_threshold: float = field(0.01, low=0.0, high=1.0, doc="keypoint candidates need "
                                      "a larger heat value (Sec. 3.2: 0.01)")
    center_threshold: float = field(0.01, low=0.0, high=1.0, doc="centres need a larger heat "
                                    "value (reference TEST.KEYPOINT_THRESHOLD on the centre map)")
    absorb_distance: float = field(75.0, low=0.0, doc="a regressed keypoint absorbs the nearest "
                                   "same-type candidate within this many input pixels (Sec. 3.2)")
    nms_distance: float = field(10.0, low=0.0, doc="pose NMS: keypoints of two poses closer than "
                                "this (input pixels) coincide (reference TEST.DIST_THRESHOLD 10)")
    nms_overlap: float = field(0.6, low=0.0, high=1.0, doc="pose NMS: a pose is a duplicate of "
                               "a higher-scored one when more than nms_overlap * K keypoints "
                               "coincide (reference TEST.OVERLAP_THRESHOLD 10 of COCO's 17)")
    use_scorer: bool = field(True, doc="score poses with the learned scorer of the training run "
                             "when its weights exist (Sec. 3.2 'Scoring'); else the naive score")

    def validate(self):
        for key in ("sigma", "center_sigma"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} = {getattr(self, key)} must be positive")
        for key in ("nms_kernel", "center_nms_kernel"):
            if getattr(self, key) % 2 == 0:
                raise ConfigError(f"{key} = {getattr(self, key)} must be odd")
        for key, low in (("stride", 1), ("center_radius", 1), ("max_people", 1),
                         ("num_candidates", 1), ("nms_kernel", 1), ("center_nms_kernel", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"{key} = {getattr(self, key)} must be at least {low}")
        for key in ("bg_weight", "keypoint_threshold", "center_threshold", "nms_overlap"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} = {getattr(self, key)} must be in [0, 1]")
        for key in ("absorb_distance", "nms_distance"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key} = {getattr(self, key)} must be >= 0")


class DekrCodec(Codec):
    """Keypoint heatmaps + centre heatmap + per-pixel pose offsets (paper 003 Sec. 3).

    Symbols as in :mod:`tfpose.codecs.base`; s = ``stride``, n = S / s the side of the output
    maps, r = ``center_radius``, M = ``max_people``, C = ``num_candidates``. Points are in input
    pixels; on the maps a point x is at x / s and pixel (i, j) is centred at (j + 0.5, i + 0.5).
    A keypoint is labelled when v > 0 and it lies in [0, S) x [0, S).

    Encoded keys (one sample, ``target_signature``):
        * ``heatmaps`` float [n, n, K]: per type, the max over people of the untruncated Gaussian
          exp(-((j + 0.5 - x / s)^2 + (i + 0.5 - y / s)^2) / (2 sigma^2)) at each labelled
          keypoint (as the ``ae`` codec; :func:`tfpose.codecs.heatmaps.gaussian_heatmaps`).
        * ``center`` float [n, n, 1]: the same with ``center_sigma`` at each person's centre
          p_n = mean of its labelled keypoints (Sec. 3.1, "p_n = 1/K sum_k p_nk" over the
          labelled ones); people without a labelled keypoint have none.
        * ``heatmap_weights`` float [n, n, K + 1]: the tradeoff mask M of Eq. (4): 1 in the
          region of a keypoint of that type (channel K: of a centre), ``bg_weight`` elsewhere,
          times the valid mask (:func:`~tfpose.codecs.heatmaps.valid_cells`, 0 where the s x s
          input cell holds an ignored pixel). A region is the square of pixels whose centres lie
          within 3 sigma (centres: 3 ``center_sigma``) along both axes, the window the
          reference's HeatmapGenerator draws its Gaussians in and sets to 1 (the reference pads
          it by one more pixel; here it is symmetric, so flips mirror it exactly).
        * ``offsets`` float [n, n, 2K] (dx_0, dy_0, dx_1, ...): in the centre region of a person,
          (x_k / s - (j + 0.5), y_k / s - (i + 0.5)) for each labelled keypoint k of the pixel's
          owner, 0 for its unlabelled keypoints and outside every centre region. The centre
          region is a square, like the reference's OffsetGenerator (which takes the 2r x 2r
          pixels around the centre's pixel): the pixels whose centres lie within r map pixels of
          the centre along both axes (2r pixels a side; 2r + 1 when the centre is exactly at a
          pixel centre). A pixel in several regions belongs to the person whose centre is
          closest (Euclidean; paper footnote 1; ties: the earlier person). The centre's own pixel
          is always in its region (r >= 1).
        * ``offset_weights`` float [n, n, K]: 1 / Z_i for each labelled keypoint of the owner in
          its centre region, Z_i = sqrt(H_i^2 + W_i^2) of the owner's labelled-keypoint box in
          map pixels, at least 1 (Eq. 5); 0 elsewhere; times the valid mask.

    Network outputs for ``decode`` (``outputs``), n' x n' maps of the input (stride S / n'):
        * ``heatmaps`` float [B, n', n', K], ``center`` float [B, n', n', 1],
        * ``offsets`` float [B, n', n', 2K] in map pixels, interleaved as the targets.

    Decoding (Sec. 3.2; TF ops, static shapes, no Python loop over people):
        1. centres: max-pool NMS of the centre heatmap with ``center_nms_kernel``, the top M
           peaks with a value above ``center_threshold``
           (:func:`tfpose.postprocess.peaks.find_peaks`);
        2. regressed pose of a centre at pixel (i, j): (j + 0.5 + dx_k, i + 0.5 + dy_k);
        3. keypoint candidates: per type the top C heatmap NMS peaks (``nms_kernel``) above
           ``keypoint_threshold`` at their sub-pixel location
           (:func:`~tfpose.postprocess.peaks.subpixel_offsets`);
        4. absorption: each regressed keypoint takes the location of the nearest same-type
           candidate when it is within ``absorb_distance`` input pixels, else keeps its own;
           keypoint score = the heat value at the final location (the candidate's peak value, or
           the heat of the pixel holding the regressed point, clamped to the map);
           (steps 1-4: :meth:`decode_candidates`)
        5. pose score: the learned scorer on :func:`tfpose.postprocess.scoring.pose_features` when
           one is loaded (:meth:`load_assets`), else the naive score (1/K) sum_k h_k(p_k) * c(p)
           with c the centre heat value;
        6. pose NMS (the reference's regression-pose NMS, lib/core/group.py ``kpts_nms``): two
           candidates are duplicates when more than ``nms_overlap`` * K keypoints of their
           regressed poses (step 2, before absorption, as the reference) are closer than
           ``nms_distance`` input pixels; greedily, by decreasing pose score (the reference
           ranks by the centre score), a candidate is kept unless it duplicates an already kept
           one (:func:`tfpose.postprocess.nms.greedy_nms`). Comparing the regressed poses rather than the absorbed
           ones keeps two people apart when one's unlabelled / unseen keypoints absorb the
           other's candidates;
        7. people sorted by decreasing score; rows past ``num_people`` are zero.
    """

    config_class = DekrConfig

    def __init__(self, config, spec, input_size):
        super().__init__(config, spec, input_size)
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"codec: {e}") from None
        self.stride = int(config.stride)
        if self.input_size % self.stride:
            raise ConfigError(f"codec.stride: input_size {self.input_size} is not a multiple of "
                              f"stride {self.stride}")
        self.map_size = self.input_size // self.stride
        self.scorer = None

    # -- shapes ------------------------------------------------------------------------------------
    def target_signature(self) -> dict:
        n, k = self.map_size, self.num_keypoints
        return {
            "heatmaps": tf.TensorSpec([n, n, k], tf.float32),
            "center": tf.TensorSpec([n, n, 1], tf.float32),
            "heatmap_weights": tf.TensorSpec([n, n, k + 1], tf.float32),
            "offsets": tf.TensorSpec([n, n, 2 * k], tf.float32),
            "offset_weights": tf.TensorSpec([n, n, k], tf.float32),
        }

    # -- encode ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def encode(self, keypoints, valid_mask) -> dict:
        """Targets of one sample (class docstring): keypoints [N, K, 3], valid_mask [S, S]."""
        cfg = self.config
        s, n = self.stride, self.map_size
        x, y, inside, valid_mask = self.labelled_inside(keypoints, valid_mask)  # [N, K]
        on = tf.cast(inside, tf.float32)
        count = tf.reduce_sum(on, axis=1)
        person = count > 0  # [N]
        cx = tf.reduce_sum(x * on, axis=1) / tf.maximum(count, 1.0)
        cy = tf.reduce_sum(y * on, axis=1) / tf.maximum(count, 1.0)

        valid = maps.valid_cells(valid_mask, n, s)  # [n, n]
        heat = maps.gaussian_heatmaps(x, y, inside, n, s, cfg.sigma)
        centre = maps.gaussian_heatmaps(cx[:, None], cy[:, None], person[:, None], n, s,
                                        cfg.center_sigma)
        regions = tf.concat([
            maps.square_regions(x, y, inside, n, s, REGION_SIGMAS * cfg.sigma),
            maps.square_regions(cx[:, None], cy[:, None], person[:, None], n, s,
                                REGION_SIGMAS * cfg.center_sigma)], axis=-1)
        bg = float(cfg.bg_weight)
        weights = (bg + (1.0 - bg) * regions) * valid[..., None]
        offsets, offset_weights = self._offsets(x, y, inside, cx, cy, person, valid)
        return {"heatmaps": heat, "center": centre, "heatmap_weights": weights,
                "offsets": offsets, "offset_weights": offset_weights}

    def _offsets(self, x, y, inside, cx, cy, person, valid):
        """Offsets [n, n, 2K] and their weights [n, n, K] (class docstring)."""
        k, s, n = self.num_keypoints, float(self.stride), self.map_size
        r = float(self.config.center_radius)
        # Z_i: diagonal of the labelled-keypoint box, map pixels, >= 1 (Eq. 5)
        far = 4.0 * self.input_size
        w = (tf.reduce_max(tf.where(inside, x, -far), axis=1)
             - tf.reduce_min(tf.where(inside, x, far), axis=1))
        h = (tf.reduce_max(tf.where(inside, y, -far), axis=1)
             - tf.reduce_min(tf.where(inside, y, far), axis=1))
        z = tf.where(person, tf.maximum(tf.sqrt(w * w + h * h) / s, 1.0), 1.0)
        # one extra person without a region, so that N = 0 still has an owner to gather from
        person = tf.concat([person, [False]], axis=0)  # [N + 1]
        mx = tf.concat([cx / s, [0.0]], axis=0)
        my = tf.concat([cy / s, [0.0]], axis=0)
        kx = tf.concat([x / s, tf.zeros([1, k])], axis=0)  # [N + 1, K]
        ky = tf.concat([y / s, tf.zeros([1, k])], axis=0)
        labelled = tf.concat([inside, tf.zeros([1, k], tf.bool)], axis=0)
        z = tf.concat([z, [1.0]], axis=0)

        centres = tf.range(n, dtype=tf.float32) + 0.5
        dx = centres[None, :] - mx[:, None]  # [N + 1, n] along columns
        dy = centres[None, :] - my[:, None]  # [N + 1, n] along rows
        in_region = ((tf.abs(dy) <= r)[:, :, None] & (tf.abs(dx) <= r)[:, None, :]
                     & person[:, None, None])  # [N + 1, n, n]
        dist = tf.where(in_region, tf.square(dy)[:, :, None] + tf.square(dx)[:, None, :], _FAR)
        owner = tf.argmin(dist, axis=0, output_type=tf.int32)  # [n, n]: first of equal distances
        owned = tf.reduce_any(in_region, axis=0)

        ox = tf.gather(kx, owner) - centres[None, :, None]  # [n, n, K]
        oy = tf.gather(ky, owner) - centres[:, None, None]
        live = tf.cast(tf.gather(labelled, owner) & owned[..., None], tf.float32)
        offsets = tf.reshape(tf.stack([ox, oy], axis=-1) * live[..., None], [n, n, 2 * k])
        weights = live / tf.gather(z, owner)[..., None] * valid[..., None]
        return offsets, weights

    # -- oracle ------------------------------------------------------------------------------------
    def oracle_outputs(self, targets: dict) -> dict:
        """The targets themselves: heatmaps, centre heatmap and offsets (batched)."""
        return {key: tf.convert_to_tensor(targets[key], tf.float32)
                for key in ("heatmaps", "center", "offsets")}

    # -- test-time hooks ---------------------------------------------------------------------------
    def _outputs(self, outputs: dict):
        heat = tf.convert_to_tensor(outputs["heatmaps"], tf.float32)
        centre = tf.convert_to_tensor(outputs["center"], tf.float32)
        offsets = tf.convert_to_tensor(outputs["offsets"], tf.float32)
        k = self.num_keypoints
        if heat.shape[3] != k or centre.shape[3] != 1 or offsets.shape[3] != 2 * k:
            raise ValueError(f"dekr outputs need heatmaps [B, H, W, {k}], center [B, H, W, 1], "
                             f"offsets [B, H, W, {2 * k}]; got {heat.shape}, {centre.shape}, "
                             f"{offsets.shape}")
        return heat, centre, offsets

    def flip_outputs(self, outputs: dict) -> dict:
        """Outputs of the horizontally flipped image in the original frame: every map mirrored
        along W, keypoint channels permuted by ``spec.flip_index``, offsets dx negated (keypoint k
        of the original is keypoint flip_index[k] of the flipped image, at S - x)."""
        heat, centre, offsets = self._outputs(outputs)
        k = self.num_keypoints
        flip = tf.constant(self.spec.flip_index, tf.int32)
        h, w = _static_hw(offsets)
        pairs = tf.reshape(tf.reverse(offsets, axis=[2]), [-1, h, w, k, 2])
        pairs = tf.gather(pairs, flip, axis=3) * tf.constant([-1.0, 1.0])
        return {"heatmaps": tf.gather(tf.reverse(heat, axis=[2]), flip, axis=3),
                "center": tf.reverse(centre, axis=[2]),
                "offsets": tf.reshape(pairs, [-1, h, w, 2 * k])}

    def resize_outputs(self, outputs: dict, size: int, scale: float) -> dict:
        """Outputs of the input scaled by ``scale`` as size x size maps of the unscaled input:
        bilinear (half-pixel centres) resize of every map, offsets divided by ``scale``."""
        heat, centre, offsets = self._outputs(outputs)
        size = [int(size), int(size)]

        def resize(t):
            return tf.image.resize(t, size, method="bilinear")

        return {"heatmaps": resize(heat), "center": resize(centre),
                "offsets": resize(offsets) * (1.0 / float(scale))}

    def load_assets(self, run_dir: str) -> None:
        """Loads the pose scorer ``<run_dir>/scorer.weights.h5`` (trained by the ``scorer``
        stage) when ``use_scorer`` is set and the file exists; otherwise decoding keeps the
        naive score."""
        if not self.config.use_scorer or not run_dir:
            return
        from tfpose.postprocess import scoring

        path = os.path.join(run_dir, scoring.SCORER_WEIGHTS)
        if not os.path.isfile(path):
            return
        scorer = scoring.build_scorer(self.spec)
        scorer.load_weights(path)
        self.scorer = scorer

    # -- decode ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def decode_candidates(self, outputs: dict) -> dict:
        """Grouped pose candidates before scoring and pose NMS (decoding steps 1-4).

        Returns:
            ``keypoints`` float [B, M, K, 3] (x, y, heat value) in input pixels, ``center_scores``
            float [B, M] (centre heat values, decreasing), ``valid`` bool [B, M] (a centre above
            ``center_threshold``), ``regressed`` float [B, M, K, 2] the regressed poses before
            absorption (input pixels; what pose NMS compares); rows of invalid candidates are
            zero.
        """
        cfg = self.config
        heat, centre, offsets = self._outputs(outputs)
        h, w = _static_hw(heat)
        k, m = self.num_keypoints, self.max_people
        scale = tf.constant([self.input_size / w, self.input_size / h], tf.float32)

        # 1.-2. centres and the poses regressed from them
        cval, cidx = peaks.find_peaks(centre, cfg.center_nms_kernel, m)  # [B, 1, M']
        missing = m - int(cval.shape[2])
        if missing > 0:  # fewer pixels than people
            cval = tf.pad(cval, [[0, 0], [0, 0], [0, missing]])
            cidx = tf.pad(cidx, [[0, 0], [0, 0], [0, missing]])
        off = peaks.gather(tf.reshape(offsets, [-1, h, w, 1, 2 * k]), cidx)  # [B, 1, M, 2K]
        col, row = peaks.index_to_xy(cidx[:, 0], w)  # [B, M]
        origin = tf.stack([tf.cast(col, tf.float32), tf.cast(row, tf.float32)], axis=-1) + 0.5
        regressed = origin[:, :, None, :] + tf.reshape(off, [-1, m, k, 2])  # [B, M, K, 2] map px
        cval = cval[:, 0]
        valid = cval > cfg.center_threshold

        # 3. keypoint candidates
        kval, kidx = peaks.find_peaks(heat, cfg.nms_kernel, cfg.num_candidates)  # [B, K, C]
        kcol, krow = peaks.index_to_xy(kidx, w)
        cand = (tf.stack([tf.cast(kcol, tf.float32), tf.cast(krow, tf.float32)], axis=-1) + 0.5
                + peaks.subpixel_offsets(heat, kidx))  # [B, K, C, 2] map px
        cand_ok = kval > cfg.keypoint_threshold

        # 4. absorption (distances in input pixels)
        diff = (regressed[:, :, :, None, :] - cand[:, None]) * scale  # [B, M, K, C, 2]
        dist = tf.where(cand_ok[:, None], tf.reduce_sum(tf.square(diff), axis=-1), _FAR)
        best = tf.argmin(dist, axis=-1, output_type=tf.int32)  # [B, M, K]
        absorb = tf.reduce_min(dist, axis=-1) < float(cfg.absorb_distance) ** 2
        pick = tf.one_hot(best, kval.shape[2], dtype=tf.float32)  # [B, M, K, C]
        taken = tf.reduce_sum(pick[..., None] * cand[:, None], axis=3)  # [B, M, K, 2]
        taken_val = tf.reduce_sum(pick * kval[:, None], axis=3)  # [B, M, K]
        pixel_col = tf.clip_by_value(tf.cast(tf.floor(regressed[..., 0]), tf.int32), 0, w - 1)
        pixel_row = tf.clip_by_value(tf.cast(tf.floor(regressed[..., 1]), tf.int32), 0, h - 1)
        pixel = tf.transpose(pixel_row * w + pixel_col, [0, 2, 1])  # [B, K, M]
        own_val = tf.transpose(peaks.gather(heat, pixel), [0, 2, 1])  # [B, M, K]
        xy = tf.where(absorb[..., None], taken, regressed) * scale
        value = tf.where(absorb, taken_val, own_val)
        keypoints = tf.concat([xy, value[..., None]], axis=-1)
        live = tf.cast(valid, tf.float32)
        return {"keypoints": keypoints * live[:, :, None, None],
                "center_scores": cval * live, "valid": valid,
                "regressed": regressed * scale * live[:, :, None, None]}

    def pose_scores(self, keypoints, center_scores) -> tf.Tensor:
        """[B, M] pose scores: the loaded scorer's output, else the naive score (Sec. 3.2)."""
        if self.scorer is not None:
            from tfpose.postprocess import scoring

            features = scoring.pose_features(keypoints, self.spec, float(self.input_size))
            m, f = self.max_people, features.shape[-1]
            return tf.reshape(self.scorer(tf.reshape(features, [-1, f])), [-1, m])
        return tf.reduce_mean(keypoints[..., 2], axis=-1) * center_scores

    @tf.autograph.experimental.do_not_convert
    def decode(self, outputs: dict) -> dict:
        """Poses (class docstring, steps 1-7): keypoints [B, M, K, 3], scores [B, M],
        num_people [B]."""
        cand = self.decode_candidates(outputs)
        keypoints, valid = cand["keypoints"], cand["valid"]
        m = self.max_people
        scores = self.pose_scores(keypoints, cand["center_scores"])
        # 5. candidates by decreasing score, invalid ones last
        _, order = tf.math.top_k(tf.where(valid, scores, -_FAR), k=m)
        keypoints = tf.gather(keypoints, order, batch_dims=1)
        scores = tf.gather(scores, order, batch_dims=1)
        valid = tf.gather(valid, order, batch_dims=1)
        regressed = tf.gather(cand["regressed"], order, batch_dims=1)
        # 6. pose NMS on the regressed poses, then the kept ones first (by decreasing score)
        keep = self._pose_nms(regressed, valid)
        rank = tf.range(m, dtype=tf.float32)
        _, order = tf.math.top_k(tf.where(keep, m - rank, -1.0 - rank), k=m)
        keypoints = tf.gather(keypoints, order, batch_dims=1)
        scores = tf.gather(scores, order, batch_dims=1)
        num_people = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
        # 7. rows past num_people are zero
        on = tf.range(m)[None, :] < num_people[:, None]
        return {"keypoints": tf.where(on[:, :, None, None], keypoints, 0.0),
                "scores": tf.where(on, scores, 0.0),
                "num_people": num_people}

    def _pose_nms(self, poses, valid) -> tf.Tensor:
        """Greedy pose NMS over poses sorted by decreasing score (class docstring, step 6).

        Args:
            poses: float [B, M, K, 2 or more], (x, y, ...) in input pixels.
            valid: bool [B, M].

        Returns:
            bool [B, M], the kept poses.
        """
        cfg = self.config
        m = self.max_people
        xy = poses[..., :2]

        def close_keypoints(index):  # [B, M]: keypoints of pose `index` near each pose's
            own = tf.gather(xy, index, batch_dims=1)[:, None]  # [B, 1, K, 2]
            near = tf.reduce_sum(tf.square(xy - own), axis=-1) < float(cfg.nms_distance) ** 2
            return tf.reduce_sum(tf.cast(near, tf.float32), axis=-1)

        # the poses are in score order: ranks as scores keep it
        order_scores = tf.zeros_like(valid, tf.float32) - tf.range(m, dtype=tf.float32)
        return pose_nms.greedy_nms(close_keypoints, order_scores,
                                   float(cfg.nms_overlap) * self.num_keypoints, m, valid).keep


# Registered as the last statement rather than with a class decorator: tfpose.registry imports
# the method modules, which import this module's names (tfpose.methods.dekr: DekrConfig), so when
# this module is imported first both classes must exist before the registry is loaded from here.
from tfpose.registry import register_codec  # noqa: E402

register_codec("dekr")(DekrCodec)
