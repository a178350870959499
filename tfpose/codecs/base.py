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

Hooks with a default (test-time augmentation and learned decoding parts):
    * ``flip_outputs(outputs) -> outputs``: the outputs of the horizontally flipped image mapped
      back to the original frame (maps mirrored along W, left/right channels swapped with
      ``spec.flip_index``, x components of geometric channels negated), so they can be averaged
      with the outputs of the image itself. Base: NotImplementedError naming the codec.
    * ``resize_outputs(outputs, size, scale) -> outputs``: the outputs of the input scaled by
      ``scale`` resized (bilinear, half-pixel centres) to size x size maps, geometric channels
      (lengths in map pixels) divided by ``scale``, for multi-scale testing. Base:
      NotImplementedError naming the codec.
    * ``load_assets(run_dir)``: loads learned decoding parts saved by a training run (e.g. a pose
      scorer) before decoding. Base: nothing to load.
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

    # -- hooks with defaults --------------------------------------------------------------------
    def flip_outputs(self, outputs: dict) -> dict:
        """Outputs of the horizontally flipped image mapped back to the original frame."""
        raise NotImplementedError(f"codec '{self.name}' does not support flip testing "
                                  "(flip_outputs)")

    def resize_outputs(self, outputs: dict, size: int, scale: float) -> dict:
        """Outputs of an input scaled by `scale` resized to size x size maps (module docstring)."""
        raise NotImplementedError(f"codec '{self.name}' does not support multi-scale testing "
                                  "(resize_outputs)")

    def load_assets(self, run_dir: str) -> None:
        """Loads learned decoding parts of the training run in `run_dir`; none by default."""
        del run_dir

    # -- shared helpers ------------------------------------------------------------------------
    def labelled_inside(self, keypoints, valid_mask):
        """Shared start of ``encode``: (x, y, inside, valid_mask) with x, y [N, K] zeroed where
        ``inside`` [N, K] is False (v = 0 or outside [0, S) x [0, S)), valid_mask [S, S]."""
        k, size = self.num_keypoints, self.input_size
        keypoints = tf.reshape(tf.convert_to_tensor(keypoints, tf.float32), [-1, k, 3])
        valid_mask = tf.reshape(tf.convert_to_tensor(valid_mask, tf.float32), [size, size])
        x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
        inside = (v > 0) & (x >= 0) & (x < size) & (y >= 0) & (y < size)
        x = tf.where(inside, x, tf.zeros_like(x))
        y = tf.where(inside, y, tf.zeros_like(y))
        return x, y, inside, valid_mask

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
