"""tfpose.postprocess.peaks against numpy references (max-pool NMS, top-k, gathers, sub-pixel)."""

import numpy as np
import pytest
import tensorflow as tf

from tfpose.postprocess import peaks

SUCCESSORS = ((0, 1), (1, -1), (1, 0), (1, 1))


def np_peak_mask(heat: np.ndarray, kernel: int, break_ties: bool) -> np.ndarray:
    """Max-pool NMS by loops: a pixel equal to the max of its clipped kernel x kernel window;
    with break_ties, dropped when a raster successor neighbour is a peak with the same value."""
    b, h, w, k = heat.shape
    r = kernel // 2
    is_max = np.zeros(heat.shape, bool)
    for n in range(b):
        for c in range(k):
            for i in range(h):
                for j in range(w):
                    window = heat[n, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1, c]
                    is_max[n, i, j, c] = heat[n, i, j, c] == window.max()
    if not break_ties:
        return is_max
    keep = is_max.copy()
    for n in range(b):
        for c in range(k):
            for i in range(h):
                for j in range(w):
                    for dy, dx in SUCCESSORS:
                        y, x = i + dy, j + dx
                        if 0 <= y < h and 0 <= x < w and is_max[n, y, x, c] \
                                and heat[n, y, x, c] == heat[n, i, j, c]:
                            keep[n, i, j, c] = False
    return keep


def plateau_maps(seed=0, shape=(2, 12, 13, 3)):
    """Random maps quantised to few levels, so flat peaks and equal neighbours are common."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 6, shape) / 5.0).astype(np.float32)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("break_ties", [False, True])
def test_peak_mask_matches_numpy(kernel, break_ties):
    heat = plateau_maps(kernel)
    got = peaks.peak_mask(heat, kernel, break_ties).numpy()
    np.testing.assert_array_equal(got, np_peak_mask(heat, kernel, break_ties))
    nms = peaks.nms(heat, kernel, break_ties).numpy()
    np.testing.assert_array_equal(nms, np.where(got, heat, 0.0))


def test_tie_keeps_the_pixel_containing_the_point():
    # a Gaussian centred on the border x = 5 between columns 4 and 5: columns 4 and 5 are equal
    cols = np.arange(12) + 0.5
    row = np.exp(-(cols - 5.0) ** 2 / 8.0)
    heat = np.zeros((1, 9, 12, 1), np.float32)
    heat[0, 4, :, 0] = row
    mask = peaks.peak_mask(heat, 5, True).numpy()[0, :, :, 0] & (heat[0, :, :, 0] > 0)
    assert np.argwhere(mask).tolist() == [[4, 5]]
    assert peaks.peak_mask(heat, 5, False).numpy()[0, 4, 4:6, 0].all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
def test_find_peaks_is_top_k_of_the_tie_broken_peaks(seed, kernel):
    heat = plateau_maps(seed, (2, 10, 11, 3)) + 0.05  # all positive: empty slots are told apart
    h, w = heat.shape[1:3]
    ref = np_peak_mask(heat, kernel, True)
    # all peaks (k = H * W); smaller k on maps without flat runs below
    for k in (h * w,):
        values, index = peaks.find_peaks(heat, kernel, k)
        values, index = values.numpy(), index.numpy()
        for b in range(heat.shape[0]):
            for c in range(heat.shape[3]):
                flat = heat[b, :, :, c].reshape(-1)
                want = np.sort(flat[ref[b, :, :, c].reshape(-1)])[::-1][:k]
                got = values[b, c]
                assert (np.diff(got) <= 0).all()
                np.testing.assert_allclose(got[:len(want)], want)
                assert not got[len(want):].any()
                # every returned pixel is a reference peak holding that value
                idx = index[b, c, :len(want)]
                assert ref[b, :, :, c].reshape(-1)[idx].all()
                np.testing.assert_allclose(flat[idx], got[:len(want)])
                assert len(set(idx.tolist())) == len(idx)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_find_peaks_on_smooth_maps_matches_plain_top_k(kernel):
    rng = np.random.default_rng(kernel)
    heat = tf.nn.avg_pool2d(rng.uniform(size=(2, 33, 29, 4)).astype(np.float32), 3, 1, "SAME")
    for k in (1, 6, 40):
        v1, i1 = peaks.find_peaks(heat, kernel, k)
        v2, i2 = peaks.top_k(peaks.nms(heat, kernel), k)
        np.testing.assert_allclose(v1.numpy(), v2.numpy())
        found = v1.numpy() > 0  # past the last peak: value 0 (and index 0 here)
        np.testing.assert_array_equal(i1.numpy()[found], i2.numpy()[found])
        assert not i1.numpy()[~found].any()


def test_find_peaks_keeps_the_last_twin_at_the_cut():
    # Gaussians centred on a pixel corner (4 equal maxima) and on a vertical border (2 equal):
    # with k = 1 the single candidate is the bottom-right / right pixel of the group, the pixel
    # (floor(y), floor(x)) that contains the point
    for (x, y), want in (((6.0, 9.0), (9, 6)), ((9.0, 4.5), (4, 9)), ((3.0, 3.0), (3, 3))):
        heat = gaussian_map(14, 13, [(x, y)], 2.0)
        values, index = peaks.find_peaks(heat, 5, 1)
        assert divmod(int(index.numpy()[0, 0, 0]), 13) == want
        assert values.numpy()[0, 0, 0] == pytest.approx(heat.max())


def test_find_peaks_sorted_and_padded():
    heat = np.zeros((1, 8, 8, 2), np.float32)
    heat[0, 1, 1, 0], heat[0, 5, 6, 0], heat[0, 2, 6, 1] = 0.5, 0.9, 0.3
    values, index = peaks.find_peaks(heat, 3, 4)
    np.testing.assert_allclose(values.numpy()[0, 0], [0.9, 0.5, 0.0, 0.0])
    assert index.numpy()[0, 0, :2].tolist() == [5 * 8 + 6, 1 * 8 + 1]
    np.testing.assert_allclose(values.numpy()[0, 1, :1], [0.3])
    assert index.numpy()[0, 1, 0] == 2 * 8 + 6
    # plain top_k on an NMS map agrees where there are no ties
    v2, i2 = peaks.top_k(peaks.nms(heat, 3), 2)
    np.testing.assert_allclose(v2.numpy()[0, 0], [0.9, 0.5])
    assert i2.numpy()[0, 0].tolist() == [46, 9]


def test_gather_per_channel():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(2, 5, 6, 3, 2)).astype(np.float32)
    index = rng.integers(0, 30, (2, 3, 4)).astype(np.int32)
    got = peaks.gather(maps, index).numpy()
    flat = maps.reshape(2, 30, 3, 2)
    want = np.stack([np.stack([flat[b, index[b, c], c] for c in range(3)]) for b in range(2)])
    np.testing.assert_allclose(got, want)
    got4 = peaks.gather(maps[..., 0], index).numpy()
    np.testing.assert_allclose(got4, want[..., 0])


def gaussian_map(h, w, centres, sigma):
    """[1, H, W, K] Gaussians at continuous (x, y) evaluated at pixel centres."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return np.stack([np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
                     for x, y in centres], axis=-1)[None].astype(np.float32)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_subpixel_fit_recovers_gaussian_centre(sigma):
    rng = np.random.default_rng(4)
    centres = rng.uniform(4, 20, (6, 2))
    heat = gaussian_map(24, 24, centres, sigma)
    values, index = peaks.find_peaks(heat, 5, 1)
    offsets = peaks.subpixel_offsets(heat, index, adjust=True, subpixel=True).numpy()[0, :, 0]
    col, row = index.numpy()[0, :, 0] % 24, index.numpy()[0, :, 0] // 24
    got = np.stack([col + 0.5 + offsets[:, 0], row + 0.5 + offsets[:, 1]], axis=-1)
    np.testing.assert_allclose(got, centres, atol=1e-3)


