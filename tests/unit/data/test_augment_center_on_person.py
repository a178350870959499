"""``data.augment.center_on_person`` (PoseDet crops, paper 001 Sec. 4.1): the crop is centred on a
random labelled person; off by default, where the draws are unchanged."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import AugmentConfig, ConfigError, config_from_dict
from tfpose.data import augment

S = 64
HW = (300, 400)


def _people():
    """Three people (K = 3): keypoint-box centres (55, 40), (300, 225); the middle one has no
    labelled keypoint; one unlabelled joint far away that must not move the box."""
    return np.array([
        [[40, 30, 2], [70, 50, 1], [999, 999, 0]],
        [[200, 100, 0], [210, 110, 0], [220, 120, 0]],
        [[280, 200, 2], [320, 250, 2], [300, 225, 1]],
    ], np.float32)


def _centred(k=1.0):
    return AugmentConfig(rotation=0.0, scale_min=k, scale_max=k, translation=0.0, flip=0.0,
                         center_on_person=True)


def test_person_center_is_the_labelled_keypoint_box_centre():
    kpts = _people()
    for u, want in [(0.0, (55, 40)), (0.49, (55, 40)), (0.5, (300, 225)), (0.999, (300, 225))]:
        center, found = augment.person_center(kpts, tf.constant(u))
        assert bool(found)
        np.testing.assert_allclose(center.numpy(), want)
    center, found = augment.person_center(np.zeros((0, 3, 3), np.float32), tf.constant(0.3))
    assert not bool(found)
    center, found = augment.person_center(kpts[1:2], tf.constant(0.3))  # nobody labelled
    assert not bool(found)


def test_crop_is_centred_on_one_labelled_person_each_drawn():
    kpts = _people()
    centres = {(55.0, 40.0): 0, (300.0, 225.0): 0}
    zoom = 1 / 0.5  # the window is s * S original pixels (reference crop), not the image
    for i in range(40):
        matrix, flipped = augment.random_affine(_centred(0.5), HW, S, tf.constant([i, 2]),
                                                keypoints=kpts)
        assert not bool(flipped)
        m = matrix.numpy().astype(np.float64)
        np.testing.assert_allclose(np.diag(m)[:2], [zoom, zoom], rtol=1e-5)
        # the original point mapped to the input centre
        origin = np.linalg.solve(m, [S / 2, S / 2, 1.0])[:2]
        key = min(centres, key=lambda c: np.hypot(*(origin - c)))
        np.testing.assert_allclose(origin, key, atol=1e-3)
        centres[key] += 1
    assert all(n > 8 for n in centres.values()), centres  # both labelled people get picked


def test_without_labelled_people_the_image_centre_is_used():
    # an S x S window of original pixels around the image centre (200, 150)
    want = np.array([[1, 0, S / 2 - 200], [0, 1, S / 2 - 150], [0, 0, 1]])
    for kpts in (_people()[1:2], np.zeros((0, 3, 3), np.float32)):
        matrix, _ = augment.random_affine(_centred(), HW, S, tf.constant([1, 1]), keypoints=kpts)
        np.testing.assert_allclose(matrix.numpy(), want, atol=1e-4)
    # an explicit extent still fits that length to S
    matrix, _ = augment.random_affine(_centred(), HW, S, tf.constant([1, 1]), extent=400.0,
                                      keypoints=kpts)
    np.testing.assert_allclose(matrix.numpy(), augment.eval_affine(HW, S).numpy(), atol=1e-5)


def test_explicit_center_wins_and_missing_keypoints_is_an_error():
    matrix, _ = augment.random_affine(_centred(), HW, S, tf.constant([0, 0]), center=(10.0, 20.0))
    np.testing.assert_allclose(matrix.numpy() @ [10.0, 20.0, 1.0], [S / 2, S / 2, 1], atol=1e-4)
    with pytest.raises(ValueError, match="center_on_person"):
        augment.random_affine(_centred(), HW, S, tf.constant([0, 0]))


def test_default_off_draws_are_unchanged_by_keypoints():
    cfg = AugmentConfig()
    assert cfg.center_on_person is False
    for i in range(5):
        seed = tf.constant([i, 9])
        plain = augment.random_affine(cfg, HW, S, seed)
        given = augment.random_affine(cfg, HW, S, seed, keypoints=_people())
        np.testing.assert_array_equal(plain[0].numpy(), given[0].numpy())
        assert bool(plain[1]) == bool(given[1])


def test_works_in_a_graph_and_loads_from_config():
    @tf.function
    def draw(seed, kpts):
        return augment.random_affine(_centred(0.5), HW, S, seed, keypoints=kpts)[0]

    kpts = _people()
    matrix = draw(tf.constant([3, 3]), tf.constant(kpts)).numpy()
    origin = np.linalg.solve(matrix.astype(np.float64), [S / 2, S / 2, 1.0])[:2]
    assert min(np.hypot(*(origin - c)) for c in [(55, 40), (300, 225)]) < 1e-3
    cfg = config_from_dict({"codec": {"type": "ae"},
                            "data": {"augment": {"center_on_person": True}}})
    assert cfg.data.augment.center_on_person is True
    with pytest.raises(ConfigError, match="data.augment.center_on_person"):
        config_from_dict({"codec": {"type": "ae"}, "data": {"augment": {"center_on_person": 1}}})
