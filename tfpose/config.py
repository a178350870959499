"""Typed, strict configuration: YAML -> dataclasses.

Every config file is read with ``yaml.safe_load`` and turned into :class:`Config`. Unknown keys,
wrong types, NaN/inf and out-of-range values raise :class:`ConfigError` with one line naming the
file and the dotted key. ``--set a.b=c`` overrides are applied to the raw mapping before
validation, so they get the same checks.

Sections that differ per method (``codec``, ``model``, ``loss``) carry a ``type`` key and are
validated against the dataclass registered for that type with :func:`register_section`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any, Literal, Mapping, Union

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


def field(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, low=None,
          high=None, doc=""):
    """A dataclass field with an optional inclusive range [low, high] checked at load time."""
    meta = {"low": low, "high": high, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- per-method sections ------------------------------------------------------------------------

_SECTIONS: dict[str, dict[str, type]] = {"codec": {}, "model": {}, "loss": {}}


def register_section(section: str, type_name: str):
    """Class decorator: registers a dataclass as the schema of ``<section>.type == type_name``."""

    def wrap(cls):
        _SECTIONS[section][type_name] = cls
        return cls

    return wrap


def section_types(section: str) -> dict[str, type]:
    return dict(_SECTIONS[section])


# --- the shared schema --------------------------------------------------------------------------


@dataclasses.dataclass
class SplitConfig:
    """One dataset split. Either a COCO/MPII JSON + image folder, or TFRecord shards."""

    annotations: str = ""
    images: str = ""
    tfrecords: str = field("", doc="glob of TFRecord shards written by tfpose.data.convert")
    format: Literal["coco", "mpii"] = "coco"


@dataclasses.dataclass
class AugmentConfig:
    """Random affine augmentation (bottom-up papers' recipe: HigherHRNet / DEKR)."""

    rotation: float = field(30.0, low=0.0, high=180.0, doc="max rotation, degrees")
    scale_min: float = field(0.75, low=0.01)
    scale_max: float = field(1.5, low=0.01)
    translation: float = field(40.0, low=0.0, doc="max shift in input pixels")
    flip: float = field(0.5, low=0.0, high=1.0, doc="probability of a horizontal flip")
    center_on_person: bool = field(False, doc="centre the crop on a random labelled person "
                                   "instead of the image centre (PoseDet recipe, paper 001 "
                                   "Sec. 4.1)")


@dataclasses.dataclass
class DataConfig:
    keypoints: Union[str, dict] = "coco"
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    input_size: int = field(512, low=32, high=4096)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = field(8, low=1)
    shuffle_buffer: int = field(512, low=0)
    parallel_calls: int = field(-1, low=-1, doc="-1 = tf.data.AUTOTUNE")
    deterministic: bool = False
    cache: bool = field(False, doc="cache decoded images in memory (small datasets)")


@dataclasses.dataclass
class EvalConfig:
    metric: Literal["coco", "crowdpose", "mpii"] = "coco"
    flip_test: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    batch_size: int = field(1, low=1)
    max_images: int = field(0, low=0, doc="0 = all")


@dataclasses.dataclass
class TrainConfig:
    """Training loop settings (tfpose.train). Defaults: the bottom-up papers' COCO recipe."""

    out_dir: str = field("runs/default", doc="checkpoints, TensorBoard logs, exported results")
    epochs: int = field(140, low=1)
    steps_per_epoch: int = field(0, low=0, doc="0 = one pass over the training set")
    max_minutes: float = field(0.0, low=0.0, doc="stop after this wall time (0 = no limit)")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = field(1e-3, low=0.0)
    weight_decay: float = field(0.0, low=0.0)
    lr_steps: list[int] = field(default_factory=lambda: [90, 120], low=0,
                                doc="epochs at which the LR is multiplied by lr_factor")
    lr_factor: float = field(0.1, low=0.0, high=1.0)
    warmup_steps: int = field(0, low=0)
    clip_norm: float = field(0.0, low=0.0, doc="global gradient-norm clipping (0 = off)")
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker", "tpu"] = "auto"
    checkpoint_every: int = field(500, low=1, doc="steps between checkpoints")
    keep_checkpoints: int = field(3, low=1)
    eval_every: int = field(1, low=0, doc="epochs between evaluations (0 = never)")
    log_every: int = field(20, low=1, doc="steps between TensorBoard scalars")
    momentum: float = field(0.9, low=0.0, high=1.0, doc="SGD momentum")
    best_metric: str = field("", doc="evaluation metric whose best value is kept in best/ "
                             "(empty: AP, or the metric's first value, e.g. PCKh)")
    summary_images: int = field(4, low=0, doc="val images drawn with their predictions in "
                                "TensorBoard at each evaluation")

    def validate(self):
        if any(b <= a for a, b in zip(self.lr_steps, self.lr_steps[1:])):
            raise ConfigError(f"lr_steps {self.lr_steps} must be increasing")
        if self.lr_steps and self.lr_steps[-1] > self.epochs:
            raise ConfigError(f"lr_steps {self.lr_steps} go past epochs = {self.epochs}")


@dataclasses.dataclass
class Config:
    method: str = field("", doc="registered method name; empty for codec-only configs (oracle)")
    data: DataConfig = field(default_factory=DataConfig)
    codec: Any = None
    model: Any = None
    loss: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = field(0, low=0)
    source: str = field("", doc="the file this config was read from (set by load_config)")

    @property
    def spec(self):
        from tfpose.keypoints import get_spec

        return get_spec(self.data.keypoints)


# --- validation ---------------------------------------------------------------------------------

_NONE = type(None)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, key: str, err):
    """Checks/converts one value against a type annotation; `err(msg)` raises a ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and _NONE in options:
            return None
        for option in options:
            if option is _NONE:
                continue
            try:
                return _convert(value, option, key, err)
            except ConfigError:
                continue
        err(f"{key} = {value!r} matches none of {[_type_name(o) for o in options]}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            err(f"{key} = {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            err(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_convert(v, item, f"{key}[{i}]", err) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            err(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, err)
    if tp is bool:
        if not isinstance(value, bool):
            err(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            err(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            err(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            err(f"{key} must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            err(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _check_range(value, f: dataclasses.Field, key: str, err):
    low, high = f.metadata.get("low"), f.metadata.get("high")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (low is not None and v < low) or (high is not None and v > high):
                bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                err(f"{key} = {v!r} is out of range {bounds}")


def _build(cls, data, prefix: str, err):
    """Builds dataclass `cls` from mapping `data`, strictly."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        err(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else str(k)
            err(f"unknown key '{where}' (allowed: {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        if prefix == "" and name in _SECTIONS:
            kwargs[name] = _build_section(name, data[name], err)
            continue
        value = _convert(data[name], hints[name], key, err)
        _check_range(value, f, key, err)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        err(str(e))
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            err(f"{prefix + ': ' if prefix else ''}{e}")
    return obj


def _build_section(section: str, data, err):
    if data is None:
        return None
    if not isinstance(data, Mapping) or "type" not in data:
        err(f"{section} must be a mapping with a 'type' key "
            f"(one of {sorted(_SECTIONS[section])}), got {data!r}")
    type_name = data["type"]
    if type_name not in _SECTIONS[section]:
        err(f"{section}.type = {type_name!r} is not one of {sorted(_SECTIONS[section])}")
    return _build(_SECTIONS[section][type_name], {k: v for k, v in data.items() if k != "type"},
                  section, err)


def _raiser(source: str):
    def err(msg):
        raise ConfigError(f"{source}: {msg}")

    return err


# --- overrides and loading ----------------------------------------------------------------------


def apply_overrides(raw: dict, overrides, source: str = "--set") -> dict:
    """Applies ``a.b=c`` strings to a raw mapping; values are parsed as YAML scalars/lists."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"{source}: value of {key!r} is not valid YAML: {text!r}") from None
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: cannot set {key!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str, overrides=()) -> Config:
    """Reads, overrides and validates a YAML config; raises ConfigError naming file and key."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    apply_overrides(raw, overrides, f"{path} (--set)")
    return config_from_dict(raw, source=path)


def config_from_dict(raw: Mapping, source: str = "<config>") -> Config:
    """Validates a raw mapping (already parsed YAML) into a Config."""
    import tfpose.registry  # noqa: F401  (registers every method's sections)

    err = _raiser(source)
    cfg = _build(Config, dict(raw), "", err)
    cfg.source = source
    _cross_checks(cfg, err)
    return cfg


def _cross_checks(cfg: Config, err):
    from tfpose import registry
    from tfpose.keypoints import SpecError, get_spec

    if cfg.method and cfg.method not in registry.METHODS:
        err(f"method = {cfg.method!r} is not one of {sorted(registry.METHODS)}")
    try:
        get_spec(cfg.data.keypoints)
    except SpecError as e:
        err(f"data.keypoints: {e}")
    aug = cfg.data.augment
    if aug.scale_min > aug.scale_max:
        err(f"data.augment.scale_min = {aug.scale_min} is larger than scale_max = {aug.scale_max}")
    if cfg.codec is None:
        err("codec: missing section")
    for name, split in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if split.tfrecords and split.annotations:
            err(f"{name}: give either 'annotations' or 'tfrecords', not both")
    if cfg.method:
        registry.METHODS[cfg.method].check_config(cfg, err)


def to_dict(cfg) -> dict:
    """A config (or section) back to a plain mapping, with the section `type` keys restored."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
            for section, types_ in _SECTIONS.items():
                if f.name == section:
                    value = {"type": next(k for k, v in types_.items() if isinstance(
                        getattr(cfg, f.name), v)), **value}
        out[f.name] = value
    return out


def repo_path(*parts: str) -> str:
    """A path relative to the repository root (where configs/ lives)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)