def test_adjust_quarter_shift_and_fallbacks():
    heat = np.zeros((1, 5, 6, 3), np.float32)
    heat[0, 2, 2:5, 0] = [0.5, 1.0, 0.2]  # right neighbour lower -> -0.25 in x (adjust only)
    heat[0, 1:4, 3, 0] = [0.2, 1.0, 0.6]  # lower neighbour higher -> +0.25 in y
    heat[0, 0, 0, 1] = 1.0  # border: no fit; clamped neighbours (itself vs 0) -> -0.25
    heat[0, 2, 3, 2] = -1.0  # negative values: no log, no NaN
    index = np.array([[[2 * 6 + 3], [0], [2 * 6 + 3]]], np.int32)
    adj = peaks.subpixel_offsets(heat, index, adjust=True, subpixel=False).numpy()[0, :, 0]
    np.testing.assert_allclose(adj, [[-0.25, 0.25], [-0.25, -0.25], [0.0, 0.0]])
    both = peaks.subpixel_offsets(heat, index, adjust=True, subpixel=True).numpy()[0, :, 0]
    assert np.isfinite(both).all()
    lp, lc, ln = np.log([0.5, 1.0, 0.2])
    assert both[0, 0] == pytest.approx((lp - ln) / (2 * (lp - 2 * lc + ln)), abs=1e-5)
    np.testing.assert_allclose(both[1:], adj[1:])  # fit impossible -> adjust fallback
    none = peaks.subpixel_offsets(heat, index, adjust=False, subpixel=False).numpy()
    assert not none.any()
    fit_only = peaks.subpixel_offsets(heat, index, adjust=False, subpixel=True).numpy()[0, :, 0]
    np.testing.assert_allclose(fit_only[1:], 0.0)


@pytest.mark.parametrize("shape", [(1, 9, 9, 2), (1, 10, 11, 2), (2, 13, 7, 1), (1, 4, 4, 1)])
def test_find_peaks_any_map_size(shape):
    # map sizes that are, or are not, multiples of the block size (the padding of block pooling)
    rng = np.random.default_rng(sum(shape))
    heat = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    ref = np_peak_mask(heat, 5, True)
    values, index = peaks.find_peaks(heat, 5, 100)
    for b in range(shape[0]):
        for c in range(shape[3]):
            flat = heat[b, :, :, c].reshape(-1)
            want = np.sort(flat[ref[b, :, :, c].reshape(-1)])[::-1]
            np.testing.assert_allclose(values.numpy()[b, c, :len(want)], want)
            assert ref[b, :, :, c].reshape(-1)[index.numpy()[b, c, :len(want)]].all()


def test_window_max_is_a_square_max_pool_and_nonpositive_peaks_are_not_reported():
    rng = np.random.default_rng(11)
    heat = rng.normal(size=(2, 9, 12, 3)).astype(np.float32)
    for kernel in (1, 3, 5):
        np.testing.assert_array_equal(peaks.window_max(heat, kernel).numpy(),
                                      tf.nn.max_pool2d(heat, kernel, 1, "SAME").numpy())
    values, index = peaks.find_peaks(-np.abs(heat), 5, 4)
    assert not values.numpy().any() and not index.numpy().any()
    values, _ = peaks.find_peaks(heat, 5, 40)
    ref = np_peak_mask(heat, 5, True) & (heat > 0)
    assert ((values.numpy() > 0).sum(axis=2) == ref.sum(axis=(1, 2))).all()
