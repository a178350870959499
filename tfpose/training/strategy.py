"""tf.distribute strategies for the training loop and the distributed training dataset.

``train.strategy``:
    ``auto``          a TPU if ``TPUClusterResolver`` finds one, MultiWorkerMirrored if
                      ``TF_CONFIG`` is set, Mirrored with more than one GPU, else OneDevice
                      (the first GPU, or the CPU).
    ``one_device``, ``mirrored``, ``multi_worker``, ``tpu``: that strategy.

MultiWorkerMirroredStrategy must be created before any other TensorFlow op runs in the process,
so :func:`make_strategy` is the first thing ``tfpose.train`` does.

Batch size: ``data.batch_size`` is the GLOBAL batch (all replicas of all workers together). Each
replica gets ``data.batch_size / num_replicas`` images; the batch must divide evenly.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from tfpose.config import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def _tpu_resolver():
    """A TPUClusterResolver when a TPU is reachable, else None."""
    resolver_cls = tf.distribute.cluster_resolver.TPUClusterResolver
    try:
        return resolver_cls()
    except (ValueError, RuntimeError, tf.errors.OpError):
        pass
    if tf.config.list_physical_devices("TPU"):
        return resolver_cls(tpu="local")
    return None


def _tpu_strategy(resolver):
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _one_device():
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy for ``train.strategy``; raises ConfigError when it cannot be had."""
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy = {name!r} is not one of {list(STRATEGIES)}")
    if name == "auto":
        resolver = _tpu_resolver()
        if resolver is not None:
            name = "tpu"
        elif os.environ.get("TF_CONFIG"):
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "tpu":
        resolver = _tpu_resolver()
        if resolver is None:
            raise ConfigError("train.strategy = tpu but no TPU was found (TPUClusterResolver)")
        strategy = _tpu_strategy(resolver)
    elif name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("train.strategy = multi_worker needs the TF_CONFIG environment "
                              "variable (cluster and task of this worker)")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = _one_device()
    log.info("strategy %s with %d replica(s)", type(strategy).__name__,
             strategy.num_replicas_in_sync)
    return strategy


def task_info(strategy) -> tuple[str, int]:
    """(task type, task id) of this process; ("chief", 0) outside multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        return resolver.task_type or "chief", int(resolver.task_id or 0)
    return "chief", 0


def is_chief(strategy) -> bool:
    """True for the process that writes checkpoints, logs and summaries.

    The chief is task ``chief`` of the cluster, or worker 0 when the cluster has no chief task.
    """
    task_type, task_id = task_info(strategy)
    if task_type == "chief":
        return True
    if task_type != "worker" or task_id != 0:
        return False
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return "chief" not in cluster


def per_replica_batch(global_batch: int, strategy) -> int:
    """``data.batch_size`` split over the replicas; ConfigError when it does not divide."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ConfigError(f"data.batch_size = {global_batch} (the global batch) is not divisible "
                          f"by the {replicas} replicas of {type(strategy).__name__}")
    return global_batch // replicas


def agree_max(strategy, value: int) -> int:
    """The largest of one integer per worker, the same on every worker (a collective)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return int(value)
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([value], tf.int64))
    return int(tf.reduce_max(strategy.gather(values, axis=0)).numpy())


def barrier(strategy):
    """Waits until every worker gets here (multi-worker: a collective; elsewhere a no-op).

    Used before a worker exits so that no worker leaves while the chief still writes its last
    checkpoint (the coordination service reports a departed worker as crashed)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        ones = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(1, tf.int64))
        strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

