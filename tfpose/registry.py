"""Registry of methods and codecs, by name.

A method is a codec + a model builder + a loss + config checks (DESIGN.md section 3). Adding a
method adds its modules and one import line here; no other shared file changes.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

from tfpose.config import register_section

CODECS: dict[str, type] = {}
METHODS: dict[str, "Method"] = {}


def register_codec(name: str):
    """Class decorator for a Codec subclass; its ``config_class`` becomes the ``codec`` schema."""

    def wrap(cls):
        cls.name = name
        register_section("codec", name)(cls.config_class)
        CODECS[name] = cls
        return cls

    return wrap


def _no_checks(cfg, err):
    return None


@dataclasses.dataclass
class Method:
    """A registered method.

    Args:
        name: str, config ``method`` value.
        codec: str, the codec type the method uses.
        build_model: callable(cfg) -> keras.Model taking float32 RGB images 0..255 [B, S, S, 3]
            (normalising is the model's job) and returning a dict name -> tensor (what
            ``codec.decode`` and the loss take), float32 under every precision policy.
        build_loss: callable(cfg) -> loss, called as ``loss(targets, outputs) -> dict name ->
            [B] float32``: one per-sample value per named term (already weighted, reduced over
            the sample's pixels/keypoints/people as the method defines), NOT averaged over the
            batch; the training loop divides by the global batch (tfpose/training/loop.py).
        check_config: callable(cfg, err) for cross-field checks; `err(msg)` raises a ConfigError.
        stages: dict name -> callable(cfg, RunArgs): extra training stages run by
            ``python -m tfpose.train --stage NAME`` (e.g. a pose-scoring net).
    """

    name: str
    codec: str
    build_model: Optional[Callable] = None
    build_loss: Optional[Callable] = None
    check_config: Callable = _no_checks
    stages: dict = dataclasses.field(default_factory=dict)


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def build_codec(cfg):
    """The codec for a Config (``cfg.codec`` holds its typed settings)."""
    name = next(n for n, c in CODECS.items() if isinstance(cfg.codec, c.config_class))
    return CODECS[name](cfg.codec, cfg.spec, cfg.data.input_size)


# Modules that register codecs and methods.
_MODULES = ("tfpose.codecs.ae", "tfpose.codecs.dekr", "tfpose.methods.dekr",
            "tfpose.codecs.posedet", "tfpose.methods.posedet")
for _module in _MODULES:
    importlib.import_module(_module)
