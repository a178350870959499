"""Affine augmentation: numpy/cv2 references, pixel convention, flips, ranges, letterbox."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import AugmentConfig
from tfpose.data import augment
from tfpose.keypoints import get_spec

S = 128
HALF = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float64)
MINUS_HALF = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], np.float64)


def _image(data_dir):
    path = data_dir / "coco_mini" / "000000000785.jpg"
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].copy()


def _cv2_warp(image, matrix, size, flags=cv2.INTER_LINEAR):
    """cv2 reference: cv2 maps integer indices (pixel centres), ours continuous (+0.5) coords."""
    index_matrix = (MINUS_HALF @ np.asarray(matrix, np.float64) @ HALF)[:2]
    return cv2.warpAffine(image, index_matrix, (size, size), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _np_keypoints(kpts, matrix, flipped, flip_index, size):
    xy = kpts[..., :2] @ matrix[:2, :2].T + matrix[:2, 2]
    v = kpts[..., 2].copy()
    if flipped:
        xy, v = xy[:, flip_index], v[:, flip_index]
    inside = (v > 0) & (xy[..., 0] >= 0) & (xy[..., 0] < size) & (xy[..., 1] >= 0) & (
        xy[..., 1] < size)
    out = np.concatenate([xy, v[..., None]], -1)
    out[~inside] = 0
    return out


def _random_matrices(rng, count):
    cfg = AugmentConfig(rotation=45, scale_min=0.5, scale_max=2.0, translation=30, flip=0.5)
    out = []
    for i in range(count):
        hw = rng.integers(50, 700, size=2)
        m, f = augment.random_affine(cfg, hw, S, tf.constant([i, 7]))
        out.append((m.numpy().astype(np.float64), bool(f), hw))
    return out


def test_transform_keypoints_matches_numpy_reference():
    rng = np.random.default_rng(0)
    spec = get_spec("coco")
    for matrix, flipped, hw in _random_matrices(rng, 20):
        kpts = np.concatenate([rng.uniform(0, 1, (3, spec.num_keypoints, 2)) * hw[::-1],
                               rng.integers(0, 3, (3, spec.num_keypoints, 1))], -1)
        got = augment.transform_keypoints(kpts.astype(np.float32), matrix.astype(np.float32),
                                          flipped, spec.flip_index, S).numpy()
        want = _np_keypoints(kpts, matrix, flipped, spec.flip_index, S)
        np.testing.assert_allclose(got, want, atol=1e-3)
    # an arbitrary (non-similarity) affine with a flip flag
    matrix = np.array([[0.7, 0.2, 5.0], [-0.1, 1.3, -3.0], [0, 0, 1]])
    kpts = np.concatenate([rng.uniform(0, 120, (2, spec.num_keypoints, 2)),
                           np.full((2, spec.num_keypoints, 1), 2.0)], -1)
    got = augment.transform_keypoints(kpts.astype(np.float32), matrix.astype(np.float32), True,
                                      spec.flip_index, S).numpy()
    np.testing.assert_allclose(got, _np_keypoints(kpts, matrix, True, spec.flip_index, S),
                               atol=1e-3)


def test_keypoints_outside_input_are_dropped_and_zeroed():
    kpts = np.array([[[10, 10, 2], [-0.01, 5, 2], [5, 128.0, 1], [127.99, 0, 1], [50, 50, 0]]],
                    np.float32)
    out = augment.transform_keypoints(kpts, np.eye(3, dtype=np.float32), False,
                                      np.arange(5), S).numpy()
    np.testing.assert_array_equal(out[0, :, 2], [2, 0, 0, 1, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 4], [0, 0, 0])


def test_flip_mirrors_x_and_swaps_left_right():
    spec = get_spec("coco")
    hw = (100, 120)
    cfg = AugmentConfig(rotation=0, scale_min=1, scale_max=1, translation=0, flip=1.0)
    m_flip, flipped = augment.random_affine(cfg, hw, S, tf.constant([0, 0]))
    assert bool(flipped)
    m_plain = augment.eval_affine(hw, S)
    np.testing.assert_allclose(m_flip.numpy(), (augment.hflip(S) @ m_plain).numpy(), atol=1e-5)
    rng = np.random.default_rng(1)
    kpts = np.concatenate([rng.uniform(10, 90, (2, spec.num_keypoints, 2)),
                           np.full((2, spec.num_keypoints, 1), 2.0)], -1).astype(np.float32)
    plain = augment.transform_keypoints(kpts, m_plain, False, spec.flip_index, S).numpy()
    flip = augment.transform_keypoints(kpts, m_flip, True, spec.flip_index, S).numpy()
    left, right = spec.names.index("left_wrist"), spec.names.index("right_wrist")
    np.testing.assert_allclose(flip[:, left, 0], S - plain[:, right, 0], atol=1e-4)
    np.testing.assert_allclose(flip[:, left, 1], plain[:, right, 1], atol=1e-4)
    np.testing.assert_allclose(flip[:, :, 0], S - plain[:, spec.flip_index, 0], atol=1e-4)
    # a flip with flip=0 never happens
    cfg.flip = 0.0
    assert not any(bool(augment.random_affine(cfg, hw, S, tf.constant([i, 1]))[1])
                   for i in range(20))


def test_warp_image_matches_cv2_half_pixel_reference(data_dir):
    image = _image(data_dir).astype(np.float32)
    for i in range(4):
        matrix = augment.random_affine(AugmentConfig(), image.shape[:2], S,
                                       tf.constant([i, 3]))[0].numpy()
        got = augment.warp_image(image, matrix, S).numpy()
        want = _cv2_warp(image, matrix, S)
        assert got.shape == (S, S, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=0.1)


def test_warp_image_pixel_convention():
    image = np.random.default_rng(3).uniform(0, 255, (16, 16, 1)).astype(np.float32)
    identity = augment.warp_image(image, np.eye(3, dtype=np.float32), 16).numpy()
    np.testing.assert_allclose(identity, image, atol=1e-4)
    shift = augment.warp_image(image, augment.translation(2.0, 1.0), 16).numpy()
    np.testing.assert_allclose(shift[1:, 2:], image[:-1, :-2], atol=1e-4)
    # 2x upsampling: output pixel (row 1, column 2), centre (2.5, 1.5), samples source point
    # (1.25, 0.75): 3/4 of the way from column 0's centre (0.5) to column 1's (1.5) and 1/4 of the
    # way from row 0's centre to row 1's.
    up = augment.warp_image(image, augment.scaling(2.0), 32).numpy()
    i = image[..., 0]
    want = 0.75 * (0.25 * i[0, 0] + 0.75 * i[0, 1]) + 0.25 * (0.25 * i[1, 0] + 0.75 * i[1, 1])
    np.testing.assert_allclose(up[1, 2, 0], want, rtol=1e-4)
    # and a uint8 input gives the same float result
    as_u8 = np.round(image).astype(np.uint8)
    np.testing.assert_allclose(augment.warp_image(as_u8, augment.scaling(2.0), 32).numpy(),
                               augment.warp_image(as_u8.astype(np.float32), augment.scaling(2.0),
                                                  32).numpy())


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_dot_lands_on_transformed_keypoint(flip):
    h, w = 150, 210
    cfg = AugmentConfig(rotation=40, scale_min=0.7, scale_max=1.3, translation=20, flip=flip)
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    for i in range(6):
        x, y = rng.uniform(60, 150), rng.uniform(50, 100)
        dot = 255.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2))
        matrix, flipped = augment.random_affine(cfg, (h, w), S, tf.constant([i, 11]))
        warped = augment.warp_image(dot[..., None].astype(np.float32), matrix, S).numpy()[..., 0]
        kp = augment.transform_keypoints(np.array([[[x, y, 2]]], np.float32), matrix, flipped,
                                         np.array([0]), S).numpy()[0, 0]
        assert kp[2] == 2
        py, px = np.unravel_index(np.argmax(warped), warped.shape)
        assert abs(px + 0.5 - kp[0]) <= 1.0 and abs(py + 0.5 - kp[1]) <= 1.0
        win = warped[py - 8:py + 9, px - 8:px + 9]
        gy, gx = np.mgrid[py - 8:py + 9, px - 8:px + 9] + 0.5
        cx, cy = (win * gx).sum() / win.sum(), (win * gy).sum() / win.sum()
        assert abs(cx - kp[0]) < 0.5 and abs(cy - kp[1]) < 0.5, (cx, cy, kp)


def test_sampled_parameters_respect_config_ranges():
    cfg = AugmentConfig(rotation=25, scale_min=0.6, scale_max=1.4, translation=15, flip=0.3)
    hw = (300, 400)
    longer = max(hw)
    centre = np.array([hw[1] / 2, hw[0] / 2, 1.0])

    @tf.function
    def draw(seeds):
        return tf.map_fn(lambda s: augment.random_affine(cfg, hw, S, s), seeds,
                         fn_output_signature=(tf.float32, tf.bool))

    seeds = tf.stack([tf.range(2000), tf.fill([2000], 5)], axis=1)
    mats, flips = (t.numpy() for t in draw(seeds))
    mats = mats.astype(np.float64)
    unflip = np.where(flips[:, None, None], (augment.hflip(S).numpy())[None], np.eye(3)[None])
    mats = unflip @ mats  # hflip is its own inverse
    zoom = np.sqrt(np.abs(np.linalg.det(mats[:, :2, :2])))
    scale = S / (longer * zoom)
    angle = np.degrees(np.arctan2(mats[:, 1, 0], mats[:, 0, 0]))
    shift = (mats @ centre)[:, :2] - S / 2
    assert scale.min() >= cfg.scale_min - 1e-4 and scale.max() <= cfg.scale_max + 1e-4
    assert scale.min() < cfg.scale_min + 0.01 and scale.max() > cfg.scale_max - 0.01
    assert np.abs(angle).max() <= cfg.rotation + 1e-3 and np.abs(angle).max() > cfg.rotation - 0.5
    assert np.abs(shift).max() <= cfg.translation + 1e-3
    assert np.abs(shift).max() > cfg.translation - 0.5
    assert abs(flips.mean() - cfg.flip) < 0.05
    # no shear: a similarity transform
    np.testing.assert_allclose(mats[:, 0, 0], mats[:, 1, 1], atol=1e-5)
    np.testing.assert_allclose(mats[:, 0, 1], -mats[:, 1, 0], atol=1e-5)


def test_random_affine_stateless_and_generator():
    cfg = AugmentConfig()
    a = augment.random_affine(cfg, (200, 300), S, tf.constant([3, 4]))[0].numpy()
    b = augment.random_affine(cfg, (200, 300), S, tf.constant([3, 4]))[0].numpy()
    c = augment.random_affine(cfg, (200, 300), S, tf.constant([3, 5]))[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    gen = tf.random.Generator.from_seed(1)
    m, f = augment.random_affine(cfg, (200, 300), S, gen)
    assert m.shape == (3, 3) and f.dtype == tf.bool


@pytest.mark.parametrize("hw", [(425, 640), (640, 300), (128, 128)])
def test_eval_letterbox_and_inverse_round_trip(hw):
    h, w = hw
    m = augment.eval_affine(hw, S).numpy().astype(np.float64)
    corners = np.array([[0, 0, 1], [w, h, 1]], np.float64) @ m.T
    k = S / max(h, w)
    np.testing.assert_allclose(corners[1, :2] - corners[0, :2], [w * k, h * k], atol=1e-3)
    np.testing.assert_allclose((corners[0, :2] + corners[1, :2]) / 2, [S / 2, S / 2], atol=1e-3)
    inv = augment.invert_affine(tf.constant(m, tf.float32)).numpy()
    np.testing.assert_allclose(inv @ m, np.eye(3), atol=1e-5)
    pts = np.random.default_rng(5).uniform(0, 1, (10, 2)) * [w, h]
    back = (np.c_[pts, np.ones(10)] @ m.T) @ inv.T
    np.testing.assert_allclose(back[:, :2], pts, atol=1e-3)
    # the warped image has content exactly where the letterbox puts the original image
    warped = augment.warp_image(np.full((h, w, 1), 200, np.uint8), m, S).numpy()[..., 0]
    x0, y0, x1, y1 = corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1]
    cols = (np.arange(S) + 0.5 > x0 + 1) & (np.arange(S) + 0.5 < x1 - 1)
    rows = (np.arange(S) + 0.5 > y0 + 1) & (np.arange(S) + 0.5 < y1 - 1)
    np.testing.assert_allclose(warped[np.ix_(rows, cols)], 200, atol=1e-3)
    outside = ~(np.arange(S) + 0.5 > x0 - 1) | ~(np.arange(S) + 0.5 < x1 + 1)
    assert np.all(warped[:, outside] == 0)


def test_warp_mask_nearest_and_bilinear():
    mask = np.zeros((90, 120), np.uint8)
    mask[20:50, 30:80] = 1
    rng = np.random.default_rng(6)
    for _ in range(3):
        matrix = augment.random_affine(AugmentConfig(), mask.shape, S,
                                       tf.constant([int(rng.integers(1000)), 1]))[0].numpy()
        got = augment.warp_mask(mask, matrix, S).numpy()
        want = _cv2_warp(mask, matrix, S, flags=cv2.INTER_NEAREST)
        assert set(np.unique(got)) <= {0.0, 1.0}
        # nearest sampling may differ from cv2's rounding only on ties at region borders
        assert np.mean(got != want) < 0.01
        soft = augment.warp_mask(mask, matrix, S, method="bilinear", threshold=0.5).numpy()
        assert np.mean(soft != got) < 0.02
    with pytest.raises(ValueError, match="threshold"):
        augment.warp_mask(mask, np.eye(3, dtype=np.float32), S, method="bilinear")
