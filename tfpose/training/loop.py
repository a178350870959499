"""The training engine: one custom loop for OneDevice, Mirrored, MultiWorkerMirrored and TPU.

``model.fit`` is not used: it breaks under MultiWorkerMirroredStrategy with Keras 3 (DESIGN.md).

Contracts with a method (:class:`tfpose.registry.Method`)
---------------------------------------------------------
``build_model(cfg) -> keras.Model``
    Input: images ``[B, S, S, 3]`` float32 RGB in 0..255 (normalising them is the model's job).
    Output: a dict name -> tensor, the dict that ``codec.decode`` and the loss take. The outputs
    must be float32 under every ``train.precision`` (give the last layers ``dtype="float32"``);
    the loop casts them to float32 before the loss as well.
``build_loss(cfg) -> loss``, called as ``loss(targets, outputs) -> dict name -> [B] float32``
    ``targets`` is the batched dict of ``codec.encode``, ``outputs`` the model's dict. Each value
    is the per-sample loss of one named term (already weighted; summed or normalised over that
    sample's pixels, keypoints and people as the method defines), NOT averaged over the batch.
    The total loss is the sum of the terms. The loop reduces each term with
    ``tf.nn.compute_average_loss(term, global_batch_size=data.batch_size)`` (sum over the
    replica's samples / global batch), so the gradients summed over replicas are those of the
    mean over the global batch for any number of replicas. Regularisation (``model.losses`` and
    the L2 weight decay of adam/sgd) is added once per replica scaled by 1 / num_replicas.
    Every term is logged under its name (progress line and TensorBoard).

Data: ``tfpose.data.pipeline.build_dataset(cfg, "train", codec, training=True, input_context)``
yields ``(images, targets)`` batches of ``input_context.get_per_replica_batch_size(
data.batch_size)`` (``data.batch_size`` is the GLOBAL batch) from this input pipeline's shard,
finite (one pass) or repeating, with all its randomness drawn from ``cfg.seed``. The loop reads
it as numbered *streams*: stream ``i`` is the dataset built with seed ``cfg.seed + i``; a new
stream starts at every epoch boundary and whenever a stream runs out. The checkpoint holds the
stream index and the steps taken from it, so a resumed run sees exactly the batches an
uninterrupted one would have seen (with ``data.deterministic: true``): resuming mid-epoch
rebuilds the stream and skips its first batches, which costs up to one epoch of input work
(checkpoints at epoch ends resume with no skipping).

Stopping: NaN/inf in the loss or gradient stops the run (:class:`TrainingDiverged`, naming the
step and the term) without saving that state; ``train.max_minutes`` stops after the current
step with a checkpoint; Ctrl-C stops without saving (the last checkpoint stands).

Steps and epochs: an epoch is ``train.steps_per_epoch`` optimizer steps; 0 = one pass over the
training split, which needs a finite dataset of known cardinality. ``train.lr_steps`` are epochs,
turned into steps for the schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
import yaml

from tfpose.config import ConfigError, to_dict
from tfpose.fileio import atomic_write
from tfpose.training import optim
from tfpose.training import strategy as strategy_lib
from tfpose.training.checkpoint import CheckpointStore, TrainState, restore
from tfpose.training.progress import Progress, Summaries

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; the message names the step and the term."""


@dataclasses.dataclass
class RunArgs:
    """What ``python -m tfpose.train`` passes to a method's extra stage ``stages[name](cfg, args)``.

    Args:
        resume: bool, ``--resume`` was given.
        stage: str, the stage name.
        strategy: the tf.distribute strategy of the process (it can only be created once).
    """

    resume: bool = False
    stage: str = ""
    strategy: Optional[tf.distribute.Strategy] = None


@dataclasses.dataclass
class TrainResult:
    """The end of :meth:`Trainer.fit`.

    Args:
        step: int, optimizer steps taken in total.
        epoch: int, epochs completed.
        reason: str, "done" (all epochs), "time" (``max_minutes``) or "max_steps".
        checkpoint: str, prefix of the latest checkpoint ("" on non-chief workers).
        metrics: dict, the last evaluation's metrics (empty without evaluation).
        best_metric: float, the best evaluation metric (-inf without evaluation).
        model: keras.Model, the trained model (in memory, on every worker).
    """

    step: int
    epoch: int
    reason: str
    checkpoint: str
    metrics: dict
    best_metric: float
    model: Optional[keras.Model] = dataclasses.field(default=None, repr=False)


