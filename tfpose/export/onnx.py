"""ONNX export: the network and ``codec.decode`` on letterboxed float images, through tf2onnx.

The graph converted is :func:`tfpose.export.saved_model.decode_function` written as a SavedModel
by ``keras.export.ExportArchive`` (DESIGN.md section 1), one signature:

* input ``images`` float32 [B, S, S, 3]: RGB 0..255, letterboxed to the model's square input S
  as the eval pipeline does (longer side fitted to S, aspect kept, centred, zero padding; the
  ``letterbox`` of ``python -m tfpose.predict``). The letterbox stays outside the graph: its
  projective warp has no ONNX operator, and ONNX runtimes resize images better on their own.
* outputs: the network outputs (for dekr ``heatmaps`` [B, S/4, S/4, K], ``center``
  [B, S/4, S/4, 1], ``offsets`` [B, S/4, S/4, 2K]) with the config's flip test / scales applied,
  and the decoded poses in *input* pixels: ``keypoints`` [B, P, K, 3], ``scores`` [B, P],
  ``num_people`` [B] int32. Map keypoints back with the letterbox's inverse affine.

tf2onnx logs the ops it cannot convert and still writes a model; here any conversion error
fails the export, and the written model is always run with onnxruntime on a probe image and
compared with TensorFlow (:func:`verify`) before the file is put in place.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np
import tensorflow as tf

from tfpose.config import ConfigError
from tfpose.export.saved_model import (OUTPUT_KEYS, ExportError, decode_function,
                                       export_metadata, write_archive)
from tfpose.fileio import atomic_write

# DESIGN.md section 1: opset >= 13 (TopK / ReduceSum with tensor inputs, the Loop of pose NMS).
MIN_OPSET = 13
DEFAULT_OPSET = 17  # onnxruntime >= 1.12
INPUT_NAME = "images"
METADATA_KEY = "tfpose"  # the model's metadata_props entry holding export_metadata as JSON
# verify: largest |ONNX - TensorFlow| difference of network outputs and scores (relative to
# their magnitude; float32 ops in another order) and of decoded keypoints (input pixels).
OUTPUT_TOLERANCE = 1e-4
KEYPOINT_TOLERANCE = 0.5


class _ErrorRecords(logging.Handler):
    """Collects the ERROR records tf2onnx logs while converting."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def probe_images(input_size: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """float32 [batch, S, S, 3] smooth random images (0..255) for verification runs."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.0, 255.0, (batch, 8, 8, 3)).astype(np.float32)
    return tf.image.resize(small, [input_size, input_size], "bilinear").numpy()


def check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"ONNX opset {opset!r}: must be an integer >= {MIN_OPSET}")
    return opset


def convert(saved_model_dir: str, opset: int = DEFAULT_OPSET):
    """tf2onnx conversion of a SavedModel's ``serving_default`` signature; returns a ModelProto.

    Raises ExportError naming the first problem when tf2onnx logs an error (an op it could not
    convert) or raises.
    """
    import tf2onnx

    check_opset(opset)
    loaded = tf.saved_model.load(saved_model_dir)
    signature = loaded.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    if sorted(specs) != [INPUT_NAME]:
        raise ExportError(f"{saved_model_dir}: serving_default must take one input "
                          f"{INPUT_NAME!r}, takes {sorted(specs)}")

    @tf.function
    def function(images):
        return signature(**{INPUT_NAME: images})

    input_signature = [tf.TensorSpec(specs[INPUT_NAME].shape, specs[INPUT_NAME].dtype,
                                     name=INPUT_NAME)]
    errors = _ErrorRecords()
    logger = logging.getLogger("tf2onnx")
    logger.addHandler(errors)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=input_signature,
                                                 opset=opset)
    except Exception as e:  # tf2onnx raises many types; report one line
        raise ExportError(f"tf2onnx failed: {type(e).__name__}: {e}") from e
    finally:
        logger.removeHandler(errors)
    if errors.messages:
        # the op tf2onnx lacks says more than the rewriter failures it may cause
        ops = [m for m in errors.messages if "is not supported" in m]
        first, more = (ops or errors.messages)[0], len(errors.messages) - 1
        raise ExportError(f"tf2onnx could not convert the graph: {first.splitlines()[0]}"
                          + (f" (and {more} more errors logged above)" if more else ""))
    return proto


def run_onnx(content: bytes, feeds: dict) -> dict:
    """Runs an ONNX model with onnxruntime (CPU); returns output name -> numpy array."""
    import onnxruntime as ort

    # errors only: onnxruntime warns about an attribute tf2onnx writes on nearest-neighbour
    # Resize nodes (tf_half_pixel_for_nn), once per node, through its process-wide logger
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0


