"""Heatmap peaks: max-pool NMS, per-keypoint top-k and sub-pixel location, in TF ops.

Shared by the heatmap codecs (``ae`` and the codecs built on heatmap peaks, ``dekr``,
``posedet``). These run after the network (DESIGN.md section 3: top-k and gathers stay out of
the GPU partition). Static shapes throughout; :func:`find_peaks` passes over the full map only
for the max-pools and one comparison, everything else works on gathered candidates.

Symbols: B batch, H x W map size, K keypoint types (channels), M candidates per type.
Pixel convention (``tfpose.codecs.base``): pixel (i, j) is centred at (j + 0.5, i + 0.5), so the
continuous map location of candidate (i, j) with sub-pixel offset (dx, dy) is
(j + 0.5 + dx, i + 0.5 + dy). Candidates are flat indices i * W + j.

The public functions hold no data-dependent Python control flow and are marked
``do_not_convert``: ``tf.function`` traces them as they are, without an AutoGraph pass.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Smallest positive float32: values at or below it are not taken the log of (sub-pixel fit guard).
_TINY = float(np.finfo(np.float32).tiny)
# The quarter-pixel shift of Associative Embedding / HigherHRNet's `adjust` (HeatmapParser.adjust).
_QUARTER = 0.25
# Raster-order successors of a pixel among its 8 neighbours: right, down-left, down, down-right.
_SUCCESSORS = ((0, 1), (1, -1), (1, 0), (1, 1))


def _static_hw(maps: tf.Tensor):
    h, w = maps.shape[1], maps.shape[2]
    if h is None or w is None:
        raise ValueError(f"maps need a static H and W, got shape {maps.shape}")
    return int(h), int(w)


@tf.autograph.experimental.do_not_convert
def window_max(heatmaps: tf.Tensor, kernel: int) -> tf.Tensor:
    """Max over the kernel x kernel window centred on each pixel (clipped at the border), as a
    [k, 1] then a [1, k] max-pool: the same values as one k x k pool, in about half the time."""
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    kernel = int(kernel)
    if kernel == 1:
        return heatmaps
    rows = tf.nn.max_pool2d(heatmaps, ksize=[kernel, 1], strides=1, padding="SAME")
    return tf.nn.max_pool2d(rows, ksize=[1, kernel], strides=1, padding="SAME")


def _shift(x: tf.Tensor, dy: int, dx: int, fill) -> tf.Tensor:
    """y[:, i, j] = x[:, i + dy, j + dx] for |dy|, |dx| <= 1, `fill` outside the map."""
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=fill)
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    return padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w, :]


@tf.autograph.experimental.do_not_convert
def peak_mask(heatmaps: tf.Tensor, kernel: int, break_ties: bool = True) -> tf.Tensor:
    """Local maxima of max-pool NMS (Associative Embedding / HigherHRNet ``HeatmapParser.nms``).

    A pixel is a peak when it equals the maximum of the ``kernel x kernel`` window centred on it
    (stride 1, windows clipped at the border). With ``break_ties``, of adjacent equal peaks only
    the last in raster order is kept: a peak is dropped when one of its raster successors (right,
    down-left, down, down-right) is also a peak with the same value. A Gaussian encoded exactly
    on a pixel border (x / stride an integer) has two equal maxima; the kept one, column
    floor(x / stride), is the pixel that contains x (pixels are [j, j + 1)), as in tag indices.

    Args:
        heatmaps: float [B, H, W, K].
        kernel: int, odd window size.
        break_ties: bool.

    Returns:
        bool [B, H, W, K].
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    is_max = tf.equal(heatmaps, window_max(heatmaps, kernel))
    if not break_ties:
        return is_max
    keep = is_max
    for dy, dx in _SUCCESSORS:
        twin = tf.logical_and(_shift(is_max, dy, dx, False),
                              tf.equal(_shift(heatmaps, dy, dx, -np.inf), heatmaps))
        keep = tf.logical_and(keep, tf.logical_not(twin))
    return keep


@tf.autograph.experimental.do_not_convert
def nms(heatmaps: tf.Tensor, kernel: int, break_ties: bool = True) -> tf.Tensor:
    """Heatmaps with every non-peak pixel set to 0 (see :func:`peak_mask`). float [B, H, W, K]."""
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    return tf.where(peak_mask(heatmaps, kernel, break_ties), heatmaps, tf.zeros_like(heatmaps))


@tf.autograph.experimental.do_not_convert
def flatten_channels_first(maps: tf.Tensor) -> tf.Tensor:
    """[B, H, W, K] -> [B, K, H * W] (the layout top-k needs)."""
    h, w = _static_hw(maps)
    k = maps.shape[3]
    return tf.reshape(tf.transpose(maps, [0, 3, 1, 2]), [-1, k, h * w])


