"""The `dekr` method: heatmap-guided adaptive keypoint estimates with pose scoring.

Paper: "Bottom-Up Human Pose Estimation by Ranking Heatmap-Guided Adaptive Keypoint Estimates"
(../shared/papers/003). Codec :mod:`tfpose.codecs.dekr`, network :mod:`tfpose.models.dekr`,
loss :mod:`tfpose.losses.dekr` (Eqs. 4-6), and the extra stage ``scorer`` that trains the pose
scoring net of Sec. 3.2 on the trained model's candidates (``python -m tfpose.train --config C
--stage scorer``; :func:`tfpose.training.scorer.train_scorer`).
"""

from __future__ import annotations

from tfpose.codecs.dekr import DekrConfig
from tfpose.losses.dekr import DekrLossConfig, build_dekr_loss
from tfpose.models.dekr import DekrModelConfig, build_dekr_model
from tfpose.registry import Method, register_method

STRIDE = 4  # the heads run on HRNet's 1/4 representation (Sec. 3.1)
BACKBONE_STRIDE = 32  # HRNet's coarsest branch


def check_config(cfg, err):
    for section, cls in (("codec", DekrConfig), ("model", DekrModelConfig),
                         ("loss", DekrLossConfig)):
        if not isinstance(getattr(cfg, section), cls):
            err(f"method 'dekr' needs '{section}.type: dekr'")
    if cfg.codec.stride != STRIDE:
        err(f"codec.stride = {cfg.codec.stride}: the dekr network predicts at stride {STRIDE}")
    if cfg.data.input_size % BACKBONE_STRIDE:
        err(f"data.input_size = {cfg.data.input_size} must be a multiple of {BACKBONE_STRIDE} "
            "(HRNet)")


def train_scorer_stage(cfg, args):
    from tfpose.training.scorer import train_scorer

    m = cfg.model
    return train_scorer(cfg, args, epochs=m.scorer_epochs, learning_rate=m.scorer_learning_rate,
                        max_images=m.scorer_max_images)


DEKR = register_method(Method(
    name="dekr",
    codec="dekr",
    build_model=build_dekr_model,
    build_loss=build_dekr_loss,
    check_config=check_config,
    stages={"scorer": train_scorer_stage},
))
