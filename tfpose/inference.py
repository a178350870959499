"""Test-time inference shared by evaluation, predict and benchmarks: flip and multi-scale testing.

Paper 003 Sec. 4.1 "Testing" (following Associative Embedding): scales 0.5, 1 and 2, and the
heatmaps and pixel-wise keypoint regressions of the original and the horizontally flipped image
averaged. Here every scale and flip is run on the letterboxed S x S input:

    outputs = mean over s in scales, f in flips of  R_s(F_f(model(flip_f(resize_s(images)))))

with ``resize_s`` the bilinear (half-pixel) resize of the input to round(S * s) pixels,
``F_f = codec.flip_outputs`` for the flipped input (identity otherwise) and
``R_s = codec.resize_outputs(., size=output map size at scale 1, scale=s)`` for s != 1. The mean
is taken output by output, so ``codec.decode`` receives the same dict a single forward gives.

Typical use::

    model, codec = restore_for_inference(cfg, checkpoint)
    predict = predictor(cfg, model, codec)          # tf.function(images) -> decoded poses
    poses = predict(images)                         # images float32 0..255 [B, S, S, 3]
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import tensorflow as tf

from tfpose.config import ConfigError

log = logging.getLogger(__name__)

# Input sizes of the other scales must be multiples of the network's total stride (HRNet: 32,
# four stride-2 stages) so every branch of every scale has an integer size.
SIZE_MULTIPLE = 32


def scaled_sizes(input_size: int, scales: Sequence[float]) -> list:
    """[(scale, input size at that scale)] for ``eval.scales``; ConfigError for unusable scales.

    Scale 1 keeps ``input_size``; any other scale s gives round(S * s), which must be a positive
    multiple of :data:`SIZE_MULTIPLE`.
    """
    if not scales:
        raise ConfigError("eval.scales must list at least one scale (e.g. [1.0])")
    out = []
    for s in scales:
        s = float(s)
        if not s > 0:
            raise ConfigError(f"eval.scales: scale {s} must be > 0")
        size = int(input_size) if s == 1.0 else int(round(input_size * s))
        if s != 1.0 and (size <= 0 or size % SIZE_MULTIPLE):
            raise ConfigError(
                f"eval.scales: scale {s} of data.input_size {input_size} gives a {size}-pixel "
                f"input, not a multiple of {SIZE_MULTIPLE}; pick scales with round(S * s) a "
                f"multiple of {SIZE_MULTIPLE}")
        out.append((s, size))
    return out


def _flip_back(codec, outputs: dict) -> dict:
    try:
        return codec.flip_outputs(outputs)
    except NotImplementedError as e:
        raise ConfigError(f"eval.flip_test: the {codec.name or type(codec).__name__!r} codec "
                          f"cannot flip network outputs ({e}); set eval.flip_test: false") from None


def _resize_back(codec, outputs: dict, size: int, scale: float) -> dict:
    try:
        return codec.resize_outputs(outputs, size=size, scale=scale)
    except NotImplementedError as e:
        raise ConfigError(f"eval.scales: the {codec.name or type(codec).__name__!r} codec cannot "
                          f"resize network outputs ({e}); use eval.scales: [1.0]") from None


def _forward(model, images) -> dict:
    outputs = model(images, training=False)
    if not isinstance(outputs, dict):
        raise TypeError(f"the model must return a dict of outputs, got {type(outputs).__name__}")
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}


def network_outputs(model, codec, images, flip_test: bool = False,
                    scales: Sequence[float] = (1.0,)) -> dict:
    """Network outputs averaged over flips and scales: the dict ``codec.decode`` takes.

    Args:
        model: keras.Model, float32 RGB 0..255 images [B, S, S, 3] -> dict of outputs [B, h, w, C]
            (for scales other than 1 it must accept other square input sizes).
        codec: the config's codec; ``flip_outputs`` is used with ``flip_test``,
            ``resize_outputs`` for scales != 1.
        images: float32 [B, S, S, 3] (S static), values 0..255.
        flip_test: bool, also run the horizontally flipped images (in the same batch) and average
            in their outputs mapped back by ``codec.flip_outputs``.
        scales: sequence of float, input scales; for s != 1 the images are resized (bilinear,
            half-pixel centres) to round(S * s), a multiple of 32 (ConfigError otherwise), and the
            outputs brought back to the scale-1 map size with ``codec.resize_outputs``.

    Returns:
        dict name -> float32 [B, h, w, C], the mean over all (scale, flip) passes. With
        ``flip_test=False`` and ``scales=(1.0,)`` exactly ``model(images)``. TF ops only; works
        inside tf.function.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    size = images.shape[1]
    if images.shape.rank != 4 or size is None or images.shape[2] != size:
        raise ValueError(f"images must be [B, S, S, 3] with a static square size S; got "
                         f"{images.shape}")
    plan = scaled_sizes(int(size), scales)
    batch = tf.shape(images)[0]
    total, count = None, 0
    for scale, scaled in plan:
        x = images if scaled == size else tf.image.resize(images, [scaled, scaled], "bilinear")
        if flip_test:
            both = _forward(model, tf.concat([x, tf.reverse(x, axis=[2])], axis=0))
            passes = [{k: v[:batch] for k, v in both.items()},
                      _flip_back(codec, {k: v[batch:] for k, v in both.items()})]
        else:
            passes = [_forward(model, x)]
        if scaled != size:
            first = next(v for v in passes[0].values() if v.shape.rank == 4)
            map_size = int(round(first.shape[1] * size / scaled))  # output size at scale 1
            passes = [_resize_back(codec, p, map_size, scale) for p in passes]
        for p in passes:
            total = dict(p) if total is None else {k: total[k] + p[k] for k in total}
            count += 1
    if count == 1:
        return total
    return {k: v / float(count) for k, v in total.items()}


