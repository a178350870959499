"""Drawing poses on images (predict, TensorBoard): skeleton and keypoints from the spec."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from tfpose.keypoints import KeypointSpec

_SHIFT = 4  # cv2 fixed-point bits: draw at sub-pixel positions
_SCALE = 1 << _SHIFT


def _palette(n: int) -> np.ndarray:
    """n distinct BGR colours (evenly spaced hues), as uint8 [n, 3]."""
    rgb = [colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0) for i in range(n)]
    return (np.asarray(rgb)[:, ::-1] * 255).astype(np.uint8)


def _fixed(x: float, y: float) -> tuple:
    # Continuous coordinates (pixel centres at +0.5) to cv2's pixel-index convention.
    return int(round((x - 0.5) * _SCALE)), int(round((y - 0.5) * _SCALE))


def draw_poses(image: np.ndarray, keypoints: np.ndarray, spec: KeypointSpec,
               scores: np.ndarray | None = None, keypoint_threshold: float = 0.1,
               thickness: int | None = None) -> np.ndarray:
    """Draws poses on a copy of an image.

    Args:
        image: uint8 [H, W, 3] (BGR, as cv2 reads it) or [H, W] gray.
        keypoints: float [P, K, 3] (x, y, score) in image pixels, continuous coordinates.
        spec: KeypointSpec; its skeleton gives the sticks, its flip pairs the left/right colours.
        scores: optional float [P]; drawn next to each person.
        keypoint_threshold: float, keypoints with a lower score are not drawn.
        thickness: int, line width; default scales with the image size.

    Returns:
        uint8 [H, W, 3] image with the poses drawn.
    """
    canvas = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, spec.num_keypoints, 3)
    if thickness is None:
        thickness = max(1, int(round(max(canvas.shape[:2]) / 320)))
    stick_colours = _palette(len(spec.skeleton))
    for p, person in enumerate(keypoints):
        shown = person[:, 2] >= keypoint_threshold
        for s, (i, j) in enumerate(spec.skeleton):
            if shown[i] and shown[j]:
                cv2.line(canvas, _fixed(*person[i, :2]), _fixed(*person[j, :2]),
                         stick_colours[s].tolist(), thickness, cv2.LINE_AA, _SHIFT)
        for k in np.flatnonzero(shown):
            cv2.circle(canvas, _fixed(*person[k, :2]), (thickness + 1) * _SCALE,
                       (255, 255, 255), -1, cv2.LINE_AA, _SHIFT)
        if scores is not None and shown.any():
            x, y = person[shown, :2].min(axis=0)
            cv2.putText(canvas, f"{float(scores[p]):.2f}", (int(x), max(int(y) - 4, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (255, 255, 255), thickness,
                        cv2.LINE_AA)
    return canvas
