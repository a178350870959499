"""Affine geometry of the data pipeline: random augmentation, eval letterbox, warping (TF ops).

Every transform is a float32 [3, 3] matrix ``A`` mapping *original image* pixels to *input* pixels
(homogeneous column vectors, ``p_input = A @ p_original``), in the continuous pixel convention of
:mod:`tfpose.codecs.base`: pixel (row i, column j) covers [j, j + 1) x [i, i + 1), its centre is
(j + 0.5, i + 0.5). Symbols: H, W the original image size, S the square input size, N people,
K keypoints.

Training augmentation (HigherHRNet / DEKR recipe, ``RandomAffineTransform`` with
``scale_type='long'``): the whole image is fitted into the input by its longer side and centred,
then scaled, rotated and translated about the input centre, then optionally mirrored::

    A = F @ T(S/2 + t) @ R(angle) @ Z(S / (L * s)) @ T(-c)

with c the image centre (W/2, H/2), L = max(H, W), and

    * ``s`` ~ U[scale_min, scale_max]: the side of the square window of the original image mapped
      onto the input, relative to L (the papers' ``aug_scale``). s = 1 fits the longer side
      exactly; s > 1 zooms out (people get smaller), s < 1 zooms in.
    * ``angle`` ~ U[-rotation, rotation] degrees.
    * ``t`` ~ U[-translation, translation]^2, in input pixels.
    * ``F`` mirrors x -> S - x with probability ``flip``; keypoint identities are then swapped
      with ``spec.flip_index`` (:func:`transform_keypoints`).

With ``center_on_person`` (opt-in; PoseDet's recipe, paper 001 Sec. 4.1: "resize factor in
[0.5, 1.5], then cropped centred on a random person to 512x512 patches") ``c`` is instead the
centre of the labelled-keypoint box of a person drawn uniformly among those with a labelled
keypoint (the image centre when there is none), and L = S: the window is s * S original pixels
around the person, resized to the S x S input (zoom 1 / s of the original resolution; the
PoseDet reference's ``CenterRandomCropXiao`` with ``scale_factor`` 0.5).

Evaluation uses the letterbox :func:`eval_affine`: s = 1, no rotation, shift or flip.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _affine(a, b, c, d, e, f) -> tf.Tensor:
    """The [3, 3] matrix [[a, b, c], [d, e, f], [0, 0, 1]] from float32 scalars."""
    zero, one = tf.zeros([], tf.float32), tf.ones([], tf.float32)
    row = lambda *v: tf.stack([tf.cast(x, tf.float32) for x in v])  # noqa: E731
    return tf.stack([row(a, b, c), row(d, e, f), row(zero, zero, one)])


def translation(tx, ty) -> tf.Tensor:
    return _affine(1.0, 0.0, tx, 0.0, 1.0, ty)


def scaling(factor) -> tf.Tensor:
    return _affine(factor, 0.0, 0.0, 0.0, factor, 0.0)


def rotation(degrees) -> tf.Tensor:
    """Rotation about the origin; positive angles turn +x towards +y (clockwise on screen)."""
    rad = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    c, s = tf.cos(rad), tf.sin(rad)
    return _affine(c, -s, 0.0, s, c, 0.0)


def hflip(input_size) -> tf.Tensor:
    """Horizontal mirror of a width-S image: x -> S - x."""
    return _affine(-1.0, 0.0, float(input_size), 0.0, 1.0, 0.0)


def _image_frame(image_hw, center, extent):
    hw = tf.cast(image_hw, tf.float32)
    if center is None:
        center = tf.stack([hw[1] / 2.0, hw[0] / 2.0])
    if extent is None:
        extent = tf.reduce_max(hw)
    return tf.cast(center, tf.float32), tf.cast(extent, tf.float32)


def _uniform(seed, shape):
    """U[0, 1) draws from a stateless seed (int [2]) or a ``tf.random.Generator``."""
    if isinstance(seed, tf.random.Generator):
        return seed.uniform(shape, dtype=tf.float32)
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


def person_center(keypoints, u):
    """Centre of the labelled-keypoint box of one person picked by ``u`` (``center_on_person``).

    Args:
        keypoints: float [N, K, 3], (x, y, v) in original pixels.
        u: float scalar in [0, 1); person ``floor(u * P)`` of the P people with a labelled
            (v > 0) keypoint, in their order in ``keypoints``.

    Returns:
        (center float32 [2] (x, y), found bool scalar); center is (0, 0) when P = 0.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    people = tf.boolean_mask(keypoints, tf.reduce_any(keypoints[..., 2] > 0, axis=-1))
    count = tf.shape(people)[0]

    def pick():
        index = tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)
        person = tf.gather(people, index)
        xy = tf.boolean_mask(person[:, :2], person[:, 2] > 0)
        return (tf.reduce_min(xy, axis=0) + tf.reduce_max(xy, axis=0)) / 2.0

    center = tf.cond(count > 0, pick, lambda: tf.zeros([2], tf.float32))
    return center, count > 0


