"""The ``posedet`` method: single-stage pose detection with keypoint-aware pose embeddings.

Paper: "PoseDet: Fast Multi-Person Pose Estimation Using Pose Embedding" (../shared/papers/001).
Codec :mod:`tfpose.codecs.posedet` (candidates on the FPN levels, assignment, OKS NMS decode),
network :mod:`tfpose.models.posedet` (Sec. 3.2), loss :mod:`tfpose.losses.posedet` (Eq. (4)).
The paper's training crops (Sec. 4.1: resize factor in [0.5, 1.5], crop centred on a random
person) are ``data.augment.center_on_person: true`` with ``scale_min: 0.5, scale_max: 1.5``.
"""

from __future__ import annotations

from tfpose.codecs.posedet import PosedetConfig
from tfpose.losses.posedet import PosedetLossConfig, build_posedet_loss
from tfpose.models.posedet import PosedetModelConfig, build_posedet_model
from tfpose.registry import Method, register_method


def check_config(cfg, err):
    for section, cls in (("codec", PosedetConfig), ("model", PosedetModelConfig),
                         ("loss", PosedetLossConfig)):
        if not isinstance(getattr(cfg, section), cls):
            err(f"method 'posedet' needs '{section}.type: posedet'")
    if list(cfg.codec.strides) != list(cfg.model.strides):
        err(f"codec.strides = {list(cfg.codec.strides)} must equal model.strides = "
            f"{list(cfg.model.strides)} (the codec's candidates are the network's FPN levels)")
    multiple = cfg.model.input_multiple
    if cfg.data.input_size % multiple:
        err(f"data.input_size = {cfg.data.input_size} must be a multiple of {multiple} "
            "(the largest of model.strides and the backbone's 32)")


POSEDET = register_method(Method(
    name="posedet",
    codec="posedet",
    build_model=build_posedet_model,
    build_loss=build_posedet_loss,
    check_config=check_config,
))