@tf.autograph.experimental.do_not_convert
def top_k(heatmaps: tf.Tensor, k: int):
    """The k highest pixels of every channel (apply :func:`nms` first to get peaks).

    Args:
        heatmaps: float [B, H, W, K].
        k: int, M = min(k, H * W) candidates are returned, sorted by decreasing value.

    Returns:
        (values float [B, K, M], index int32 [B, K, M]).
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    h, w = _static_hw(heatmaps)
    values, index = tf.math.top_k(flatten_channels_first(heatmaps), k=min(int(k), h * w))
    return values, tf.cast(index, tf.int32)


@tf.autograph.experimental.do_not_convert
def gather(maps: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Values of every channel at its own flat pixel indices (no transpose of the maps).

    Args:
        maps: [B, H, W, K] or [B, H, W, K, C].
        index: int [B, K, M], i * W + j in [0, H * W).

    Returns:
        [B, K, M] or [B, K, M, C].
    """
    maps = tf.convert_to_tensor(maps)
    h, w = _static_hw(maps)
    k = maps.shape[3]
    index = tf.convert_to_tensor(index, tf.int32)
    m = index.shape[2]
    extra = maps.shape[4:].as_list()
    flat = tf.reshape(maps, [-1, h * w * k] + extra)
    where = tf.reshape(index * k + tf.range(k, dtype=tf.int32)[None, :, None], [-1, k * m])
    return tf.reshape(tf.gather(flat, where, batch_dims=1), [-1, k, m] + extra)


@tf.autograph.experimental.do_not_convert
def index_to_xy(index: tf.Tensor, width: int):
    """Flat pixel index -> (column, row), int32."""
    index = tf.cast(index, tf.int32)
    return index % width, index // width


