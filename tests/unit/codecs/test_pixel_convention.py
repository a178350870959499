"""The pixel convention of tfpose.codecs.base, on the AE codec: continuous coordinates, pixel
(i, j) centred at (j + 0.5, i + 0.5), x -> x / stride on a stride map, a flip maps x to S - x."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.codecs.ae import AECodec, AEConfig
from tfpose.keypoints import spec_from_dict

SPEC = spec_from_dict({"name": "pair", "names": ["l", "r"], "sigmas": [0.5, 0.5],
                       "flip_pairs": [["l", "r"]]})
SIZE = 64


def round_trip(codec, points):
    """Encodes one person per point (both keypoint types at it), decodes the oracle outputs."""
    kp = np.zeros((len(points), 2, 3), np.float32)
    kp[:, :, :2] = np.asarray(points, np.float32)[:, None, :]
    kp[:, :, 2] = 2
    targets = codec.encode(kp, tf.ones([SIZE, SIZE]))
    poses = codec.decode(codec.oracle_outputs({k: v[None] for k, v in targets.items()}))
    n = int(poses["num_people"][0])
    return targets, poses["keypoints"].numpy()[0, :n]


def assert_recovered(decoded, points, tol):
    assert len(decoded) == len(points)
    for x, y in points:
        err = np.abs(decoded[:, :, :2] - np.array([x, y])).max(axis=(1, 2)).min()
        assert err < tol, (x, y, err)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_point_encodes_and_decodes_to_itself(stride):
    codec = AECodec(AEConfig(strides=[stride], sigma=1.5), SPEC, SIZE)
    s = float(stride)
    # one point per quadrant: a pixel centre, a pixel corner (x / s and y / s integers: equal
    # maxima), two arbitrary points
    points = [((np.floor(16 / s) + 0.5) * s, (np.floor(16 / s) + 0.5) * s),
              (48.0, 16.0), (17.31, 45.77), (50.9, 49.13)]
    # an 8 x 8 map holds one well-separated person at a time
    groups = [[p] for p in points] if stride == 8 else [points]
    for pts in groups:
        targets, decoded = round_trip(codec, pts)
        assert_recovered(decoded, pts, tol=1e-3)
    pts = groups[0]
    targets, _ = round_trip(codec, pts)
    heat = targets[f"heatmaps_{stride}"].numpy()[..., 0]
    x, y = pts[0]
    i, j = np.unravel_index(heat.argmax(), heat.shape)
    assert (j + 0.5) * s == pytest.approx(x) and (i + 0.5) * s == pytest.approx(y)
    assert heat[i, j] == pytest.approx(1.0)


def test_two_resolutions_decode_at_the_finest():
    codec = AECodec(AEConfig(strides=[8, 4, 2]), SPEC, SIZE)
    pts = [(16.0, 24.0), (47.3, 40.61)]  # the first lies on pixel borders at every stride
    targets, decoded = round_trip(codec, pts)
    assert_recovered(decoded, pts, tol=1e-3)


@pytest.mark.parametrize("stride", [2, 4])
def test_horizontal_flip_is_consistent(stride):
    codec = AECodec(AEConfig(strides=[stride]), SPEC, SIZE)
    pts = [(13.37, 30.2), (40.0, 44.5)]
    flipped = [(SIZE - x, y) for x, y in pts]
    t1, d1 = round_trip(codec, pts)
    t2, d2 = round_trip(codec, flipped)
    h1, h2 = t1[f"heatmaps_{stride}"].numpy(), t2[f"heatmaps_{stride}"].numpy()
    np.testing.assert_allclose(h2, h1[:, ::-1], atol=1e-6)  # x -> S - x is a mirror of the map
    assert_recovered(d1, pts, tol=1e-3)
    assert_recovered(d2, flipped, tol=1e-3)


def test_points_outside_the_input_are_dropped():
    codec = AECodec(AEConfig(strides=[4]), SPEC, SIZE)
    kp = np.array([[[SIZE, 10.0, 2], [-0.01, 10.0, 2]], [[10.0, SIZE - 0.01, 2], [0.0, 0.0, 2]]],
                  np.float32)
    out = codec.encode(kp, tf.ones([SIZE, SIZE]))
    ti = out["tag_index"].numpy()
    np.testing.assert_array_equal(ti[0], [[15 * 16 + 2, 1], [0, 1]])  # [0, S) is inside
    assert not ti[1:].any()
    assert out["heatmaps_4"].numpy()[..., 0].max() == pytest.approx(
        np.exp(-((10.0 / 4 - 2.5) ** 2 + (15.5 - (SIZE - 0.01) / 4) ** 2) / 8.0))
