"""Target maps shared by the heatmap codecs (``ae``, ``dekr``): Gaussian heatmaps, square regions
around points and the valid mask of an output map, in TF ops (run inside tf.data, one sample).

Symbols: N points per channel (people), C channels, s the stride, n = S / s the side of the
square output map. Points are given in input pixels; on the map a point x is at x / s and pixel
(i, j) is centred at (j + 0.5, i + 0.5) (:mod:`tfpose.codecs.base`).
"""

from __future__ import annotations

import tensorflow as tf


def _max_over_points(cols: tf.Tensor, rows: tf.Tensor, combine) -> tf.Tensor:
    """[n, n, C]: max over the N points of ``combine(rows[p][:, :, None], cols[p][:, None, :])``.

    ``cols`` [N, C, n] and ``rows`` [N, C, n] are per-point profiles along x and y; one point at a
    time (a while loop), so memory stays at one [C, n, n] map whatever N is.
    """
    channels, n = cols.shape[1], cols.shape[2]

    def body(i, acc):
        return i + 1, tf.maximum(acc, combine(rows[i][:, :, None], cols[i][:, None, :]))

    _, out = tf.while_loop(lambda i, acc: i < tf.shape(cols)[0], body,
                           (tf.constant(0), tf.zeros([channels, n, n], cols.dtype)))
    return tf.transpose(out, [1, 2, 0])


def _map_distances(x, y, map_size: int, stride: float):
    """(|j + 0.5 - x / s| [N, C, n], |i + 0.5 - y / s| [N, C, n]) in map pixels."""
    centres = tf.range(map_size, dtype=tf.float32) + 0.5
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y, tf.float32)
    return (tf.abs(centres - (x / float(stride))[..., None]),
            tf.abs(centres - (y / float(stride))[..., None]))


def gaussian_heatmaps(x, y, on, map_size: int, stride: float, sigma: float) -> tf.Tensor:
    """Per channel, the max over points of an untruncated Gaussian at the continuous location.

    ``exp(-((j + 0.5 - x / s)^2 + (i + 0.5 - y / s)^2) / (2 sigma^2))`` evaluated at pixel
    centres (value 1 only for a point at a pixel centre; the peak keeps the sub-pixel location).

    Args:
        x, y: float [N, C], input pixels.
        on: bool [N, C], points that draw a Gaussian.
        map_size: int n.
        stride: float s.
        sigma: float, in map pixels.

    Returns:
        float32 [n, n, C].
    """
    dx, dy = _map_distances(x, y, map_size, stride)
    scale = -1.0 / (2.0 * float(sigma) ** 2)
    live = tf.cast(on, tf.float32)[..., None]
    gx = tf.exp(scale * tf.square(dx)) * live
    gy = tf.exp(scale * tf.square(dy))
    return _max_over_points(gx, gy, tf.multiply)


def square_regions(x, y, on, map_size: int, stride: float, radius: float) -> tf.Tensor:
    """Per channel, 1 at the pixels whose centre lies within ``radius`` map pixels of some point
    along both axes (the square max(|j + 0.5 - x / s|, |i + 0.5 - y / s|) <= radius), else 0.
    Symmetric about the point, so a horizontal flip of the points mirrors the map.

    Args: as :func:`gaussian_heatmaps`, with ``radius`` (map pixels) instead of sigma.

    Returns:
        float32 [n, n, C] of 0 / 1.
    """
    dx, dy = _map_distances(x, y, map_size, stride)
    live = tf.convert_to_tensor(on, tf.bool)[..., None]
    inx = tf.cast((dx <= float(radius)) & live, tf.float32)
    iny = tf.cast(dy <= float(radius), tf.float32)
    return _max_over_points(inx, iny, tf.multiply)


def valid_cells(valid_mask, map_size: int, stride: int) -> tf.Tensor:
    """float32 [n, n]: min-pooling of ``valid_mask`` [S, S] (S = n * s) over s x s cells; an
    output pixel is ignored (0) when any input pixel of its cell is ignored."""
    n, s = int(map_size), int(stride)
    cells = tf.reshape(tf.convert_to_tensor(valid_mask, tf.float32), [n, s, n, s])
    return tf.reduce_min(cells, axis=[1, 3])
