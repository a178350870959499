"""Optimizers, the learning-rate schedule and the mixed-precision policy of the training loop.

Optimizers (``train.optimizer``):
    ``adam``   Adam; ``weight_decay`` is an L2 penalty ``0.5 * wd * sum(w ** 2)`` added to the loss
               (coupled, like PyTorch's ``Adam(weight_decay=...)``).
    ``adamw``  AdamW; ``weight_decay`` is decoupled (Loshchilov & Hutter, ICLR 2019).
    ``sgd``    SGD with momentum ``train.momentum``; ``weight_decay`` is an L2 penalty as for adam
               (the HRNet / HigherHRNet recipe).
Gradients reach the optimizer already summed over replicas (the loop all-reduces them to clip by
the norm of the *global* gradient and to test them for NaN), so the optimizer classes here do not
all-reduce a second time. ``train.clip_norm > 0`` clips that global gradient to this norm.
"""

from __future__ import annotations

import contextlib
import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="tfpose")
class WarmupPiecewiseConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then piecewise-constant decay.

    ``lr(step) = base * factor ** #{b in boundaries : b <= step} * min(1, (step + 1) / warmup)``
    (the warmup factor is 1 when ``warmup_steps == 0``). ``step`` is the optimizer's
    ``iterations`` (0 at the first update), so the schedule's position is restored with the
    optimizer's checkpoint.

    Args:
        base_lr: float, the learning rate after warmup and before the first boundary.
        boundaries: list of int, increasing optimizer steps where the rate is multiplied by
            ``factor`` (``train.lr_steps`` epochs x steps per epoch).
        factor: float, multiplier applied at each boundary.
        warmup_steps: int, steps of linear warmup from ``base / warmup_steps`` to ``base``.
    """

    def __init__(self, base_lr: float, boundaries=(), factor: float = 0.1, warmup_steps: int = 0):
        boundaries = [int(b) for b in boundaries]
        if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be increasing. Received: boundaries={boundaries}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0. Received: warmup_steps={warmup_steps}")
        self.base_lr = float(base_lr)
        self.boundaries = boundaries
        self.factor = float(factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        passed = tf.zeros([], tf.float32)
        if self.boundaries:
            passed = tf.reduce_sum(
                tf.cast(step >= tf.constant(self.boundaries, tf.int64), tf.float32))
        lr = self.base_lr * tf.pow(tf.constant(self.factor, tf.float32), passed)
        if self.warmup_steps:
            ramp = tf.cast(step + 1, tf.float32) / float(self.warmup_steps)
            lr = lr * tf.minimum(ramp, 1.0)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "boundaries": list(self.boundaries),
                "factor": self.factor, "warmup_steps": self.warmup_steps}


def make_schedule(train_cfg, steps_per_epoch: int) -> WarmupPiecewiseConstant:
    """The schedule of a TrainConfig: boundaries at ``lr_steps`` epochs x ``steps_per_epoch``."""
    return WarmupPiecewiseConstant(
        train_cfg.learning_rate, [e * steps_per_epoch for e in train_cfg.lr_steps],
        train_cfg.lr_factor, train_cfg.warmup_steps)


class _PreReducedGradients:
    """Mixin: gradients given to ``apply`` are already summed over replicas."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


@keras.saving.register_keras_serializable(package="tfpose")
class Adam(_PreReducedGradients, keras.optimizers.Adam):
    """keras Adam taking replica-summed gradients (see module docstring)."""


@keras.saving.register_keras_serializable(package="tfpose")
class AdamW(_PreReducedGradients, keras.optimizers.AdamW):
    """keras AdamW taking replica-summed gradients (see module docstring)."""


@keras.saving.register_keras_serializable(package="tfpose")
class SGD(_PreReducedGradients, keras.optimizers.SGD):
    """keras SGD taking replica-summed gradients (see module docstring)."""


def coupled_weight_decay(train_cfg) -> float:
    """The L2 coefficient the loop adds to the loss (0 for adamw, whose decay is decoupled)."""
    return 0.0 if train_cfg.optimizer == "adamw" else float(train_cfg.weight_decay)


def build_optimizer(train_cfg, steps_per_epoch: int, loss_scaling: bool = False):
    """The optimizer of a TrainConfig; call it inside ``strategy.scope()``.

    Args:
        train_cfg: TrainConfig.
        steps_per_epoch: int, optimizer steps in one epoch (places the LR boundaries).
        loss_scaling: bool, wrap in ``keras.optimizers.LossScaleOptimizer`` (mixed_float16).
    """
    schedule = make_schedule(train_cfg, steps_per_epoch)
    clip = {"global_clipnorm": train_cfg.clip_norm} if train_cfg.clip_norm > 0 else {}
    if train_cfg.optimizer == "adam":
        opt = Adam(learning_rate=schedule, **clip)
    elif train_cfg.optimizer == "adamw":
        opt = AdamW(learning_rate=schedule, weight_decay=train_cfg.weight_decay, **clip)
    elif train_cfg.optimizer == "sgd":
        opt = SGD(learning_rate=schedule, momentum=train_cfg.momentum, **clip)
    else:
        raise ValueError(f"unknown optimizer {train_cfg.optimizer!r}")
    if loss_scaling:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def inner_optimizer(optimizer):
    """The optimizer that holds the schedule (unwraps a LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def resolve_precision(precision: str, strategy) -> str:
    """The keras dtype policy for ``train.precision`` on this strategy's devices.

    float16 needs GPUs; on CPUs and TPUs ``mixed_float16`` becomes ``mixed_bfloat16`` (logged).
    """
    if precision != "mixed_float16":
        return precision
    devices = strategy.extended.worker_devices
    if all("GPU" in d.upper() for d in devices):
        return precision
    log.warning("train.precision = mixed_float16 needs GPUs; using mixed_bfloat16 on %s",
                ", ".join(devices))
    return "mixed_bfloat16"


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets the global keras dtype policy while models are built, then restores the previous one.

    Layers keep the policy they were created with, so the policy only has to be global while the
    method's model builder runs.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