def default_train_dataset(cfg, codec, input_context):
    from tfpose.data.pipeline import build_dataset

    # steps_per_epoch 0: one pass per stream, so the epoch length is the split's size
    return build_dataset(cfg, "train", codec, training=True, input_context=input_context,
                         repeat=cfg.train.steps_per_epoch > 0)


def default_eval_dataset(cfg, codec):
    from tfpose.data.pipeline import build_dataset

    del codec  # evaluation needs images, not encoded targets
    return build_dataset(cfg, "val", None, training=False)


def default_metrics(cfg, results, image_ids):
    from tfpose.evaluate import compute_metrics

    return compute_metrics(cfg, results, image_ids)


def _release_in_background(holder: list) -> threading.Thread:
    """Empties ``holder`` (the only reference to a partly read tf.data iterator) on a thread.

    The iterator's destructor cancels its pipeline and waits for the pipeline's threads: 3-60 s
    at each epoch end of the CPU Quickstart while training kept both cores busy. Join the
    returned thread before the process exits (a destructor cut off at exit aborts it)."""
    thread = threading.Thread(target=holder.clear, name="tfpose-release-iterator")
    thread.start()
    return thread


def to_float32(outputs):
    """Casts every floating output of a model to float32 (mixed-precision models)."""
    return tf.nest.map_structure(
        lambda t: tf.cast(t, tf.float32) if t.dtype.is_floating else t, outputs)


def _per_sample_terms(terms) -> dict:
    """Checks the loss contract (dict name -> [B]) at trace time."""
    if not isinstance(terms, dict) or not terms:
        raise TypeError(f"the method's loss must return a non-empty dict name -> per-sample loss "
                        f"[B]; got {type(terms).__name__}")
    out = {}
    for name, value in terms.items():
        value = tf.convert_to_tensor(value)
        if value.shape.rank != 1:
            raise ValueError(f"loss term '{name}' has shape {value.shape}; the loss contract is "
                             "one per-sample value [B] per term (tfpose.training.loop)")
        out[name] = tf.cast(value, tf.float32)
    return out


