"""The training engine behind ``python -m tfpose.train`` (custom tf.distribute loop).

Modules: ``strategy`` (tf.distribute strategies, global batch), ``optim`` (optimizers, LR
schedule, precision), ``checkpoint`` (crash-safe checkpoints), ``progress`` (console and
TensorBoard), ``loop`` (the Trainer and the method/loss/data contracts).
"""

from tfpose.training.checkpoint import CheckpointError, CheckpointStore, restore_model
from tfpose.training.loop import RunArgs, Trainer, TrainingDiverged, TrainResult
from tfpose.training.optim import WarmupPiecewiseConstant, build_optimizer
from tfpose.training.strategy import make_strategy

__all__ = ["CheckpointError", "CheckpointStore", "RunArgs", "TrainResult", "Trainer",
           "TrainingDiverged", "WarmupPiecewiseConstant", "build_optimizer", "make_strategy",
           "restore_model"]
