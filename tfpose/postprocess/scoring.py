"""Learned pose scoring (DEKR, Geng et al. CVPR 2021; paper 003 Sec. 3.2 "Scoring").

The naive score of a grouped candidate pose is ``(1/K) sum_k h_k(p_k) * o(p)`` (keypoint heat
values times the centre heat value). DEKR instead feeds a small network the candidate's keypoint
heat values and its *shape*: for every stick (i, j) of the skeleton, the relative offset
``p_i - p_j`` and the distance ``d_ij`` (74 values for COCO: 17 heat values + 19 sticks x 3), and
regresses the candidate's OKS against the ground truth (trained on the training split's candidates
by :mod:`tfpose.training.scorer`).

Feature vector of one pose (``pose_features``), F = K + 3 * len(spec.skeleton) values::

    [h_0, ..., h_{K-1},                                     heat values (third keypoint channel)
     dx_0, dy_0, d_0, dx_1, dy_1, d_1, ..., d_{E-1}]        per stick e = (i, j) in spec.skeleton
                                                            order: (p_i - p_j) / scale, |p_i - p_j| / scale

Coordinates are divided by ``scale`` (the codec passes the input size S, so the features do not
depend on the input resolution). A spec with an empty skeleton gives the K heat values only.

The network (``build_scorer``): Dense(256) + ReLU, Dense(256) + ReLU, Dense(1) (paper: "two
fully-connected layers (each followed by a ReLU layer), and a linear prediction layer"; width 256
as the reference implementation's ``predictOKS`` net). Its weights live in the training run's
directory as :data:`SCORER_WEIGHTS`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SCORER_WEIGHTS = "scorer.weights.h5"
HIDDEN_UNITS = 256


def num_pose_features(spec) -> int:
    """F = K + 3 * number of sticks (74 for COCO: 17 + 2 * 19 + 19)."""
    return int(spec.num_keypoints) + 3 * len(spec.skeleton)


def pose_features(keypoints, spec, scale: float) -> tf.Tensor:
    """Heat-value and shape features of candidate poses (module docstring for the order).

    TF ops only (gather, subtract, sqrt, concat, reshape): usable inside ``tf.function`` decode
    and TFLite export.

    Args:
        keypoints: float [..., K, 3]: (x, y, heat value) per keypoint, in input pixels.
        spec: KeypointSpec (K and the skeleton's sticks).
        scale: float > 0, the coordinates are divided by it (the input size S).

    Returns:
        float32 [..., F], F = :func:`num_pose_features`.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    k = int(spec.num_keypoints)
    if keypoints.shape.rank is None or keypoints.shape.rank < 2 or keypoints.shape[-2:] != (k, 3):
        raise ValueError(f"keypoints must be [..., {k}, 3] for spec '{spec.name}', got shape "
                         f"{keypoints.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    heat = keypoints[..., 2]  # [..., K]
    sticks = np.asarray(spec.skeleton, dtype=np.int32).reshape(-1, 2)
    num_sticks = int(sticks.shape[0])
    if num_sticks == 0:
        return heat
    points = keypoints[..., :2] * (1.0 / float(scale))  # [..., K, 2]
    offsets = (tf.gather(points, sticks[:, 0], axis=-2)
               - tf.gather(points, sticks[:, 1], axis=-2))  # [..., E, 2]: p_i - p_j
    length = tf.sqrt(tf.reduce_sum(tf.square(offsets), axis=-1, keepdims=True))  # [..., E, 1]
    shape = tf.concat([offsets, length], axis=-1)  # [..., E, 3]: dx, dy, d per stick
    lead = keypoints.shape[:-2]
    if lead.is_fully_defined():
        new_shape = lead.as_list() + [3 * num_sticks]
    else:
        new_shape = tf.concat([tf.shape(keypoints)[:-2], [3 * num_sticks]], axis=0)
    return tf.concat([heat, tf.reshape(shape, new_shape)], axis=-1)


def build_scorer(spec, seed=None):
    """The OKS-regression network [N, F] -> [N, 1] (float32 under any precision policy).

    Args:
        spec: KeypointSpec (fixes F).
        seed: optional int, seeds the kernel initialisers (reproducible training).
    """
    import keras

    def init(i):
        return keras.initializers.GlorotUniform(seed=None if seed is None else int(seed) + i)

    features = keras.Input((num_pose_features(spec),), name="pose_features", dtype="float32")
    x = keras.layers.Dense(HIDDEN_UNITS, activation="relu", kernel_initializer=init(0),
                           dtype="float32", name="fc1")(features)
    x = keras.layers.Dense(HIDDEN_UNITS, activation="relu", kernel_initializer=init(1),
                           dtype="float32", name="fc2")(x)
    score = keras.layers.Dense(1, kernel_initializer=init(2), dtype="float32", name="oks")(x)
    return keras.Model(features, score, name="pose_scorer")
