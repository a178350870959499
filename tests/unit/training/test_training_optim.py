"""LR schedule, optimizers and gradient clipping."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

import toy_method
from tfpose.config import TrainConfig
from tfpose.training import Trainer, WarmupPiecewiseConstant, build_optimizer
from tfpose.training.optim import SGD, AdamW, coupled_weight_decay, make_schedule


def _lr(schedule, step):
    return float(schedule(tf.constant(step, tf.int64)))


def test_schedule_values_at_boundaries():
    schedule = WarmupPiecewiseConstant(0.1, boundaries=[10, 20], factor=0.5, warmup_steps=4)
    expected = {0: 0.025, 1: 0.05, 3: 0.1, 4: 0.1, 9: 0.1, 10: 0.05, 19: 0.05, 20: 0.025,
                1000: 0.025}
    for step, lr in expected.items():
        assert _lr(schedule, step) == pytest.approx(lr), step


def test_schedule_from_config_uses_epochs_times_steps_per_epoch():
    cfg = TrainConfig(learning_rate=1e-3, lr_steps=[90, 120], lr_factor=0.1, warmup_steps=0)
    schedule = make_schedule(cfg, steps_per_epoch=100)
    assert schedule.boundaries == [9000, 12000]
    assert _lr(schedule, 8999) == pytest.approx(1e-3)
    assert _lr(schedule, 9000) == pytest.approx(1e-4)
    assert _lr(schedule, 12000) == pytest.approx(1e-5)


def test_schedule_serialises():
    schedule = WarmupPiecewiseConstant(0.2, [5], 0.1, 3)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(again, WarmupPiecewiseConstant)
    assert again.get_config() == schedule.get_config()
    optimizer = build_optimizer(TrainConfig(lr_steps=[1], epochs=2), steps_per_epoch=5)
    assert optimizer.get_config()["learning_rate"]["config"]["boundaries"] == [5]
    with pytest.raises(ValueError, match="increasing"):
        WarmupPiecewiseConstant(0.1, [5, 5])


def test_optimizer_kinds_and_weight_decay():
    adamw = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.05), 10)
    assert isinstance(adamw, AdamW) and adamw.weight_decay == pytest.approx(0.05)
    sgd = build_optimizer(TrainConfig(optimizer="sgd", momentum=0.9, clip_norm=2.0), 10)
    assert isinstance(sgd, SGD) and sgd.momentum == pytest.approx(0.9)
    assert sgd.global_clipnorm == pytest.approx(2.0)
    assert coupled_weight_decay(TrainConfig(optimizer="adamw", weight_decay=0.05)) == 0
    assert coupled_weight_decay(TrainConfig(optimizer="sgd", weight_decay=1e-4)) == 1e-4
    scaled = build_optimizer(TrainConfig(), 10, loss_scaling=True)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)


def _first_update_norm(toy, tmp_path, clip_norm):
    """Norm of the first SGD update (momentum buffers start at 0: update = lr * gradient)."""
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=1, optimizer="sgd",
                                 learning_rate=1.0, lr_steps=[], clip_norm=clip_norm)
    trainer = Trainer(cfg, **toy(cfg), stream=io.StringIO())
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.fit()
    after = [v.numpy() for v in trainer.model.trainable_variables]
    return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before))))


def test_gradient_clipping_bounds_the_update(toy, tmp_path):
    free = _first_update_norm(toy, tmp_path / "free", 0.0)
    clip = free / 10
    clipped = _first_update_norm(toy, tmp_path / "clipped", clip)
    assert clipped == pytest.approx(clip, rel=1e-4)


def test_coupled_weight_decay_is_a_logged_loss_term(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=1, optimizer="sgd",
                                 weight_decay=0.01)
    stream = io.StringIO()
    Trainer(cfg, **toy(cfg), stream=stream).fit()
    assert "regularization" in stream.getvalue()
