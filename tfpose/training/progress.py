"""Console progress and TensorBoard summaries of the training loop (written by the chief only).

On a TTY the progress is one line refreshed in place: epoch, step, a bar, every loss term, the
learning rate, images/s and the ETA of the run. Elsewhere (log files, CI) the same fields are
printed as plain lines every ``train.log_every`` steps.
"""

from __future__ import annotations

import shutil
import sys
import time

import numpy as np
import tensorflow as tf


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Progress line / log lines.

    Args:
        total_steps: int, steps of the whole run (for the ETA).
        steps_per_epoch: int.
        epochs: int.
        log_every: int, steps between plain lines when the stream is not a TTY.
        stream: text stream, default stdout.
        enabled: bool, False on non-chief workers (prints nothing).
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, epochs: int, log_every: int,
                 stream=None, enabled: bool = True):
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.log_every = int(log_every)
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start_step = None
        self._start_time = None
        self._line_open = False

    def start(self, step: int):
        """Marks the first timed step (after the first, traced, step)."""
        self._start_step, self._start_time = int(step), time.monotonic()

    def rates(self, step: int, images_per_step: int) -> tuple[float, float]:
        """(images/s, seconds left) from the steps timed since :meth:`start`."""
        if self._start_time is None or step <= self._start_step:
            return 0.0, float("nan")
        elapsed = time.monotonic() - self._start_time
        per_step = elapsed / (step - self._start_step)
        return images_per_step / per_step, per_step * (self.total_steps - step)

    def line(self, step: int, terms: dict, lr: float, images_per_step: int) -> str:
        images_s, eta = self.rates(step, images_per_step)
        epoch = max(step - 1, 0) // max(self.steps_per_epoch, 1) + 1  # epoch of this step
        losses = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
        eta_text = format_duration(eta) if np.isfinite(eta) else "-"
        return (f"epoch {epoch}/{self.epochs} step {step}/{self.total_steps} {{bar}}{losses} | "
                f"lr {lr:.3g} | {images_s:.1f} img/s | ETA {eta_text}")

    def update(self, step: int, terms: dict, lr: float, images_per_step: int):
        """Shows the state after ``step`` (TTY: every call; else every ``log_every`` steps)."""
        if not self.enabled:
            return
        text = self.line(step, terms, lr, images_per_step)
        if self.tty:
            width = shutil.get_terminal_size().columns
            room = width - len(text.format(bar="")) - 3
            bar = ""
            if room > 0:
                done = int(room * step / max(self.total_steps, 1))
                bar = "[" + "#" * done + "." * (room - done) + "] "
            self.stream.write("\r" + text.format(bar=bar)[:width - 1].ljust(width - 1))
            self._line_open = True
        elif step % self.log_every == 0 or step == self.total_steps:
            self.stream.write(text.format(bar="") + "\n")
        self.stream.flush()

    def message(self, text: str):
        """A line of its own (evaluation results, checkpoints, warnings)."""
        if not self.enabled:
            return
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self._line_open:
            self.stream.write("\n")
            self.stream.flush()
            self._line_open = False


def _metadata(plugin: str):
    """SummaryMetadata of a TensorBoard plugin (``scalars``, ``images``)."""
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    return metadata


class Summaries:
    """TensorBoard writers under ``<out_dir>/logs/{train,eval}``; no-ops when disabled.

    Events are written with ``tf.summary.write`` and the scalars/images plugin metadata that
    TensorBoard reads, so training does not need the ``tensorboard`` package (viewing does).

    Args:
        log_dir: str.
        enabled: bool, False on non-chief workers.
    """

    def __init__(self, log_dir: str, enabled: bool = True):
        if enabled:
            self.train = tf.summary.create_file_writer(f"{log_dir}/train")
            self.eval = tf.summary.create_file_writer(f"{log_dir}/eval")
        else:
            self.train = self.eval = tf.summary.create_noop_writer()

    def scalars(self, writer, step: int, values: dict, prefix: str = ""):
        with writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.write(f"{prefix}{name}", tf.constant(float(value), tf.float32),
                                 metadata=_metadata("scalars"))

    def image(self, step: int, name: str, image: np.ndarray):
        """One uint8 RGB image [H, W, 3] in the eval writer."""
        height, width = image.shape[:2]
        png = tf.io.encode_png(np.asarray(image, np.uint8))
        tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height)), png])
        with self.eval.as_default(step=int(step)):
            tf.summary.write(name, tensor, metadata=_metadata("images"))

    def flush(self):
        self.train.flush()
        self.eval.flush()
