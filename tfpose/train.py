"""Trains a method on a config.

    python -m tfpose.train --config C [--set key=value ...] [--resume] [--stage NAME]

Checkpoints, TensorBoard logs (``logs/``), the best-metric checkpoint (``best/``) and the
resolved ``config.yaml`` go to ``train.out_dir``. ``--resume`` continues from the latest
checkpoint there (same step, epoch, data position and learning-rate schedule position).
``--stage NAME`` runs a method's extra training stage instead, ``method.stages[NAME](cfg, args)``
with ``args`` a :class:`tfpose.training.loop.RunArgs` (e.g. dekr's ``--stage scorer``).

Bad input ends in one ``error: ...`` line and exit status 2; a diverged run (NaN/inf loss) ends
in one ``error: ...`` line naming the step and the loss term, and exit status 1.
"""

from __future__ import annotations

import json
import logging
import sys

from tfpose import cli

FLAGS = cli.FLAGS


def stages_of(method) -> dict:
    """A method's extra training stages: ``getattr(method, "stages", {})``, name -> callable."""
    return dict(getattr(method, "stages", None) or {})


def run(cfg, resume: bool = False, stage: str = "", strategy=None, **trainer_kwargs):
    """Trains ``cfg`` (or runs its method's ``stage``); returns the stage's or Trainer's result.

    Args:
        cfg: Config.
        resume: bool, continue from the latest checkpoint of ``train.out_dir``.
        stage: str, name of an extra stage of the method ("" = the main training).
        strategy: tf.distribute.Strategy; default from ``train.strategy``.
        **trainer_kwargs: passed to :class:`tfpose.training.loop.Trainer` (method, data
            functions...).
    """
    from tfpose import registry
    from tfpose.training.loop import RunArgs, Trainer
    from tfpose.training.strategy import make_strategy

    method = trainer_kwargs.pop("method", None)
    if method is None:
        if not cfg.method:
            raise cli.ConfigError(f"{cfg.source or 'config'}: 'method' is empty; training needs "
                                  f"one of {sorted(registry.METHODS)}")
        method = registry.METHODS[cfg.method]
    if stage:
        stages = stages_of(method)
        if stage not in stages:
            raise cli.ConfigError(f"--stage {stage}: method '{method.name}' has no such stage "
                                  f"(stages: {sorted(stages) or 'none'})")
    strategy = strategy or make_strategy(cfg.train.strategy)
    if stage:
        return stages[stage](cfg, RunArgs(resume=resume, stage=stage, strategy=strategy))
    return Trainer(cfg, method=method, strategy=strategy, **trainer_kwargs).fit(resume=resume)


def main(argv):
    del argv
    from tfpose.training.loop import TrainingDiverged

    logging.getLogger("tfpose").setLevel(logging.INFO)
    cfg = cli.load_config_from_flags()
    try:
        result = run(cfg, resume=FLAGS.resume, stage=FLAGS.stage)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if result is not None and hasattr(result, "step"):
        print(f"training {result.reason} at step {result.step} (epoch {result.epoch}); "
              f"checkpoint {result.checkpoint or '-'}")
    elif isinstance(result, dict):  # an extra stage's summary, e.g. dekr's scorer
        print(json.dumps(result, default=str))


def define_flags():
    cli.define_config_flags()
    cli.flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in train.out_dir.")
    cli.flags.DEFINE_string("stage", "", "Run this extra training stage of the method "
                            "(e.g. dekr's 'scorer') instead of the main training.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
