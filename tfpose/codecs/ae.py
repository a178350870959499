"""Associative-embedding codec (heatmaps + tags), shared by `de` and `grm`.

Associative Embedding (Newell et al., NIPS 2017) with the HigherHRNet conventions (Cheng et al.,
CVPR 2020): Gaussian keypoint heatmaps at one or more output strides, one tag map per keypoint
type at the lowest resolution, max-pool NMS + top-k + tag grouping + adjust/refine at decoding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfpose.codecs import heatmaps
from tfpose.codecs.base import Codec
from tfpose.config import ConfigError, field
from tfpose.postprocess import grouping, peaks
from tfpose.registry import register_codec


@dataclasses.dataclass
class AEConfig:
    """Associative-embedding codec settings (defaults: HigherHRNet / Associative Embedding)."""

    strides: list[int] = field(default_factory=lambda: [4], low=1,
                               doc="output strides; [4, 2] for HigherHRNet's two resolutions")
    sigma: float = field(2.0, low=0.1, doc="Gaussian sigma at the highest-resolution output")
    scale_sigma: bool = field(True, doc="true: sigma * strides[-1] / stride on coarser maps (the "
                              "same Gaussian in input pixels); false: sigma on every map in its "
                              "own pixels (HigherHRNet: SIGMA 2 on both its 1/4 and 1/2 maps)")
    max_people: int = field(30, low=1)
    nms_kernel: int = field(5, low=1)
    detection_threshold: float = field(0.1, low=0.0, high=1.0)
    tag_threshold: float = field(1.0, low=0.0)
    use_detection_value: bool = field(True, doc="group by tag and heat value (AE paper)")
    adjust: bool = field(True, doc="quarter-pixel shift towards the higher neighbour")
    subpixel: bool = field(True, doc="local Gaussian (log-quadratic) fit around each peak")
    refine: bool = field(True, doc="fill missing keypoints from the person's tag (AE refine)")
    joint_order: list[int] = field(default_factory=list, low=0,
                                   doc="keypoint types in grouping order; empty = from the spec "
                                   "(joints without a parent joint first, then the rest)")

    def validate(self):
        if self.nms_kernel % 2 == 0:
            raise ConfigError(f"nms_kernel = {self.nms_kernel} must be odd")
        if sorted(self.strides, reverse=True) != self.strides or len(set(self.strides)) != len(self.strides):
            raise ConfigError(f"strides {self.strides} must be strictly decreasing")
        if len(set(self.joint_order)) != len(self.joint_order):
            raise ConfigError(f"joint_order {self.joint_order} repeats a keypoint")


def default_joint_order(spec) -> list[int]:
    """Grouping order from the spec: joints without a parent joint (root joints and joints hanging
    from the body centre) first, then the others, each in spec order. For COCO this is the order
    of the Associative Embedding / HigherHRNet reference (`Params.joint_order`): face, shoulders,
    hips, then elbows, wrists, knees, ankles. Specs without a hierarchy keep their own order."""
    k = spec.num_keypoints
    if not spec.parents:
        return list(range(k))
    first = [i for i in range(k) if spec.parents[i] < 0]
    return first + [i for i in range(k) if spec.parents[i] >= 0]


@register_codec("ae")
class AECodec(Codec):
    """Associative-embedding heatmaps + tags (AE Sec. 3; HigherHRNet Sec. 3.3-3.4).

    Symbols as in :mod:`tfpose.codecs.base`; strides s in ``config.strides`` (decreasing), the
    tag stride s_t = strides[0] (lowest resolution, as HigherHRNet's AE loss on its 1/4 output),
    the decoding stride s_d = strides[-1] (highest resolution), H_s = W_s = S / s.

    Encoded keys (one sample, ``target_signature``):
        * ``heatmaps_{s}`` float [H_s, W_s, K]: per type, the max over people of
          exp(-((j + 0.5 - x / s)^2 + (i + 0.5 - y / s)^2) / (2 sigma_s^2)), the Gaussian at the
          continuous location evaluated at pixel centres (not rounded: the peak keeps the
          sub-pixel location; the value is 1 only for a keypoint at a pixel centre). sigma_s =
          sigma * s_d / s with ``scale_sigma`` (the same width in input pixels at every stride,
          so maps of different strides agree once resized), else sigma on every map: HigherHRNet
          uses the latter (DATASET.SIGMA 2 for both its 128 and 256 outputs of a 512 input).
          The Gaussian is not truncated. Keypoints with v = 0 or outside [0, S) x [0, S) give none
          (HigherHRNet's rule).
        * ``mask_{s}`` float [H_s, W_s]: 1 where the loss applies; an output pixel is ignored (0)
          when any input pixel of its s x s cell is ignored (min-pooling of ``valid_mask``).
        * ``tag_index`` int32 [P, K, 2]: (floor(y / s_t) * W_{s_t} + floor(x / s_t), 1) for each
          labelled keypoint inside the input, (0, 0) otherwise (HigherHRNet ``JointsGenerator``).
          People without such a keypoint are skipped; of the rest the first P in input order are
          kept, later ones get no tags (their heatmaps are still drawn).

    Network outputs for ``decode`` (``outputs``), at one resolution H x W (the stride is S / W):
        * ``heatmaps`` float [B, H, W, K], already merged by the model (HigherHRNet: resize every
          resolution's heatmaps to the highest one and average, flip-test average included);
        * ``tags`` float [B, H, W, K] or [B, H, W, K, T] (T = 2 with flip test), resized to the
          same H x W.
        Models are expected to decode at s_d; ``oracle_outputs`` does.

    Decoding (TF ops, static shapes, P = ``max_people`` person slots; converts to TFLite
    builtins):
        1. max-pool NMS with ``nms_kernel`` and the top-P positive peaks of each type
           (:func:`tfpose.postprocess.peaks.find_peaks`; of two adjacent equal maxima, as a
           Gaussian on a pixel border gives, the one in the pixel containing the point is kept);
        2. greedy tag grouping in ``joint_order``
           (:func:`tfpose.postprocess.grouping.group_by_tags`; the reference's Hungarian matching per type is replaced by greedy matching by
           increasing cost, candidates above ``detection_threshold`` only, joining needs a tag
           distance below ``tag_threshold``, people past P are not started);
        3. person score = mean over the K types of the grouped detection values (0 for missing
           types; HigherHRNet ``HeatmapParser.parse`` takes it before refine);
        4. ``refine``: missing types filled as AE's refine
           (:func:`~tfpose.postprocess.grouping.refine_by_tags`);
        5. sub-pixel location of every keypoint (:func:`tfpose.postprocess.peaks.subpixel_offsets`:
           ``subpixel`` log-quadratic fit, exact for a lone encoded Gaussian; ``adjust`` quarter-
           pixel shift, also the fallback where the fit is not possible), mapped to input pixels
           as ((column + 0.5 + dx) * S / W, (row + 0.5 + dy) * S / H); keypoint score = the heat
           at its pixel;
        6. people sorted by decreasing score; rows past ``num_people`` are zero.
    """

    config_class = AEConfig

    def __init__(self, config, spec, input_size):
        super().__init__(config, spec, input_size)
        self.strides = [int(s) for s in config.strides]
        for s in self.strides:
            if self.input_size % s:
                raise ConfigError(f"codec.strides: input_size {self.input_size} is not a multiple "
                                  f"of stride {s}")
        self.tag_stride = self.strides[0]
        self.decode_stride = self.strides[-1]
        if self.tag_stride % self.decode_stride:
            raise ConfigError(f"codec.strides: {self.tag_stride} is not a multiple of "
                              f"{self.decode_stride}")
        order = list(config.joint_order) or default_joint_order(spec)
        if sorted(order) != list(range(self.num_keypoints)):
            raise ConfigError(f"codec.joint_order {order} is not an order of the "
                              f"{self.num_keypoints} keypoints of spec '{spec.name}'")
        self.joint_order = order

    # -- shapes ------------------------------------------------------------------------------------
    def map_size(self, stride: int) -> int:
        return self.input_size // int(stride)

    def sigma_at(self, stride: int) -> float:
        """Gaussian sigma in the pixels of the stride-`stride` map (see the class docstring)."""
        if self.config.scale_sigma:
            return float(self.config.sigma) * self.decode_stride / float(stride)
        return float(self.config.sigma)

    def target_signature(self) -> dict:
        k = self.num_keypoints
        sig = {}
        for s in self.strides:
            n = self.map_size(s)
            sig[f"heatmaps_{s}"] = tf.TensorSpec([n, n, k], tf.float32)
            sig[f"mask_{s}"] = tf.TensorSpec([n, n], tf.float32)
        sig["tag_index"] = tf.TensorSpec([self.max_people, k, 2], tf.int32)
        return sig

    # -- encode ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def encode(self, keypoints, valid_mask) -> dict:
        """Targets of one sample (class docstring): keypoints [N, K, 3], valid_mask [S, S]."""
        x, y, inside, valid_mask = self.labelled_inside(keypoints, valid_mask)  # [N, K]
        out = {}
        for s in self.strides:
            n = self.map_size(s)
            out[f"heatmaps_{s}"] = heatmaps.gaussian_heatmaps(x, y, inside, n, s, self.sigma_at(s))
            out[f"mask_{s}"] = heatmaps.valid_cells(valid_mask, n, s)
        out["tag_index"] = self._tag_index(x, y, inside)
        return out

    def _tag_index(self, x, y, inside) -> tf.Tensor:
        s, w = self.tag_stride, self.map_size(self.tag_stride)
        flat = tf.cast(tf.floor(y / s), tf.int32) * w + tf.cast(tf.floor(x / s), tf.int32)
        flat = tf.where(inside, flat, tf.zeros_like(flat))
        entries = tf.stack([flat, tf.cast(inside, tf.int32)], axis=-1)  # [N, K, 2]
        labelled = tf.reduce_any(inside, axis=1)
        rank = tf.cumsum(tf.cast(labelled, tf.int32), exclusive=True)
        keep = labelled & (rank < self.max_people)
        return tf.scatter_nd(tf.boolean_mask(rank, keep)[:, None], tf.boolean_mask(entries, keep),
                             [self.max_people, self.num_keypoints, 2])

    # -- decode ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def decode(self, outputs: dict) -> dict:
        """Poses from network outputs (see the class docstring)."""
        cfg = self.config
        heat = tf.convert_to_tensor(outputs["heatmaps"], tf.float32)
        tags = tf.convert_to_tensor(outputs["tags"], tf.float32)
        if tags.shape.rank == 4:
            tags = tags[..., None]
        h, w, k = heat.shape[1], heat.shape[2], heat.shape[3]
        if h is None or w is None or k != self.num_keypoints:
            raise ValueError(f"heatmaps must be [B, H, W, {self.num_keypoints}] with static H, W; "
                             f"got {heat.shape}")
        p = self.max_people

        with tf.name_scope("peaks"):
            values, index = peaks.find_peaks(heat, cfg.nms_kernel, p)  # [B, K, M]
        with tf.name_scope("group"):
            groups = grouping.group_by_tags(
                values, peaks.gather(tags, index), max_people=p, joint_order=self.joint_order,
                detection_threshold=cfg.detection_threshold, tag_threshold=cfg.tag_threshold,
                use_detection_value=cfg.use_detection_value)
        active = groups["active"]  # [B, P]
        assign = tf.transpose(groups["assignment"], [0, 2, 1])  # [B, K, P]
        present = assign >= 0
        safe = tf.maximum(assign, 0)
        pixel = tf.gather(index, safe, batch_dims=2)  # [B, K, P]
        value = tf.where(present, tf.gather(values, safe, batch_dims=2), 0.0)
        score = tf.reduce_mean(value, axis=1)  # [B, P], before refine as HigherHRNet

        if cfg.refine:
            with tf.name_scope("refine"):
                r_pixel, r_value, filled = grouping.refine_by_tags(
                    heat, tags, groups["person_tags"], active, ~tf.transpose(present, [0, 2, 1]))
            filled = tf.transpose(filled, [0, 2, 1])
            pixel = tf.where(filled, tf.transpose(r_pixel, [0, 2, 1]), pixel)
            value = tf.where(filled, tf.transpose(r_value, [0, 2, 1]), value)
            present = present | filled

        with tf.name_scope("locate"):
            offset = peaks.subpixel_offsets(heat, pixel, cfg.adjust, cfg.subpixel)  # [B, K, P, 2]
        col, row = peaks.index_to_xy(pixel, w)
        kx = (tf.cast(col, tf.float32) + 0.5 + offset[..., 0]) * (self.input_size / w)
        ky = (tf.cast(row, tf.float32) + 0.5 + offset[..., 1]) * (self.input_size / h)
        kpts = tf.stack([kx, ky, value], axis=-1) * tf.cast(present, tf.float32)[..., None]
        kpts = tf.transpose(kpts, [0, 2, 1, 3])  # [B, P, K, 3]

        key = tf.where(active, score, tf.fill(tf.shape(score), -np.inf))
        order = tf.argsort(key, axis=1, direction="DESCENDING", stable=True)
        active = tf.gather(active, order, batch_dims=1)
        on = tf.cast(active, tf.float32)
        return {
            "keypoints": tf.gather(kpts, order, batch_dims=1) * on[:, :, None, None],
            "scores": tf.gather(score, order, batch_dims=1) * on,
            "num_people": tf.reduce_sum(tf.cast(active, tf.int32), axis=1),
        }

    # -- oracle ------------------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert
    def oracle_outputs(self, targets: dict) -> dict:
        """Ideal network outputs at the decoding stride s_d for batched targets.

        ``heatmaps`` = ``heatmaps_{s_d}`` (the ideal merged heatmap is the highest-resolution
        target itself; averaging in a resized coarser target would blur the sub-pixel peak).
        ``tags``: person p's keypoint k gets the value (p + 1) * 2 * tag_threshold at its
        ``tag_index`` pixel of the stride-s_t map, 0 elsewhere (people 2 thresholds apart, none
        at the background's 0), where two people's keypoints of one type share a pixel the
        higher value wins; then each s_t pixel is repeated over its (s_t / s_d)^2 decoding
        pixels, so a peak in decoding pixel floor(x / s_d) reads the tag of floor(x / s_t).
        With tag_threshold = 0 no candidate can join a person (every detection is one person).
        """
        heat = tf.convert_to_tensor(targets[f"heatmaps_{self.decode_stride}"], tf.float32)
        tag_index = tf.convert_to_tensor(targets["tag_index"], tf.int32)  # [B, P, K, 2]
        batch = tf.shape(tag_index)[0]
        p, k = self.max_people, self.num_keypoints
        n = self.map_size(self.tag_stride)
        person_value = (tf.range(p, dtype=tf.float32) + 1.0) * (2.0 * self.config.tag_threshold)
        valid = tag_index[..., 1] > 0
        values = tf.where(valid, tf.broadcast_to(person_value[None, :, None], [batch, p, k]), 0.0)
        b = tf.broadcast_to(tf.range(batch)[:, None, None], [batch, p, k])
        kk = tf.broadcast_to(tf.range(k)[None, None, :], [batch, p, k])
        idx = tf.stack([b, tag_index[..., 0], kk], axis=-1)
        tags = tf.tensor_scatter_nd_max(tf.zeros([batch, n * n, k], tf.float32),
                                        tf.reshape(idx, [-1, 3]), tf.reshape(values, [-1]))
        tags = tf.reshape(tags, [batch, n, n, k])
        ratio = self.tag_stride // self.decode_stride
        if ratio > 1:
            tags = tf.repeat(tf.repeat(tags, ratio, axis=1), ratio, axis=2)
        return {"heatmaps": heat, "tags": tags}
