"""Exports a trained model for deployment: SavedModel (TF Serving), TFLite and ONNX.

    python -m tfpose.export --config C --checkpoint P [--out DIR] \\
        [--formats saved_model,tflite,onnx] [--quantize fp32,fp16,int8] \\
        [--model-name NAME] [--version N]

The checkpoint is restored as ``evaluate`` and ``predict`` restore it (model weights and the
codec's learned decoding parts: tfpose.inference.restore_for_inference, which reads checkpoints
through tfpose.checkpoints; no tfpose.training module is imported). Every format decodes with
``codec.decode`` in one frozen graph (tfpose.export.saved_model.decode_function), traced once for
the SavedModel and ONNX and once for all TFLite modes. Written under ``--out`` (default
``<train.out_dir>/export``):

* ``saved_model``: ``DIR/<name>/<version>/`` in the TF Serving layout, signatures
  ``serving_default`` (uint8 image, any size) and ``image_bytes`` (encoded files), poses in the
  image's own pixels (tfpose.export.saved_model). ``--version`` defaults to one more than the
  newest version there; an existing version is never overwritten.
* ``tflite``: ``DIR/<name>_<quantize>.tflite`` for each ``--quantize`` mode, all converted from
  one intermediate SavedModel (tfpose.export.tflite.export_tflite_modes); ``int8`` is
  calibrated on :data:`REPRESENTATIVE_IMAGES` letterboxed images drawn (seeded by ``seed``) from
  the config's training split.
* ``onnx``: ``DIR/<name>.onnx``, letterboxed float input, network outputs and poses in input
  pixels, verified with onnxruntime (tfpose.export.onnx).

``<name>`` is ``--model-name`` (default: the config file's name without extension). Each artifact
is written atomically; one line per artifact is printed. Bad input (unknown format, a missing
checkpoint, an existing version) ends in one ``error: ...`` line with exit status 2, a model a
format cannot hold (an op the converter lacks, an ONNX model that disagrees with TensorFlow) in
one ``error: ...`` line with status 1.
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np

from tfpose import cli
from tfpose.export.saved_model import ExportError
from tfpose.export.tflite import QUANTIZE_MODES

FLAGS = cli.FLAGS

FORMATS = ("saved_model", "tflite", "onnx")
# Images the int8 TFLite calibration sees (the converter's usual few hundred at most; 100 keep
# the calibration pass short).
REPRESENTATIVE_IMAGES = 100


def _choices(values, allowed, flag: str) -> list:
    values = [v.strip() for v in values if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise cli.ConfigError(f"--{flag} {','.join(values)!r}: choose from {','.join(allowed)}")
    return list(dict.fromkeys(values))


def default_model_name(cfg) -> str:
    """The config file's name without extension (``quickstart`` for configs/quickstart.yaml)."""
    stem = os.path.splitext(os.path.basename(cfg.source or ""))[0]
    return stem or cfg.method or "model"


def representative_images(cfg, count: int = REPRESENTATIVE_IMAGES, split: str = "train") -> list:
    """Up to `count` uint8 [S, S, 3] images of the split, letterboxed as the eval pipeline does
    (tfpose.data.pipeline.build_dataset without augmentation).

    Annotated splits: `count` images drawn without replacement, seeded by ``cfg.seed``; TFRecord
    splits: the first `count`.
    """
    from tfpose.data.pipeline import build_dataset
    from tfpose.data.readers import read_split

    cfg = copy.deepcopy(cfg)
    cfg.data.cache = False  # a few images of the split only
    cfg.data.deterministic = True  # the same images in the same order on every call
    records = None
    if getattr(cfg.data, split).annotations:
        records = read_split(getattr(cfg.data, split), cfg.spec)
        if len(records) > count:
            pick = np.random.default_rng(cfg.seed).choice(len(records), count, replace=False)
            records = [records[i] for i in sorted(pick)]
    images = []
    for batch in build_dataset(cfg, split, None, training=False, records=records):
        images.extend(np.clip(np.rint(batch["image"].numpy()), 0, 255).astype(np.uint8))
        if len(images) >= count:
            break
    return images[:count]