def random_affine(aug_cfg, image_hw, input_size: int, seed, center=None, extent=None,
                  keypoints=None):
    """Draws one training transform (see the module docstring for the composition).

    Args:
        aug_cfg: AugmentConfig.
        image_hw: int [2], (H, W) of the original image.
        input_size: int, S.
        seed: int32/int64 [2] stateless seed, or a ``tf.random.Generator``.
        center: optional float [2], (x, y) point brought to the input centre; defaults to the
            image centre (a top-down method passes a person box centre), or with
            ``aug_cfg.center_on_person`` to a random labelled person's centre.
        extent: optional float scalar, the original-pixel length fitted to S at s = 1; defaults
            to the longer image side, or to S with ``aug_cfg.center_on_person``.
        keypoints: optional float [N, K, 3] in original pixels; needed (and only read) when
            ``aug_cfg.center_on_person`` is set and ``center`` is not given.

    Returns:
        (matrix float32 [3, 3] original -> input pixels, flipped bool scalar).
    """
    on_person = bool(getattr(aug_cfg, "center_on_person", False)) and center is None
    if on_person and keypoints is None:
        raise ValueError("data.augment.center_on_person = true needs the keypoints: "
                         "random_affine(..., keypoints=[N, K, 3])")
    if on_person and extent is None:
        extent = float(input_size)
    center, extent = _image_frame(image_hw, center, extent)
    # One more draw (the person) only with center_on_person: the default stream is unchanged.
    u = _uniform(seed, [6 if on_person else 5])
    if on_person:
        chosen, found = person_center(keypoints, u[5])
        center = tf.where(found, chosen, center)
    s = aug_cfg.scale_min + u[0] * (aug_cfg.scale_max - aug_cfg.scale_min)
    angle = (2.0 * u[1] - 1.0) * aug_cfg.rotation
    shift = (2.0 * u[2:4] - 1.0) * aug_cfg.translation
    flipped = u[4] < aug_cfg.flip
    half = input_size / 2.0
    matrix = (translation(half + shift[0], half + shift[1]) @ rotation(angle)
              @ scaling(input_size / (extent * s)) @ translation(-center[0], -center[1]))
    matrix = tf.where(flipped, hflip(input_size) @ matrix, matrix)
    return matrix, flipped


def eval_affine(image_hw, input_size: int, center=None, extent=None) -> tf.Tensor:
    """Letterbox: the longer side fitted to S, aspect ratio kept, image centred in the input.

    Returns float32 [3, 3], original -> input pixels.
    """
    center, extent = _image_frame(image_hw, center, extent)
    half = input_size / 2.0
    return (translation(half, half) @ scaling(input_size / extent)
            @ translation(-center[0], -center[1]))


def invert_affine(matrix) -> tf.Tensor:
    """Inverse of a [3, 3] affine matrix (input -> original for a pipeline transform)."""
    a = matrix[:2, :2]
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    inv_a = tf.stack([tf.stack([a[1, 1], -a[0, 1]]), tf.stack([-a[1, 0], a[0, 0]])]) / det
    inv_t = -tf.linalg.matvec(inv_a, matrix[:2, 2])
    return tf.concat([tf.concat([inv_a, inv_t[:, None]], axis=1),
                      tf.constant([[0.0, 0.0, 1.0]], tf.float32)], axis=0)