@tf.autograph.experimental.do_not_convert
def find_peaks(heatmaps: tf.Tensor, kernel: int, k: int, break_ties: bool = True):
    """Top-k peaks of every channel: the k highest pixels of :func:`peak_mask`, found without a
    top-k over the whole map.

    Two max-pool peaks of different values are more than r = kernel // 2 pixels apart along some
    axis (else the smaller is not the maximum of its window), so a block of (r + 1) x (r + 1)
    pixels holds peaks of one value only, and the k highest peaks lie in the k highest blocks.
    Steps: max-pool NMS over the map (pixels off the peaks set to 0, as HigherHRNet's
    ``det * (maxpool(det) == det)``), a block max-pool with stride r + 1, top-k of the blocks,
    then top-k of the peaks inside the chosen blocks (after the tie rule of :func:`peak_mask`,
    applied at those pixels). Only peaks with a positive value are reported. This is exactly the
    top-k of :func:`peak_mask` (up to the order among equal values) except where the k-th place
    falls in a run of equal peaks spread over several blocks: blocks of equal value are taken
    last-first, which keeps the kept twin of a Gaussian on a pixel border or corner, but a
    longer flat run can leave a slot empty. Real-valued heatmaps have no such runs above 0.

    Args:
        heatmaps: float [B, H, W, K].
        kernel: int, odd NMS window.
        k: int, M = min(k, H * W) candidates.
        break_ties: bool.

    Returns:
        (values float [B, K, M] sorted by decreasing value, index int32 [B, K, M]). Slots past
        the last positive peak have value 0 and index 0.
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    h, w = _static_hw(heatmaps)
    channels = heatmaps.shape[3]
    m = min(int(k), h * w)
    peaks_only = heatmaps * tf.cast(tf.equal(heatmaps, window_max(heatmaps, kernel)), tf.float32)
    size = int(kernel) // 2 + 1
    hb, wb = -(-h // size), -(-w // size)
    blocks = tf.nn.max_pool2d(peaks_only, ksize=size, strides=size, padding="SAME")
    mb = min(m, hb * wb)
    # among equal blocks prefer the later ones (top_k prefers lower indices, so reverse): a
    # Gaussian on a pixel border or corner keeps its raster-last twin, which is in the later block
    _, last_first = tf.math.top_k(tf.reverse(flatten_channels_first(blocks), axis=[2]), k=mb)
    n = mb * size * size
    pixel = tf.reshape(tf.gather(_block_pixels(h, w, size), last_first), [-1, channels, n])
    inside = pixel >= 0
    pixel = tf.maximum(pixel, 0)
    values = tf.where(inside, gather(peaks_only, pixel), 0.0)  # [B, K, n]
    if break_ties:
        # raster successors: right, down-left, down, down-right (flat offsets 1, w - 1, w, w + 1)
        col = pixel % w
        has_down = pixel < (h - 1) * w
        not_last, not_first = col < w - 1, col > 0
        ok = tf.stack([not_last, has_down & not_first, has_down, has_down & not_last], axis=-1)
        steps = tf.constant([dy * w + dx for dy, dx in _SUCCESSORS], tf.int32)
        nxt = tf.where(ok, pixel[..., None] + steps, 0)
        nxt_values = tf.reshape(gather(peaks_only, tf.reshape(nxt, [-1, channels, n * 4])),
                                [-1, channels, n, 4])
        twin = tf.reduce_any(ok & tf.equal(nxt_values, values[..., None]), axis=-1)
        values = tf.where(twin, 0.0, values)
    values, pick = tf.math.top_k(values, k=m)
    index = tf.gather(pixel, pick, batch_dims=2)
    empty = values <= 0.0
    return (tf.where(empty, tf.zeros_like(values), values),
            tf.where(empty, tf.zeros_like(index), index))


def _block_pixels(h: int, w: int, size: int) -> tf.Tensor:
    """int32 [n_blocks, size^2]: flat pixel indices of the blocks of a stride-`size` "SAME"
    max-pool (which pads (ceil(h / size) * size - h) // 2 rows before), numbered from the last
    block (the order of the reversed block list), -1 outside the map."""
    hb, wb = -(-h // size), -(-w // size)
    top, left = (hb * size - h) // 2, (wb * size - w) // 2
    rows = np.arange(hb)[:, None, None, None] * size + np.arange(size)[None, None, :, None] - top
    cols = np.arange(wb)[None, :, None, None] * size + np.arange(size)[None, None, None, :] - left
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    table = np.where(inside, rows * w + cols, -1).reshape(hb * wb, size * size)
    return tf.constant(table[::-1].astype(np.int32))


def _axis_offset(prev: tf.Tensor, centre: tf.Tensor, nxt: tf.Tensor, interior: tf.Tensor,
                 adjust: bool, subpixel: bool) -> tf.Tensor:
    """Offset along one axis from the values at -1, 0, +1 pixels (see :func:`subpixel_offsets`)."""
    if adjust:
        fallback = _QUARTER * tf.sign(nxt - prev)
    else:
        fallback = tf.zeros_like(centre)
    if not subpixel:
        return fallback
    positive = tf.logical_and(tf.minimum(prev, tf.minimum(centre, nxt)) > _TINY, interior)

    def safe_log(v):
        return tf.math.log(tf.where(positive, v, tf.ones_like(v)))

    lp, lc, ln = safe_log(prev), safe_log(centre), safe_log(nxt)
    curvature = lp - 2.0 * lc + ln
    valid = tf.logical_and(positive, curvature < 0.0)
    denom = tf.where(valid, 2.0 * curvature, -tf.ones_like(curvature))
    fit = tf.clip_by_value((lp - ln) / denom, -0.5, 0.5)
    return tf.where(valid, fit, fallback)


@tf.autograph.experimental.do_not_convert
def subpixel_offsets(heatmaps: tf.Tensor, index: tf.Tensor, adjust: bool = True,
                     subpixel: bool = True) -> tf.Tensor:
    """Sub-pixel offsets (dx, dy) of candidate pixels, in map pixels.

    * ``subpixel``: local Gaussian fit. Along each axis a parabola is fitted to the log of the
      values at the pixel and its two neighbours (log-quadratic fit of the 3x3 neighbourhood's
      middle row / column): with L(-1), L(0), L(+1) the log values,
      ``d = (L(-1) - L(+1)) / (2 (L(-1) - 2 L(0) + L(+1)))``, clipped to [-0.5, 0.5]. For an
      isotropic Gaussian exp(-|p - mu|^2 / 2 sigma^2) sampled at pixel centres the log is exactly
      quadratic along a row, so d recovers mu exactly when no other Gaussian overlaps. The fit is
      used only where the three values are positive, the pixel is not on the border and the log
      curvature is negative; elsewhere the fallback below applies.
    * ``adjust`` (fallback or alone): Associative Embedding's quarter-pixel shift, +-0.25 towards
      the higher neighbour (HigherHRNet ``HeatmapParser.adjust``; neighbours clamped at the
      border). Unlike the reference, equal neighbours give 0 instead of -0.25, so flipped maps
      give flipped results.
    * neither: 0.

    Args:
        heatmaps: float [B, H, W, K] (raw, not NMS-ed).
        index: int [B, K, M] flat pixel indices.
        adjust: bool.
        subpixel: bool.

    Returns:
        float [B, K, M, 2] (dx, dy).
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    h, w = _static_hw(heatmaps)
    index = tf.convert_to_tensor(index, tf.int32)
    if not adjust and not subpixel:
        return tf.zeros(tf.concat([tf.shape(index), [2]], axis=0), tf.float32)
    col, row = index_to_xy(index, w)
    has_left, has_right = col > 0, col < w - 1
    has_up, has_down = row > 0, row < h - 1
    one = tf.ones_like(index)
    # centre, left, right, up, down; clamped at the border like the reference
    around = tf.stack([index,
                       index - tf.where(has_left, one, 0),
                       index + tf.where(has_right, one, 0),
                       index - tf.where(has_up, one * w, 0),
                       index + tf.where(has_down, one * w, 0)], axis=2)  # [B, K, 5, M]
    k, m = index.shape[1], index.shape[2]
    values = gather(heatmaps, tf.reshape(around, [-1, k, 5 * m]))
    centre, left, right, up, down = tf.unstack(tf.reshape(values, [-1, k, 5, m]), axis=2)
    dx = _axis_offset(left, centre, right, has_left & has_right, adjust, subpixel)
    dy = _axis_offset(up, centre, down, has_up & has_down, adjust, subpixel)
    return tf.stack([dx, dy], axis=-1)