class Trainer:
    """Trains a method's model on a config (see the module docstring for the contracts).

    Args:
        cfg: Config.
        method: registry.Method; default ``registry.METHODS[cfg.method]``.
        strategy: tf.distribute.Strategy; default from ``train.strategy``.
        codec: the codec; default ``registry.build_codec(cfg)``.
        build_model, build_loss: override the method's builders (extra stages).
        train_dataset_fn: callable(cfg, codec, input_context) -> tf.data.Dataset of training
            batches; default the data pipeline's ``build_dataset``.
        eval_dataset_fn: callable(cfg, codec) -> eval tf.data.Dataset (see tfpose.evaluate).
        metrics_fn: callable(cfg, results, image_ids) -> dict of metrics on those images; default
            ``tfpose.evaluate.compute_metrics``.
        out_dir: str, default ``train.out_dir``.
        stream: text stream of the progress output, default stdout.
    """

    def __init__(self, cfg, *, method=None, strategy=None, codec=None,
                 build_model: Optional[Callable] = None, build_loss: Optional[Callable] = None,
                 train_dataset_fn: Optional[Callable] = None,
                 eval_dataset_fn: Optional[Callable] = None,
                 metrics_fn: Optional[Callable] = None, out_dir: str = "", stream=None):
        from tfpose import registry

        if method is None and (build_model is None or build_loss is None):
            if not cfg.method:
                raise ConfigError(f"{cfg.source or 'config'}: 'method' is empty; training needs "
                                  f"one of {sorted(registry.METHODS)}")
            method = registry.METHODS[cfg.method]
        self.cfg = cfg
        self.tcfg = cfg.train
        self.method = method
        self.strategy = strategy or strategy_lib.make_strategy(self.tcfg.strategy)
        self.codec = codec if codec is not None else registry.build_codec(cfg)
        self.build_model = build_model or method.build_model
        self.build_loss = build_loss or method.build_loss
        self.train_dataset_fn = train_dataset_fn or default_train_dataset
        self.eval_dataset_fn = eval_dataset_fn or default_eval_dataset
        self.metrics_fn = metrics_fn or default_metrics
        if cfg.train.eval_every and metrics_fn is None and not cfg.data.val.annotations:
            raise ConfigError(f"{cfg.source or 'config'}: train.eval_every = "
                              f"{cfg.train.eval_every} evaluates on data.val, which has no "
                              "annotations file; set data.val.annotations or train.eval_every: 0")
        self.out_dir = out_dir or self.tcfg.out_dir
        self.chief = strategy_lib.is_chief(self.strategy)
        self.global_batch = int(cfg.data.batch_size)
        strategy_lib.per_replica_batch(self.global_batch, self.strategy)
        self.stream = stream

        keras.utils.set_random_seed(cfg.seed)
        self.precision = optim.resolve_precision(self.tcfg.precision, self.strategy)
        self.loss_scaling = self.precision == "mixed_float16"
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = self.tcfg.epochs * self.steps_per_epoch
        with self.strategy.scope():
            with optim.dtype_policy(self.precision):
                self.model = self.build_model(cfg)
            self.loss_fn = self.build_loss(cfg)  # float32, like the outputs it receives
            self.optimizer = optim.build_optimizer(self.tcfg, self.steps_per_epoch,
                                                   self.loss_scaling)
            self.optimizer.build(self.model.trainable_variables)
        self.schedule = optim.make_schedule(self.tcfg, self.steps_per_epoch)  # for logging
        self.l2 = optim.coupled_weight_decay(self.tcfg)
        self.state = TrainState()
        weights = {id(w) for w in self.model.weights}
        rng = [v for v in self.model.variables if id(v) not in weights]  # SeedGenerator states
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              state=self.state, rng=rng)
        self.store = CheckpointStore(os.path.join(self.out_dir, "checkpoints"),
                                     self.tcfg.keep_checkpoints)
        self.best_store = CheckpointStore(os.path.join(self.out_dir, "best"), 1)
        seeds = [id(v) for v in rng]
        self._replica_local = [v for v in self.model.non_trainable_variables
                               if id(v) not in seeds and tf.as_dtype(v.dtype).is_floating]
        self._sync_fn = tf.function(lambda: self.strategy.run(self._replica_copy_from_first))
        self._train_step = tf.function(self._distributed_step, reduce_retracing=True)
        self._forward_fn = tf.function(self._forward_replica, reduce_retracing=True)
        self._decode = tf.function(self.codec.decode, reduce_retracing=True)
        self._eval_dataset = None
        # A MultiWorkerMirrored iterator released on another thread aborts the process at exit
        # ("FATAL: exception not rethrown", the two-worker test): those release in the loop.
        self._background_release = not isinstance(
            self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    # -- data ----------------------------------------------------------------------------------
    def _stream(self, index: int, skip_steps: int = 0):
        """The distributed dataset of stream ``index`` (seed ``cfg.seed + index``) without the
        batches of its first ``skip_steps`` steps, and each pipeline's (cardinality, replicas)."""
        stream_cfg = dataclasses.replace(self.cfg, seed=self.cfg.seed + index)
        cardinalities = []

        def dataset_fn(ctx):
            ds = self.train_dataset_fn(stream_cfg, self.codec, ctx)
            local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            cardinalities.append((int(ds.cardinality()), local_replicas))
            return ds.skip(skip_steps * local_replicas) if skip_steps else ds

        return self.strategy.distribute_datasets_from_function(dataset_fn), cardinalities

    def _steps_per_epoch(self) -> int:
        if self.tcfg.steps_per_epoch:
            return int(self.tcfg.steps_per_epoch)
        _, cardinalities = self._stream(0)
        steps = 0
        for cardinality, local_replicas in cardinalities:
            if cardinality < 0:
                kind = "infinite" if cardinality == tf.data.INFINITE_CARDINALITY else "unknown"
                raise ConfigError(f"{self.cfg.source or 'config'}: train.steps_per_epoch = 0 "
                                  f"needs the size of the training split, but the training "
                                  f"dataset's cardinality is {kind}; set train.steps_per_epoch")
            steps = max(steps, math.ceil(cardinality / local_replicas))
        steps = strategy_lib.agree_max(self.strategy, steps)
        if steps == 0:
            raise ConfigError(f"{self.cfg.source or 'config'}: the training split has no full "
                              f"batch of data.batch_size = {self.global_batch}")
        return steps

    # -- steps ---------------------------------------------------------------------------------
    def _regularization(self):
        terms = list(self.model.losses)
        if self.l2:
            terms.append(0.5 * self.l2 * tf.add_n(
                [tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                 for v in self.model.trainable_variables]))
        if not terms:
            return None
        return tf.add_n([tf.cast(t, tf.float32) for t in terms])

    def _replica_step(self, images, targets, stop):
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = to_float32(self.model(images, training=True))
            per_sample = _per_sample_terms(self.loss_fn(targets, outputs))
            terms = {name: tf.nn.compute_average_loss(value, global_batch_size=self.global_batch)
                     for name, value in per_sample.items()}
            loss = tf.add_n(list(terms.values()))
            reg = self._regularization()
            if reg is not None:
                reg = reg / replicas
                loss = loss + reg
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        grads = tape.gradient(scaled, variables)
        used = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not used:
            raise ValueError("the loss has no gradient with respect to any model weight")
        if len(used) < len(variables):
            log.warning("no gradient for %d of %d trainable weights",
                        len(variables) - len(used), len(variables))
        names = list(terms) + (["regularization"] if reg is not None else [])
        values = [terms[n] for n in terms] + ([reg] if reg is not None else [])
        # tf.identity places the stop flag on this replica's device (all_reduce needs one).
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                 [g for g, _ in used] + values + [tf.identity(stop)])
        grads = reduced[:len(used)]
        values = reduced[len(used):-1]
        grad_norm = tf.linalg.global_norm(grads)
        if self.loss_scaling:
            grad_norm = grad_norm / tf.cast(self.optimizer.dynamic_scale, tf.float32)
        self.optimizer.apply(grads, [v for _, v in used])
        out = dict(zip(names, values))
        out["loss"] = tf.add_n(values)
        out["grad_norm"] = grad_norm
        out["stop"] = reduced[-1]
        return out

    def _distributed_step(self, images, targets, stop):
        out = self.strategy.run(self._replica_step, args=(images, targets, stop))
        # Every replica holds the same all-reduced values.
        return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0], out)

    def _replica_copy_from_first(self):
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(ctx.replica_id_in_sync_group, 0)
        values = [tf.where(first, v.value, tf.zeros_like(v.value)) for v in self._replica_local]
        for v, value in zip(self._replica_local, ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                                                values)):
            v.assign(value)

    def _sync_replicas(self):
        """Copies replica 0's non-trainable float variables (BatchNormalization moving
        statistics, which keras updates per replica) to every replica of every worker, as
        PyTorch DDP's ``broadcast_buffers``: saved, evaluated and in-memory models then agree."""
        if self._replica_local and self.strategy.num_replicas_in_sync > 1:
            self._sync_fn()

    def _forward_replica(self, images):
        return to_float32(self.model(images, training=False))

    def forward(self, images):
        """The model's float32 outputs in inference mode (evaluation, summaries)."""
        if isinstance(self.strategy, tf.distribute.TPUStrategy):  # no TPU ops outside run()
            out = self.strategy.run(self._forward_fn, args=(images,))
            return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0],
                                         out)
        return self._forward_fn(images)

    # -- checkpoints ---------------------------------------------------------------------------
    def _set_state(self, step, stream, stream_steps):
        self.state.step.assign(step)
        self.state.epoch.assign(step // self.steps_per_epoch)
        self.state.data_stream.assign(stream)
        self.state.stream_steps.assign(stream_steps)

    def _save(self) -> str:
        if not self.chief:
            return ""
        return self.store.save(self.checkpoint, int(self.state.step.numpy()),
                               self.state.as_dict())

    def _start(self, resume: bool) -> str:
        """Restores the latest checkpoint (``resume``) or checks that out_dir has none."""
        if self.chief:
            self.store.clean()
            self.best_store.clean()
        prefix = self.store.latest_prefix()
        if prefix and not resume:
            raise ConfigError(f"{self.store.directory} already holds checkpoints; pass --resume "
                              "to continue that run or set another train.out_dir")
        if prefix:
            restore(self.checkpoint, prefix)
            return prefix
        return ""

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Metrics of the current weights on the val split (tfpose.evaluate)."""
        from tfpose.evaluate import collect_results

        if self._eval_dataset is None:
            self._eval_dataset = self.eval_dataset_fn(self.cfg, self.codec)
        results, image_ids = collect_results(
            self._eval_dataset, lambda b: self.forward(b["image"]), self.codec,
            self.cfg.eval.max_images)
        metrics = self.metrics_fn(self.cfg, results, image_ids)
        return {k: float(v) for k, v in metrics.items()}

    def predictions_images(self, count: int) -> list:
        """``count`` val images with their decoded poses drawn (uint8 RGB)."""
        from tfpose.drawing import draw_poses

        if self._eval_dataset is None:
            self._eval_dataset = self.eval_dataset_fn(self.cfg, self.codec)
        drawn = []
        for batch in self._eval_dataset:
            poses = {k: v.numpy() for k, v in self._decode(self.forward(batch["image"])).items()}
            for b, image in enumerate(batch["image"].numpy()):
                if len(drawn) == count:
                    return drawn
                n = int(poses["num_people"][b])
                bgr = np.clip(image, 0, 255).astype(np.uint8)[..., ::-1]
                canvas = draw_poses(bgr, poses["keypoints"][b, :n], self.cfg.spec,
                                    scores=poses["scores"][b, :n])
                drawn.append(canvas[..., ::-1])
        return drawn

    def _best_key(self, metrics: dict) -> str:
        key = self.tcfg.best_metric or ("AP" if "AP" in metrics else next(iter(metrics), ""))
        if key not in metrics:
            raise ConfigError(f"train.best_metric = {key!r} is not one of the evaluation's "
                              f"metrics {sorted(metrics)}")
        return key

    def _evaluate_epoch(self, step: int, summaries: Summaries, progress: Progress) -> dict:
        metrics = self.evaluate()
        if not metrics:
            return metrics
        key = self._best_key(metrics)
        summaries.scalars(summaries.eval, step, metrics, prefix="metrics/")
        if self.tcfg.summary_images:
            for i, image in enumerate(self.predictions_images(self.tcfg.summary_images)):
                summaries.image(step, f"predictions/{i}", image)
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if metrics[key] > float(self.state.best_metric.numpy()):
            self.state.best_metric.assign(metrics[key])
            prefix = self.best_store.save(self.checkpoint, step,
                                          {**self.state.as_dict(), "metrics": metrics,
                                           "best_metric_name": key})
            text += f" (best {key}; saved {os.path.dirname(prefix)})"
        progress.message(f"eval at step {step}: {text}")
        return metrics

    # -- the loop ------------------------------------------------------------------------------
    def _check_finite(self, values: dict, step: int, last: str):
        names = [k for k in values if k not in ("stop", "grad_norm")]
        if not self.loss_scaling:  # with loss scaling, inf gradients only skip the step
            names.append("grad_norm")
        for name in names:
            if not math.isfinite(values[name]):
                what = "gradient norm" if name == "grad_norm" else f"loss term '{name}'"
                kept = (f"the last good checkpoint {os.path.dirname(last)} is kept" if last
                        else "no checkpoint was written yet")
                raise TrainingDiverged(
                    f"training stopped: non-finite {what} = {values[name]} at step {step} "
                    f"(epoch {(step - 1) // self.steps_per_epoch + 1}); {kept}. Lower "
                    "train.learning_rate, add train.warmup_steps or set train.clip_norm")

    def _check_batch(self, images):
        for part in self.strategy.experimental_local_results(images):
            per_replica = self.global_batch // self.strategy.num_replicas_in_sync
            if part.shape[0] is not None and part.shape[0] > per_replica:
                raise ValueError(
                    f"the training dataset yields batches of {part.shape[0]} per replica; with "
                    f"data.batch_size = {self.global_batch} (global) over "
                    f"{self.strategy.num_replicas_in_sync} replicas it must yield {per_replica} "
                    "(input_context.get_per_replica_batch_size)")

    def _write_config(self):
        if self.chief:
            atomic_write(os.path.join(self.out_dir, "config.yaml"),
                         yaml.safe_dump(to_dict(self.cfg), sort_keys=False).encode("utf-8"))

    def fit(self, resume: bool = False, max_steps: int = 0) -> TrainResult:
        """Trains until ``train.epochs`` (or ``max_minutes``, or ``max_steps`` more steps).

        Args:
            resume: bool, continue from the latest checkpoint in out_dir (a fresh start when
                there is none); without it an out_dir holding checkpoints is an error.
            max_steps: int, stop (with a checkpoint) after this many steps of this call; 0 = no
                limit.

        Raises:
            TrainingDiverged: a NaN/inf loss or gradient; nothing is saved from that step on.
        """
        tcfg = self.tcfg
        last = self._start(resume)
        self._write_config()
        step = int(self.state.step.numpy())
        stream = int(self.state.data_stream.numpy())
        stream_steps = int(self.state.stream_steps.numpy())
        saved_step = step if last else -1
        progress = Progress(self.total_steps, self.steps_per_epoch, tcfg.epochs, tcfg.log_every,
                            self.stream, enabled=self.chief)
        summaries = Summaries(os.path.join(self.out_dir, "logs"), enabled=self.chief)
        if last:
            progress.message(f"resumed from {os.path.dirname(last)} at step {step}")
        start, first_step = time.monotonic(), step
        metrics, reason, reader, sums, count, releases = {}, "done", None, {}, 0, []
        budget = tcfg.max_minutes * 60.0
        try:
            while step < self.total_steps:
                if reader is None:
                    dataset, _ = self._stream(stream, stream_steps)
                    reader, checked = [iter(dataset)], False
                try:
                    images, targets = next(reader[0])
                except StopIteration:
                    if stream_steps == 0:
                        raise ConfigError("the training dataset yielded no batch")
                    stream, stream_steps, reader = stream + 1, 0, None
                    continue
                if not checked:
                    self._check_batch(images)
                    checked = True
                out_of_time = budget > 0 and time.monotonic() - start > budget
                limit = max_steps > 0 and step + 1 - first_step >= max_steps
                values = self._train_step(images, targets,
                                          tf.constant(float(out_of_time), tf.float32))
                values = {k: float(v) for k, v in values.items()}
                self._check_finite(values, step + 1, last)
                step, stream_steps = step + 1, stream_steps + 1
                epoch_end = step % self.steps_per_epoch == 0
                if epoch_end:  # every epoch reads a new stream
                    if self._background_release:
                        releases.append(_release_in_background(reader))
                    stream, stream_steps, reader = stream + 1, 0, None
                self._set_state(step, stream, stream_steps)
                if step == first_step + 1:
                    progress.start(step)
                lr = float(self.schedule(step - 1))
                terms = {k: v for k, v in values.items() if k not in ("stop", "grad_norm")}
                progress.update(step, terms, lr, self.global_batch)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if step % tcfg.log_every == 0 or step == self.total_steps:
                    scalars = {k: v / count for k, v in sums.items() if k != "stop"}
                    scalars["learning_rate"] = lr
                    scalars["images_per_second"] = progress.rates(step, self.global_batch)[0]
                    summaries.scalars(summaries.train, step, scalars, prefix="train/")
                    sums, count = {}, 0
                epoch = step // self.steps_per_epoch
                stop = values["stop"] > 0
                if stop or (limit and step < self.total_steps):
                    reason = "time" if stop else "max_steps"
                if epoch_end or step % tcfg.checkpoint_every == 0 or reason != "done":
                    self._sync_replicas()  # on every worker, before evaluation and saving
                    if epoch_end and self.chief and tcfg.eval_every and (
                            epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs):
                        metrics = self._evaluate_epoch(step, summaries, progress)
                    last = self._save() or last
                    saved_step = step
                if reason != "done":
                    break
            if saved_step != step:
                self._sync_replicas()
                last = self._save() or last
            strategy_lib.barrier(self.strategy)
        finally:
            progress.close()
            summaries.flush()
            for thread in releases:
                thread.join()
        if reason == "time":
            progress.message(f"stopped after train.max_minutes = {tcfg.max_minutes} at step "
                             f"{step}; continue with --resume")
        return TrainResult(step=step, epoch=step // self.steps_per_epoch, reason=reason,
                           checkpoint=last, metrics=metrics,
                           best_metric=float(self.state.best_metric.numpy()), model=self.model)
