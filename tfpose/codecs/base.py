"""Codec base class: encode ground truth into training targets, decode network outputs to poses.

Pixel convention (used everywhere in tfpose, tested in tests/unit/codecs):
    Continuous coordinates. Pixel (row i, column j) covers [j, j + 1) x [i, i + 1) and its centre
    is (j + 0.5, i + 0.5). COCO and CrowdPose coordinates are taken as continuous coordinates as
    they are; MPII's 1-based MATLAB pixel indices are shifted by -0.5 (tfpose.data.mpii). A point x in input pixels is x / s on a stride-s output map, and a
    horizontal flip of a width-W image maps x to W - x.

Symbols: B batch, N people in one image (ground truth), P = ``max_people`` decoded people,
K keypoints of the spec, S the square input size, H = W = S / stride the output map size.

Every codec:
    * ``encode(keypoints [N, K, 3], valid_mask [S, S]) -> dict`` runs inside tf.data on one sample;
      keypoints are (x, y, v) in input pixels with v = 0 for unlabelled or dropped keypoints;
      ``valid_mask`` is 1 where the loss applies and 0 in ignored regions (crowds, people with no
      labelled keypoint). The returned tensors have static shapes (``target_signature``).
    * ``decode(outputs) -> {"keypoints": [B, P, K, 3], "scores": [B, P], "num_people": [B]}`` is
      the only decoding path in tfpose (evaluation, predict, SavedModel, TFLite, ONNX). Keypoints
      are (x, y, score) in input pixels; rows past ``num_people`` are zero. TF ops only, static
      shapes.
    * ``oracle_outputs(targets) -> outputs``: the ideal network outputs for batched targets, so
      ``decode(oracle_outputs(encode(gt)))`` measures the codec's own upper bound.
"""

from __future__ import annotations

import tensorflow as tf

from tfpose.keypoints import KeypointSpec


class Codec:
    """Base class. Subclasses set ``name`` and ``config_class`` and register with
    :func:`tfpose.registry.register_codec`.

    Args:
        config: the codec's config dataclass (``config.codec``).
        spec: KeypointSpec.
        input_size: int, the square network input size S in pixels.
    """

    name = ""
    config_class = None

    def __init__(self, config, spec: KeypointSpec, input_size: int):
        self.config = config
        self.spec = spec
        self.input_size = int(input_size)
        self.num_keypoints = spec.num_keypoints

    # -- to implement --------------------------------------------------------------------------
    def target_signature(self) -> dict:
        """name -> tf.TensorSpec of one sample's targets (no batch axis)."""
        raise NotImplementedError

    def encode(self, keypoints: tf.Tensor, valid_mask: tf.Tensor) -> dict:
        raise NotImplementedError

    def decode(self, outputs: dict) -> dict:
        raise NotImplementedError

    def oracle_outputs(self, targets: dict) -> dict:
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------
    @property
    def max_people(self) -> int:
        return int(self.config.max_people)

    def empty_poses(self, batch_size) -> dict:
        """The decoded structure with no person (used for zero-person short cuts)."""
        p, k = self.max_people, self.num_keypoints
        return {
            "keypoints": tf.zeros([batch_size, p, k, 3], tf.float32),
            "scores": tf.zeros([batch_size, p], tf.float32),
            "num_people": tf.zeros([batch_size], tf.int32),
        }