def predictor(cfg, model, codec):
    """tf.function(images float32 [B, S, S, 3] 0..255) -> decoded poses (input pixels).

    Runs :func:`network_outputs` with ``cfg.eval.flip_test`` and ``cfg.eval.scales``, then
    ``codec.decode``. Bad scales raise ConfigError here, before any tracing.
    """
    flip_test, scales = bool(cfg.eval.flip_test), tuple(float(s) for s in cfg.eval.scales)
    scaled_sizes(cfg.data.input_size, scales)

    @tf.function
    def predict(images):
        return codec.decode(network_outputs(model, codec, images, flip_test, scales))

    return predict


def outputs_function(cfg, model, codec):
    """tf.function(images) -> network outputs with the config's flip test and scales."""
    flip_test, scales = bool(cfg.eval.flip_test), tuple(float(s) for s in cfg.eval.scales)
    scaled_sizes(cfg.data.input_size, scales)
    return tf.function(lambda images: network_outputs(model, codec, images, flip_test, scales))


def checkpoint_run_dir(prefix: str, default: str = "") -> str:
    """The training run directory (``train.out_dir``) a checkpoint prefix belongs to.

    ``<run>/checkpoints/ckpt-N/ckpt`` and ``<run>/best/ckpt-N/ckpt`` give ``<run>``; a prefix in
    any other layout gives ``default``.
    """
    ckpt_dir = os.path.dirname(os.path.abspath(prefix))
    store = os.path.dirname(ckpt_dir)
    if os.path.basename(store) in ("checkpoints", "best"):
        return os.path.dirname(store)
    return default


def restore_for_inference(cfg, checkpoint: str):
    """(model, codec) of a trained run: the model's checkpoint weights and the codec's assets.

    Args:
        cfg: Config with a ``method``.
        checkpoint: str, a run directory, a checkpoint store, a ``ckpt-<step>`` directory or a
            prefix (tfpose.checkpoints.resolve_prefix).

    The codec's learned decoding parts (``codec.load_assets``, e.g. the dekr pose scorer) are
    read from the checkpoint's run directory, or from ``cfg.train.out_dir`` when the checkpoint
    is not inside a run's checkpoints/ or best/ folder.
    """
    from tfpose.checkpoints import restore_model
    from tfpose.registry import METHODS, build_codec

    if not cfg.method:
        raise ConfigError(f"{cfg.source}: running a checkpoint needs a 'method'")
    if cfg.method not in METHODS:
        raise ConfigError(f"{cfg.source}: unknown method {cfg.method!r} (known: "
                          f"{sorted(METHODS)})")
    model = METHODS[cfg.method].build_model(cfg)
    prefix = restore_model(model, checkpoint)
    codec = build_codec(cfg)
    run_dir = checkpoint_run_dir(prefix, cfg.train.out_dir)
    log.info("checkpoint %s, codec assets from %s", prefix, run_dir)
    codec.load_assets(run_dir)
    return model, codec