def verify(content: bytes, reference, images: np.ndarray, codec=None) -> dict:
    """Runs the ONNX model on `images` and checks it against TensorFlow.

    * network outputs: within :data:`OUTPUT_TOLERANCE` times their largest magnitude (at least
      1) of the TensorFlow graph `reference`;
    * decoded outputs: against ``codec.decode`` (TensorFlow) of the ONNX model's own network
      outputs when `codec` is given, else against `reference`'s: ``num_people`` equal, keypoint
      (x, y) within :data:`KEYPOINT_TOLERANCE` pixels, keypoint and pose scores within
      :data:`OUTPUT_TOLERANCE` times their magnitude. Decoding the same maps keeps the check
      free of the near-ties (NMS, absorption) that float noise in the maps can flip.

    Args:
        content: bytes, the ONNX model.
        reference: callable images -> dict of tensors, the graph that was converted.
        images: float32 [B, S, S, 3].
        codec: optional, the model's codec.

    Returns:
        the ONNX outputs. Raises ExportError naming the first output that disagrees.
    """
    try:
        got = run_onnx(content, {INPUT_NAME: images})
    except Exception as e:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot run the converted model: "
                          f"{str(e).strip().splitlines()[0][:300]}") from e
    want = {k: v.numpy() for k, v in reference(tf.constant(images)).items()}
    missing = sorted(set(want) - set(got))
    if missing:
        raise ExportError(f"the ONNX model lacks outputs {missing} (has {sorted(got)})")
    network = [k for k in want if k not in OUTPUT_KEYS]
    if codec is not None:
        decoded = codec.decode({k: tf.constant(got[k]) for k in network})
        want.update({k: v.numpy() for k, v in decoded.items()})
    for name, expected in want.items():
        value = got[name]
        if value.shape != expected.shape or value.dtype != expected.dtype:
            raise ExportError(f"ONNX output {name!r} is {value.dtype} {list(value.shape)}, "
                              f"TensorFlow's {expected.dtype} {list(expected.shape)}")
        if np.issubdtype(expected.dtype, np.integer):
            pairs = [(value, expected, 0.0)]
        elif name == "keypoints":
            pairs = [(value[..., :2], expected[..., :2], KEYPOINT_TOLERANCE),
                     (value[..., 2:], expected[..., 2:], _tolerance(expected[..., 2:]))]
        else:
            pairs = [(value, expected, _tolerance(expected))]
        for a, b, tol in pairs:
            if _max_diff(a, b) > tol:
                raise ExportError(f"ONNX output {name!r} differs from TensorFlow on the probe "
                                  f"image: max |diff| {_max_diff(a, b):.3g} > {tol:.3g}")
    return got


def _tolerance(expected: np.ndarray) -> float:
    return OUTPUT_TOLERANCE * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)


def export_onnx(cfg, model, codec, out_path: str, opset: int = DEFAULT_OPSET,
                decode=None, work_dir: str | None = None) -> str:
    """Converts the model + decoding to ONNX (module docstring), verified, written atomically.

    Args:
        cfg: Config (``eval.flip_test`` / ``eval.scales`` are baked in).
        model: keras.Model of the method.
        codec: the config's codec (assets loaded).
        out_path: str, the .onnx file.
        opset: int >= 13, the ONNX opset.
        decode: optional ``decode_function(cfg, model, codec)`` already built (saves a trace).
        work_dir: str, a folder for the SavedModel tf2onnx converts (``<work_dir>/saved_model``,
            which must not exist, kept); None: a temporary folder, removed.

    Returns:
        str, the path written.
    """
    check_opset(opset)
    decode = decode or decode_function(cfg, model, codec)
    size = int(codec.input_size)
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME)]
    with tempfile.TemporaryDirectory(prefix="tfpose-onnx-") as tmp:
        saved = write_archive(os.path.join(work_dir or tmp, "saved_model"),
                              {"serving_default": (decode, spec)})
        proto = convert(saved, opset)
    meta = export_metadata(cfg, codec, format="onnx", opset=int(opset), input={
        "name": INPUT_NAME, "shape": ["B", size, size, 3], "dtype": "float32", "color": "RGB",
        "range": [0, 255], "letterboxed": True})
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    content = proto.SerializeToString()
    verify(content, decode, probe_images(size), codec)
    return atomic_write(out_path, content)


def read_metadata(path: str) -> dict:
    """The ``tfpose`` metadata (:func:`tfpose.export.saved_model.export_metadata`) of an
    exported .onnx file."""
    import onnx

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{path}: no '{METADATA_KEY}' metadata (not written by tfpose)")
    return json.loads(props[METADATA_KEY])
