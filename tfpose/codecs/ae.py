"""Associative-embedding codec (heatmaps + tags), shared by `de` and `grm`. (Being written.)"""

from __future__ import annotations

import dataclasses

from tfpose.codecs.base import Codec
from tfpose.config import ConfigError, field
from tfpose.registry import register_codec


@dataclasses.dataclass
class AEConfig:
    """Associative-embedding codec settings (defaults: HigherHRNet / Associative Embedding)."""

    strides: list[int] = field(default_factory=lambda: [4], low=1,
                               doc="output strides; [4, 2] for HigherHRNet's two resolutions")
    sigma: float = field(2.0, low=0.1, doc="Gaussian sigma at the highest-resolution output")
    max_people: int = field(30, low=1)
    nms_kernel: int = field(5, low=1)
    detection_threshold: float = field(0.1, low=0.0, high=1.0)
    tag_threshold: float = field(1.0, low=0.0)
    use_detection_value: bool = field(True, doc="group by tag and heat value (AE paper)")
    adjust: bool = field(True, doc="quarter-pixel shift towards the higher neighbour")
    subpixel: bool = field(True, doc="local Gaussian (log-quadratic) fit around each peak")
    refine: bool = field(True, doc="fill missing keypoints from the person's tag (AE refine)")

    def validate(self):
        if self.nms_kernel % 2 == 0:
            raise ConfigError(f"nms_kernel = {self.nms_kernel} must be odd")
        if sorted(self.strides, reverse=True) != self.strides or len(set(self.strides)) != len(self.strides):
            raise ConfigError(f"strides {self.strides} must be strictly decreasing")


@register_codec("ae")
class AECodec(Codec):
    config_class = AEConfig