def export_restored(cfg, model, codec, out_dir: str, formats=("saved_model",),
                    quantize=("fp32",), model_name: str | None = None, version=None,
                    echo=print) -> dict:
    """Writes the requested formats of a restored (model, codec); returns format -> path(s).

    Returns:
        {"saved_model": version folder, "tflite": {mode: path}, "onnx": path} for the formats
        asked for.
    """
    from tfpose.export import saved_model

    formats = _choices(formats, FORMATS, "formats")
    quantize = _choices(quantize, QUANTIZE_MODES, "quantize")
    name = saved_model.check_name(model_name or default_model_name(cfg))
    written = {}
    decode = None
    if "saved_model" in formats or "onnx" in formats:
        decode = saved_model.decode_function(cfg, model, codec)  # one trace for both
    if "saved_model" in formats:
        written["saved_model"] = saved_model.export_saved_model(
            cfg, model, codec, out_dir, name, version, decode=decode)
        echo(f"saved_model: {written['saved_model']}")
    if "tflite" in formats:
        from tfpose.export import tflite

        images = representative_images(cfg) if "int8" in quantize else None
        paths = {mode: os.path.join(out_dir, f"{name}_{mode}.tflite") for mode in quantize}
        written["tflite"] = tflite.export_tflite_modes(model, codec, cfg, paths, images)
        for mode, path in written["tflite"].items():
            echo(f"tflite ({mode}): {path}")
    if "onnx" in formats:
        from tfpose.export.onnx import export_onnx

        written["onnx"] = export_onnx(cfg, model, codec, os.path.join(out_dir, f"{name}.onnx"),
                                      decode=decode)
        echo(f"onnx: {written['onnx']}")
    return written


def export_model(cfg, checkpoint: str, out_dir: str, formats=("saved_model",),
                 quantize=("fp32",), model_name: str | None = None, version=None,
                 echo=print) -> dict:
    """Restores `checkpoint` (tfpose.inference.restore_for_inference) and exports it
    (:func:`export_restored`)."""
    from tfpose.export import saved_model
    from tfpose.inference import restore_for_inference

    # cheap checks before the model is built
    formats = _choices(formats, FORMATS, "formats")
    _choices(quantize, QUANTIZE_MODES, "quantize")
    name = saved_model.check_name(model_name or default_model_name(cfg))
    if "saved_model" in formats:
        saved_model.version_dir(out_dir, name, version)
    model, codec = restore_for_inference(cfg, checkpoint)
    return export_restored(cfg, model, codec, out_dir, formats, quantize, model_name, version,
                           echo)


def main(argv):
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments {argv[1:]} (flags need --)")
    cfg = cli.load_config_from_flags()
    if not FLAGS.checkpoint:
        raise cli.ConfigError("give --checkpoint PATH (a trained run or checkpoint)")
    out_dir = FLAGS.out or os.path.join(cfg.train.out_dir, "export")
    try:
        export_model(cfg, FLAGS.checkpoint, out_dir, FLAGS.formats, FLAGS.quantize,
                     FLAGS.model_name or None, FLAGS.version)
    except ExportError as e:  # a graph a format cannot hold: one line, status 1
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.define_config_flags()
    cli.flags.DEFINE_string("checkpoint", "", "Checkpoint of a trained model (run directory, "
                            "checkpoint directory or prefix).")
    cli.flags.DEFINE_string("out", "", "Export folder (default <train.out_dir>/export).")
    cli.flags.DEFINE_list("formats", ["saved_model"], f"Comma-separated formats: "
                          f"{','.join(FORMATS)}.")
    cli.flags.DEFINE_list("quantize", ["fp32"], f"TFLite quantisation modes, comma-separated: "
                          f"{','.join(QUANTIZE_MODES)}.")
    cli.flags.DEFINE_string("model_name", "", "Model name: the TF Serving model and the file "
                            "names (default: the config file's name).")
    cli.flags.DEFINE_alias("model-name", "model_name")
    cli.flags.DEFINE_integer("version", None, "SavedModel version folder, >= 1 (default: one "
                             "more than the newest there).", lower_bound=1)
    cli.run(main)