def _sampling_transform(matrix) -> tf.Tensor:
    """float32 [8]: ImageProjectiveTransformV3's output-index -> input-index map for ``matrix``.

    The op samples the source at integer index coordinates (pixel centres) and maps *output*
    indices to *input* indices, so with our centres at +0.5:
    ``idx_in = A^-1 (idx_out + 0.5) - 0.5``.
    """
    half = tf.constant([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], tf.float32)
    minus_half = tf.constant([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]], tf.float32)
    t = minus_half @ invert_affine(tf.cast(matrix, tf.float32)) @ half
    return tf.reshape(t, [9])[:8]


def _project(image, matrix, input_size, interpolation, fill_value=0.0):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=_sampling_transform(matrix)[None],
        output_shape=tf.constant([input_size, input_size], tf.int32),
        fill_value=tf.constant(fill_value, tf.float32), interpolation=interpolation,
        fill_mode="CONSTANT")[0]


def warp_image(image, matrix, input_size: int) -> tf.Tensor:
    """Bilinear warp of an image into the S x S input; outside the source is 0.

    Args:
        image: [H, W, C] uint8 or float.
        matrix: float32 [3, 3], original -> input pixels.
        input_size: int, S.

    Returns:
        float32 [S, S, C] (same value range as ``image``).
    """
    return _project(tf.cast(image, tf.float32), matrix, input_size, "BILINEAR")


def warp_mask(mask, matrix, input_size: int, method: str = "nearest", threshold=None):
    """Warps a binary [H, W] mask into the input.

    ``method='nearest'`` (what the pipeline uses) takes the source pixel whose centre is nearest
    to each output pixel centre, so values stay binary with no threshold. ``method='bilinear'``
    interpolates and then keeps ``value >= threshold`` (``threshold`` must be given, e.g. the
    HigherHRNet 0.5 convention); this follows thin mask structures more smoothly when zooming in.
    Outside the source is 0.

    Returns float32 [S, S] in {0, 1}.
    """
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 2:
        mask = mask[..., None]
    if method == "nearest":
        return tf.cast(_project(mask, matrix, input_size, "NEAREST")[..., 0] > 0, tf.float32)
    if method == "bilinear":
        if threshold is None:
            raise ValueError("warp_mask(method='bilinear') needs a threshold")
        soft = _project(tf.cast(mask, tf.float32), matrix, input_size, "BILINEAR")[..., 0]
        return tf.cast(soft >= threshold, tf.float32)
    raise ValueError(f"warp_mask: method must be 'nearest' or 'bilinear', got {method!r}")


def transform_keypoints(keypoints, matrix, flipped, flip_index, input_size: int) -> tf.Tensor:
    """Maps keypoints into the input.

    Args:
        keypoints: float32 [N, K, 3], (x, y, v) in original pixels.
        matrix: float32 [3, 3] original -> input pixels (already including the mirror when
            ``flipped``).
        flipped: bool scalar; when true keypoint k of the result is keypoint ``flip_index[k]`` of
            the source (left and right swap).
        flip_index: int [K], ``spec.flip_index``.
        input_size: int, S.

    Returns:
        float32 [N, K, 3] in input pixels; v = 0 (and x = y = 0) for keypoints that were
        unlabelled or fall outside [0, S) x [0, S); other v values are kept.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    matrix = tf.cast(matrix, tf.float32)
    xy = tf.einsum("nkj,ij->nki", keypoints[..., :2], matrix[:2, :2]) + matrix[:2, 2]
    v = keypoints[..., 2]
    flip_index = tf.convert_to_tensor(flip_index, tf.int32)
    order = tf.where(flipped, flip_index, tf.range(tf.shape(flip_index)[0], dtype=tf.int32))
    xy = tf.gather(xy, order, axis=1)
    v = tf.gather(v, order, axis=1)
    size = float(input_size)
    inside = ((v > 0) & (xy[..., 0] >= 0) & (xy[..., 0] < size)
              & (xy[..., 1] >= 0) & (xy[..., 1] < size))
    keep = tf.cast(inside, tf.float32)
    return tf.concat([xy * keep[..., None], (v * keep)[..., None]], axis=-1)
