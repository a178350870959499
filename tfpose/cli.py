"""Shared command-line plumbing: --config / --set flags and one-line errors for bad input."""

from __future__ import annotations

import functools
import sys

from absl import app, flags

from tfpose.config import ConfigError, load_config
from tfpose.data.records import DatasetError
from tfpose.keypoints import SpecError

FLAGS = flags.FLAGS

# Errors caused by the user's input: printed as one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, DatasetError, SpecError, FileNotFoundError)


def define_config_flags(required: bool = True):
    flags.DEFINE_string("config", None, "YAML config file (see configs/).")
    flags.DEFINE_multi_string("set", [], "Config override key=value, e.g. --set data.batch_size=4 "
                              "(repeatable).")
    if required:
        flags.mark_flag_as_required("config")


def load_config_from_flags():
    return load_config(FLAGS.config, FLAGS.set)


def user_errors_as_lines(main):
    """Wraps an absl main so that bad input ends in one `error: ...` line and exit status 2."""

    @functools.wraps(main)
    def wrapped(argv):
        from tfpose.evaluation import EvaluationError
        from tfpose.checkpoints import CheckpointError

        try:
            return main(argv)
        except USER_ERRORS + (EvaluationError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def run(main):
    app.run(user_errors_as_lines(main))
