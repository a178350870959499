"""The training loop on the toy method: resume, reproducibility, NaN stop, precision, evaluation."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf

import toy_method
from tfpose import train
from tfpose.config import ConfigError
from tfpose.training import CheckpointStore, Trainer, TrainingDiverged, optim
from tfpose.training.checkpoint import resolve_prefix


def _fit(cfg, kwargs, **fit_kwargs):
    trainer = Trainer(cfg, **kwargs, stream=io.StringIO())
    return trainer, trainer.fit(**fit_kwargs)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("repeat, steps_per_epoch, epochs, stop", [
    (False, 4, 3, 6),  # 3-step passes run out mid-epoch; stop 2 steps into epoch 2's stream
    (True, 2, 4, 5),   # a repeating dataset: one stream per epoch; stop mid-epoch
])
def test_resume_continues_identically(toy, tmp_path, repeat, steps_per_epoch, epochs, stop):
    # lr_steps=[2]: the stop falls after the LR boundary, so the data position and the schedule
    # position must both resume.
    options = dict(epochs=epochs, steps_per_epoch=steps_per_epoch, lr_steps=[2],
                   checkpoint_every=3)
    data = dict(train_dataset_fn=toy_method.train_dataset_fn(0, repeat=repeat))
    straight_cfg = toy_method.make_config(str(tmp_path / "straight"), **options)
    _, straight = _fit(straight_cfg, toy(straight_cfg, **data))
    total = epochs * steps_per_epoch
    assert straight.step == total and straight.reason == "done"

    cfg = toy_method.make_config(str(tmp_path / "split"), **options)
    _, first = _fit(cfg, toy(cfg, **data), max_steps=stop)
    assert first.step == stop and first.reason == "max_steps"
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg, **toy(cfg, **data)).fit()
    trainer, second = _fit(cfg, toy(cfg, **data), resume=True)
    assert second.step == total and int(trainer.optimizer.iterations.numpy()) == total
    _assert_same(toy_method.weights(straight.model), toy_method.weights(second.model))


def test_two_runs_are_reproducible(toy, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = toy_method.make_config(str(tmp_path / name), epochs=2)
        runs.append(_fit(cfg, toy(cfg))[1])
    _assert_same(toy_method.weights(runs[0].model), toy_method.weights(runs[1].model))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=3, checkpoint_every=1)
    # Stream 1 (epoch 2), batch 1 = step 5 has NaN heatmap targets.
    kwargs = toy(cfg, train_dataset_fn=toy_method.train_dataset_fn(cfg.seed, nan_at=(1, 1)))
    with pytest.raises(TrainingDiverged, match=r"loss term 'heatmap' = nan at step 5 "
                                               r"\(epoch 2\).*ckpt-4 is kept"):
        _fit(cfg, kwargs)
    store = CheckpointStore(str(tmp_path / "checkpoints"), cfg.train.keep_checkpoints)
    assert store.latest()["step"] == 4
    reader = tf.train.load_checkpoint(store.latest_prefix())
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_mixed_bfloat16_on_cpu_gives_float32_outputs(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=1,
                                 precision="mixed_float16")  # no GPU: becomes mixed_bfloat16
    trainer, result = _fit(cfg, toy(cfg))
    assert trainer.precision == "mixed_bfloat16" and not trainer.loss_scaling
    images = tf.zeros([1, cfg.data.input_size, cfg.data.input_size, 3])
    assert trainer.model(images)["heatmap"].dtype == tf.bfloat16
    assert trainer.forward(images)["heatmap"].dtype == tf.float32
    assert all(v.dtype == "float32" for v in trainer.model.trainable_variables)
    assert result.step == 1


def test_evaluation_keeps_the_best_checkpoint_and_writes_summaries(toy, tmp_path):
    values = iter([0.3, 0.7, 0.5])
    cfg = toy_method.make_config(str(tmp_path), epochs=3, eval_every=1, summary_images=2)
    kwargs = toy(cfg, metrics_fn=lambda cfg, results, image_ids: {"AP": next(values),
                                                       "people": float(len(results))})
    _, result = _fit(cfg, kwargs)
    assert result.best_metric == pytest.approx(0.7) and result.metrics["people"] == 4
    best = CheckpointStore(str(tmp_path / "best"), 1).latest()
    assert best["step"] == 6 and best["metrics"]["AP"] == pytest.approx(0.7)
    assert resolve_prefix(str(tmp_path / "best")).endswith("ckpt-6/ckpt")

    tags = set()
    for split in ("train", "eval"):
        for path in tf.io.gfile.glob(str(tmp_path / "logs" / split / "events*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                tags.update(v.tag for v in event.summary.value)
    assert {"train/heatmap", "train/offset", "train/loss", "train/learning_rate",
            "metrics/AP", "predictions/0", "predictions/1"} <= tags


def test_max_minutes_stops_with_a_checkpoint(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=50, max_minutes=1e-6)
    _, result = _fit(cfg, toy(cfg))
    assert result.reason == "time" and 0 < result.step < 50 * 3
    assert CheckpointStore(str(tmp_path / "checkpoints"), 3).latest()["step"] == result.step


def test_loss_contract_is_enforced(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=1)
    method = toy_method.make_method()
    method.build_loss = lambda cfg: (lambda targets, outputs: {
        "mean": tf.reduce_mean(outputs["heatmap"])})
    with pytest.raises(ValueError, match="loss term 'mean' has shape"):
        _fit(cfg, toy(cfg, method=method))


def test_per_replica_batch_contract_is_enforced(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=1)
    bank = toy_method.train_dataset_fn(cfg.seed)
    doubled = lambda c, codec, ctx: bank(c, codec, ctx).unbatch().batch(8)  # noqa: E731
    with pytest.raises(ValueError, match="per replica"):
        _fit(cfg, toy(cfg, train_dataset_fn=doubled))


def test_stage_hook(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=1)
    calls = []
    method = toy_method.make_method(stages={"scorer": lambda c, args: calls.append(args) or 7})
    assert train.run(cfg, resume=True, stage="scorer", method=method) == 7
    assert calls[0].stage == "scorer" and calls[0].resume and calls[0].strategy is not None
    with pytest.raises(ConfigError, match="no such stage.*scorer"):
        train.run(cfg, stage="nope", method=method)


def test_config_writes_back(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=1)
    _fit(cfg, toy(cfg))
    assert os.path.isfile(tmp_path / "config.yaml")


def test_loss_scaling_path(toy, tmp_path, monkeypatch):
    # float16 with a LossScaleOptimizer is what GPUs get; forced here to run the path on CPU.
    monkeypatch.setattr(optim, "resolve_precision", lambda precision, strategy: precision)
    cfg = toy_method.make_config(str(tmp_path), epochs=1, steps_per_epoch=8,
                                 precision="mixed_float16")
    trainer, result = _fit(cfg, toy(cfg))
    assert trainer.loss_scaling and result.step == 8
    assert trainer.model.layers[-1].compute_dtype == "float16"
    optimizer = trainer.optimizer
    # Overflowing float16 gradients skip the update and halve the scale, without stopping.
    skipped = np.log2(optimizer.initial_scale / float(optimizer.dynamic_scale.numpy()))
    applied = int(optimizer.iterations.numpy())
    assert applied >= 1 and skipped >= 1 and applied + skipped == 8
    assert CheckpointStore(str(tmp_path / "checkpoints"), 3).latest()["step"] == 8


def test_one_pass_epochs_need_a_finite_dataset(toy, tmp_path):
    cfg = toy_method.make_config(str(tmp_path), steps_per_epoch=0)
    kwargs = toy(cfg, train_dataset_fn=toy_method.train_dataset_fn(0, repeat=True))
    with pytest.raises(ConfigError, match="cardinality is infinite; set train.steps_per_epoch"):
        Trainer(cfg, **kwargs)
