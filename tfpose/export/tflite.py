"""TFLite conversion, export with metadata, and flatbuffer inspection.

Conversion follows DESIGN.md: a SavedModel written by ``keras.export.ExportArchive`` around the
frozen graph every export shares (tfpose.export.saved_model.decode_function), converted with
``tf.lite.TFLiteConverter.from_saved_model``, builtin ops only; one SavedModel gives every
quantisation mode (:func:`export_tflite_modes`).

Exported graph (:func:`export_tflite`; one signature, ``serving_default``)::

    image uint8 [1, S, S, 3] (RGB 0..255, letterboxed) -> cast float32 -> network (normalises
    inside) -> codec.decode -> keypoints float32 [1, P, K, 3], scores float32 [1, P],
    num_people int32 [1]

The outputs are the subgraph's outputs 0, 1, 2 in that order and their tensors carry those names;
the input tensor is named ``image``. Keypoints are (x, y, score) in pixels of the S x S input
(continuous coordinates, pixel centres at integer + 0.5, tfpose.codecs.base); rows past
``num_people`` are zero. One forward pass: no flip or multi-scale testing (flipping the input would
put REVERSE_V2 before the network, outside the GPU delegate's ops).

Quantisation (``quantize``):

* ``fp32``: float32 weights and arithmetic.
* ``fp16``: float16 weights (half the file), dequantised to float32 when the model is loaded
  (DEQUANTIZE ops, which the GPU delegate takes), float32 arithmetic.
* ``int8``: full-integer post-training quantisation of the network (int8 activations, per-channel
  int8 weights, int32 biases) calibrated on the representative images; the input stays uint8
  (CAST, then QUANTIZE). Two parts stay float32:

  - the decode tail (peak NMS, top-k, sub-pixel fit, absorption, pose NMS): its thresholds, 1e30
    "no candidate" distances and log fits have no useful int8 range; it reads the network
    outputs through one DEQUANTIZE each;
  - the sampling coordinates of adaptive convolutions / spatial transformers (the points, FLOOR,
    cell indices and bilinear weights of tfpose.layers.sampling, :func:`_sampling_ops`): an int8
    point is off by up to half a quantisation step, which sends FLOOR to the wrong cell, and
    quantising them broke the network outputs (mean error ~15 % of their range against ~1 %).
    The sampled features, the weighting and every convolution stay integer.

  The converter's calibrator crashes on control flow (the pose-NMS while loop), so the activation
  ranges it would record (min / max over the representative images) are measured here with the
  interpreter on the float model and written into the flatbuffer for the integer ops' tensors
  only; the converter's MLIR quantizer then quantises those ops (float ops also go on its node
  denylist, as ``tf.lite.experimental.QuantizationDebugger`` uses it).

Metadata: a JSON object in the flatbuffer's ``metadata`` table under the name ``tfpose``
(:func:`read_metadata`): the keypoint spec (names, flip pairs, flip index, skeleton, sigmas), input
size, shape, colour order and normalisation (done inside the model), letterbox, quantisation, and
the outputs' names, order and layout (:func:`tflite_metadata`).
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tflite_convert
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.python.convert_phase import ConverterError
from tensorflow.lite.tools import flatbuffer_utils

from tfpose.config import ConfigError
from tfpose.export.saved_model import (OUTPUT_KEYS, ExportError, decode_function,
                                       export_metadata, write_archive)
from tfpose.fileio import atomic_write
from tfpose.layers.normalize import ImageNormalization

# Builtin ops the TFLite GPU delegate accepts in the network part (DESIGN.md section 3).
GPU_DELEGATE_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "ADD", "MUL", "SUB", "CONCATENATION",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE",
    "TRANSPOSE", "SOFTMAX", "LOGISTIC", "TANH", "RELU", "RELU6", "MEAN", "PAD", "SLICE",
    "STRIDED_SLICE", "GATHER", "MAXIMUM", "MINIMUM", "FLOOR", "CAST", "DEQUANTIZE", "QUANTIZE",
})

# The network's convolutions (DESIGN.md section 3); tfpose.export.check_gpu and the int8 split.
CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"})

QUANTIZE_MODES = ("fp32", "fp16", "int8")
METADATA_NAME = "tfpose"
INPUT_NAME = "image"
OUTPUT_NAMES = OUTPUT_KEYS  # the .tflite's outputs 0, 1, 2
# The network outputs are also SavedModel outputs under this prefix: the int8 quantizer needs them
# to tell the network from the tail, and ``raw_outputs=True`` keeps them in the .tflite (tests).
RAW_PREFIX = "raw_"
# Converter error codes of ops outside the builtin set (converter_error_data.proto).
_OTHER_OPS_ERRORS = ("ERROR_NEEDS_FLEX_OPS", "ERROR_NEEDS_CUSTOM_OPS")

_OP_NAMES = {v: k for k, v in vars(tflite_schema.BuiltinOperator).items() if not k.startswith("_")}


def keras_to_tflite(model: keras.Model, input_signature, work_dir: str) -> bytes:
    """Converts a Keras model to a .tflite flatbuffer (fp32, builtin ops).

    Args:
        model: keras.Model called as ``model(x, training=False)``.
        input_signature: list of tf.TensorSpec with static shapes.
        work_dir: str, a directory for the intermediate SavedModel.
    """
    saved_model = write_archive(
        os.path.join(work_dir, "saved_model"),
        {"serve": (lambda *x: model(*x, training=False), list(input_signature))}, [model])
    return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def operators(content: bytes, subgraph: int | None = None) -> list:
    """The operators of a .tflite flatbuffer in execution order.

    Args:
        content: bytes, the flatbuffer.
        subgraph: int, only this subgraph's operators (0: the main graph); None: all subgraphs,
            one after the other.

    Returns:
        list of (op name, subgraph, operator) with the flatbuffer's subgraph/operator tables, so
        callers can inspect tensor shapes and types.
    """
    model = tflite_schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(_OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    out = []
    for s in range(model.SubgraphsLength()) if subgraph is None else [subgraph]:
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            out.append((codes[op.OpcodeIndex()], graph, op))
    return out


def operator_names(content: bytes) -> list:
    """Op names of a .tflite flatbuffer in execution order."""
    return [name for name, _, _ in operators(content)]


# --- export ---------------------------------------------------------------------------------------


def serving_function(decode):
    """The exported graph's function around a batch-1 ``decode_function`` (tfpose.export.
    saved_model): image uint8 [1, S, S, 3] -> the three decoded outputs and the network outputs
    as ``raw_<name>``."""

    def serve(image):
        outputs = decode(tf.cast(image, tf.float32))
        result = {name: outputs[name] for name in OUTPUT_NAMES}
        result.update({RAW_PREFIX + name: value for name, value in outputs.items()
                       if name not in OUTPUT_NAMES})
        return result

    return serve


def write_serving_saved_model(cfg, model, codec, directory: str) -> str:
    """Writes the SavedModel a .tflite is converted from (module docstring; raw outputs included):
    :func:`tfpose.export.saved_model.decode_function` with one forward pass and batch 1, weights
    frozen. One folder serves every quantisation mode (:func:`convert_saved_model`).

    Args:
        cfg: Config.
        model: keras.Model, float32 RGB 0..255 [B, S, S, 3] -> dict of network outputs.
        codec: the model's codec; its learned decoding parts (Keras layers such as the dekr pose
            scorer) are frozen in too.
        directory: str, the SavedModel folder (must not exist).
    """
    size = int(codec.input_size)
    decode = decode_function(cfg, model, codec, flip_test=False, scales=(1.0,), batch_size=1)
    spec = tf.TensorSpec([1, size, size, 3], tf.uint8, name=INPUT_NAME)
    return write_archive(directory, {"serve": (serving_function(decode), [spec])})


def convert_saved_model(saved_model_dir: str, quantize: str = "fp32", representative_images=None,
                        metadata: dict | None = None, raw_outputs: bool = False) -> bytes:
    """Converts a :func:`write_serving_saved_model` folder to a .tflite flatbuffer.

    Args:
        saved_model_dir: str.
        quantize: str, one of :data:`QUANTIZE_MODES` (module docstring).
        representative_images: iterable of uint8 [S, S, 3] arrays, required for int8.
        metadata: dict stored as the ``tfpose`` metadata entry (JSON), or None for none.
        raw_outputs: bool, keep the network outputs as outputs 3, 4, ... named ``raw_<name>``
            (sorted by name); in int8 models they are int8 with the tensor's scale / zero point.

    Raises:
        ExportError: an unknown mode, missing or malformed representative images, or a graph that
            needs ops outside the TFLite builtin set (named in the message; SELECT_TF_OPS is never
            enabled).
    """
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize = {quantize!r} is not one of {list(QUANTIZE_MODES)}")
    images = _representative_images(representative_images) if quantize == "int8" else None
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    try:
        content = converter.convert()
    except ConverterError as e:
        raise _conversion_error(e) from None
    if quantize == "int8":
        content = _quantize_int8(content, images)
    return _finish(content, metadata, raw_outputs)


def export_tflite(model, codec, cfg, out_path: str, quantize: str = "fp32",
                  representative_images=None, raw_outputs: bool = False,
                  work_dir: str | None = None) -> str:
    """Writes one deployable .tflite (:func:`export_tflite_modes` with one mode).

    Returns:
        str, out_path.
    """
    return export_tflite_modes(model, codec, cfg, {quantize: out_path}, representative_images,
                               raw_outputs, work_dir)[quantize]


def export_tflite_modes(model, codec, cfg, paths: dict, representative_images=None,
                        raw_outputs: bool = False, work_dir: str | None = None) -> dict:
    """Writes deployable .tflite files, one per quantisation mode, from one intermediate
    SavedModel (:func:`write_serving_saved_model`: the network is traced once): graph,
    quantisation and metadata of the module docstring.

    Args:
        model: keras.Model, float32 RGB 0..255 [B, S, S, 3] -> dict of network outputs.
        codec: the config's codec with ``decode`` (assets loaded).
        cfg: tfpose Config (method, keypoint spec, ``data.input_size`` = the codec's S).
        paths: dict quantisation mode ("fp32", "fp16" or "int8") -> the .tflite file, each
            written atomically (tfpose.fileio).
        representative_images: iterable of uint8 [S, S, 3] numpy arrays, letterboxed inputs
            like the deployed ones (a few hundred), required for int8.
        raw_outputs: bool, also output the network outputs (parity tests).
        work_dir: str, a folder for the intermediate SavedModel (``<work_dir>/saved_model``,
            which must not exist, kept for :func:`convert_saved_model`); None: a temporary
            folder, removed.

    Returns:
        dict mode -> path written, in the order of `paths`.

    Raises:
        ConfigError: an unknown mode or an input size other than the codec's.
        ExportError: see :func:`convert_saved_model`; checked before anything is traced.
    """
    if int(cfg.data.input_size) != int(codec.input_size):
        raise ConfigError(f"data.input_size = {cfg.data.input_size} differs from the codec's "
                          f"input size {codec.input_size}")
    if not paths:
        raise ConfigError(f"no quantisation mode given; choose from {list(QUANTIZE_MODES)}")
    for quantize in paths:
        if quantize not in QUANTIZE_MODES:
            raise ConfigError(f"quantize = {quantize!r} is not one of {list(QUANTIZE_MODES)}")
    images = None
    if "int8" in paths:
        images = _representative_images(representative_images, int(codec.input_size))
    written = {}
    with tempfile.TemporaryDirectory(prefix="tfpose_tflite_") as tmp:
        saved = write_serving_saved_model(cfg, model, codec,
                                          os.path.join(work_dir or tmp, "saved_model"))
        for quantize, path in paths.items():
            content = convert_saved_model(saved, quantize, images,
                                          tflite_metadata(model, codec, cfg, quantize),
                                          raw_outputs)
            written[quantize] = atomic_write(path, content)
    return written


def tflite_metadata(model, codec, cfg, quantize: str) -> dict:
    """The ``tfpose`` metadata entry of an exported .tflite (JSON-ready): the SavedModel's
    :func:`tfpose.export.saved_model.export_metadata` plus the .tflite's input, outputs and
    quantisation."""
    size, p, k = int(codec.input_size), int(codec.max_people), int(codec.num_keypoints)
    norm = {"in_model": True}
    found = [layer for layer in _all_layers(model) if isinstance(layer, ImageNormalization)]
    if found:
        norm.update(formula="(x / max_pixel_value - mean) / std", mean=list(found[0].mean),
                    std=list(found[0].std), max_pixel_value=found[0].max_pixel_value)
    return export_metadata(
        cfg, codec, format="tflite", quantization=quantize, flip_test=False, scales=[1.0],
        input={"name": INPUT_NAME, "index": 0, "shape": [1, size, size, 3], "dtype": "uint8",
               "color": "RGB", "range": [0, 255], "normalization": norm},
        outputs=[
            {"name": "keypoints", "index": 0, "shape": [1, p, k, 3], "dtype": "float32",
             "layout": "(x, y, score) in input pixels; rows past num_people are zero"},
            {"name": "scores", "index": 1, "shape": [1, p], "dtype": "float32",
             "layout": "pose scores, decreasing; zero past num_people"},
            {"name": "num_people", "index": 2, "shape": [1], "dtype": "int32",
             "layout": "people found"}])


def _all_layers(layer):
    """The layer and, recursively, the layers of nested models."""
    yield layer
    for sub in getattr(layer, "layers", ()):
        yield from _all_layers(sub)


def read_metadata(source) -> dict:
    """The ``tfpose`` metadata of a .tflite given as a path or as the flatbuffer's bytes.

    Raises:
        ValueError: the flatbuffer holds no ``tfpose`` entry (not written by
            :func:`export_tflite`).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        content, where = bytes(source), "the .tflite content"
    else:
        with open(source, "rb") as f:
            content, where = f.read(), os.fspath(source)
    model = tflite_schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == METADATA_NAME:
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # models over 2 GB keep buffers after the flatbuffer
                data = content[buffer.Offset():buffer.Offset() + buffer.Size()]
            else:
                data = buffer.DataAsNumpy().tobytes()
            return json.loads(data.decode("utf-8"))
    raise ValueError(f"{where}: no '{METADATA_NAME}' metadata entry (not exported by "
                     "tfpose.export.tflite.export_tflite)")


def _representative_images(images, size: int | None = None) -> list:
    """The images as a list, checked: uint8 [S, S, 3], one S (``size`` when given), at least
    one."""
    if images is None:
        raise ExportError("quantize = 'int8' needs representative_images (uint8 [S, S, 3] "
                          "letterboxed inputs)")
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        side = size or (out[0].shape[0] if out else image.shape[0])
        if image.dtype != np.uint8 or image.shape != (side, side, 3):
            raise ExportError(f"representative_images[{i}] must be uint8 [{side}, {side}, 3]; "
                              f"got {image.dtype} {list(image.shape)}")
        out.append(image)
    if not out:
        raise ExportError("representative_images is empty; int8 calibration needs images")
    return out


def _conversion_error(error: ConverterError) -> ExportError:
    """An error naming the ops the converter cannot express with builtin ops."""
    ops = sorted({d.operator.name for d in getattr(error, "errors", [])
                  if d.operator.name and type(d).ErrorCode.Name(d.error_code) in _OTHER_OPS_ERRORS})
    if ops:
        return ExportError(f"TFLite conversion needs ops outside the builtin set: "
                           f"{', '.join(ops)} (SELECT_TF_OPS is not used; express them with "
                           "builtin ops)")
    lines = [line for line in str(error).splitlines() if line.strip()]
    return ExportError(f"TFLite conversion failed: {lines[-1] if lines else type(error).__name__}")


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _signature_outputs(model_t) -> dict:
    """name -> TensorMapT of the single signature's outputs (object API model)."""
    return {_name(t.name): t for t in model_t.signatureDefs[0].outputs}


def upstream_ops(starts, inputs_of, producer: dict, enter=None) -> set:
    """The ops `starts` depend on along data flow, `starts` included.

    Args:
        starts: iterable of op indices.
        inputs_of: callable op index -> its input tensor indices.
        producer: dict tensor index -> index of the op writing it (graph inputs and constants
            have none).
        enter: optional callable op index -> bool; ops it refuses are neither included nor
            walked through.

    Returns:
        set of op indices.
    """
    seen, stack = set(), list(starts)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(j for j in (producer.get(t) for t in inputs_of(i))
                         if j is not None and (enter is None or enter(j)))
    return seen


def _network_ops(graph, raw_tensors) -> set:
    """Indices of the ops the raw network outputs depend on: the network, not the tail."""
    producer = {t: i for i, op in enumerate(graph.operators) for t in op.outputs}
    return upstream_ops([producer[t] for t in raw_tensors if t in producer],
                        lambda i: graph.operators[i].inputs, producer)


def _sampling_ops(model_t, graph, network: set) -> set:
    """The network's sampling-coordinate ops (kept float32 in int8 models).

    Bilinear sampling (tfpose.layers.sampling) turns points into FLOOR-ed cell indices and
    bilinear weights. In int8 a point is off by up to half a quantisation step, which moves FLOOR
    to the wrong cell and the clip masks to 0 / 1 wrongly. The coordinate ops are the ancestors
    of every FLOOR back to the convolutions that regress the points, and every op whose inputs
    all come from those: the index and weight arithmetic, up to the GATHER of the features and
    the weighting MUL, which stay integer.
    """
    codes = [_OP_NAMES[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in model_t.operatorCodes]
    ops = graph.operators
    kind = {i: codes[ops[i].opcodeIndex] for i in network}
    producer = {t: i for i in network for t in ops[i].outputs}
    region = upstream_ops([i for i in network if kind[i] == "FLOOR"], lambda i: ops[i].inputs,
                          producer, lambda j: kind[j] not in CONV_OPS)
    changed = True
    while changed:
        changed = False
        for i in sorted(network - region):
            made = [producer[t] for t in ops[i].inputs if t in producer]
            if made and all(j in region for j in made):
                region.add(i)
                changed = True
    return region


def _quantize_int8(content: bytes, images: list) -> bytes:
    """Integer network, float32 tail (module docstring)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # the "export" extra

    model_t = flatbuffer_utils.convert_bytearray_to_object(content)
    graph = model_t.subgraphs[0]
    raw = [m.tensorIndex for name, m in _signature_outputs(model_t).items()
           if name.startswith(RAW_PREFIX)]
    if not raw:
        raise ExportError(f"int8: the SavedModel has no '{RAW_PREFIX}*' network outputs (write it "
                          "with write_serving_saved_model)")
    network = _network_ops(graph, raw)

    def activation(t):
        if t < 0 or graph.tensors[t].type != tflite_schema.TensorType.FLOAT32:
            return False
        data = model_t.buffers[graph.tensors[t].buffer].data
        return data is None or len(data) == 0

    # ranges only where an integer op reads or writes: without one, the quantizer cannot pull a
    # float op (tail, sampling coordinates) into int8 through its neighbours
    integer = network - _sampling_ops(model_t, graph, network)
    tensors = sorted({t for i in integer for op in [graph.operators[i]]
                      for t in list(op.inputs) + list(op.outputs) if activation(t)})
    # the builtin kernels without XNNPACK, which keeps its intermediates to itself
    interpreter = Interpreter(
        model_content=content, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    if tuple(detail["shape"][1:]) != images[0].shape:
        raise ExportError(f"representative_images are {list(images[0].shape)}; the model takes "
                          f"{[int(d) for d in detail['shape'][1:]]}")
    low, high = np.full(len(tensors), np.inf), np.full(len(tensors), -np.inf)
    for image in images:
        interpreter.set_tensor(detail["index"], image[None])
        interpreter.invoke()
        for j, t in enumerate(tensors):
            value = interpreter.get_tensor(t)
            low[j], high[j] = min(low[j], float(value.min())), max(high[j], float(value.max()))
    del interpreter
    for j, t in enumerate(tensors):
        params = tflite_schema.QuantizationParametersT()
        params.min, params.max = [float(low[j])], [float(high[j])]
        graph.tensors[t].quantization = params
    tail = [_name(g.tensors[t].name) for s, g in enumerate(model_t.subgraphs)
            for i, op in enumerate(g.operators) if s > 0 or i not in integer for t in op.outputs]
    calibrated = flatbuffer_utils.convert_object_to_bytearray(model_t)
    return tflite_convert.mlir_quantize(calibrated, fully_quantize=True, denylisted_nodes=tail)


def _finish(content: bytes, metadata, raw_outputs: bool) -> bytes:
    """Output order and tensor names of the module docstring, raw outputs kept or dropped, the
    metadata entry written."""
    model_t = flatbuffer_utils.convert_bytearray_to_object(content)
    graph, signature = model_t.subgraphs[0], model_t.signatureDefs[0]
    outputs = _signature_outputs(model_t)
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing or len(signature.inputs) != 1:
        raise ExportError(f"the converted model lacks outputs {missing} or has "
                          f"{len(signature.inputs)} inputs (write it with "
                          "write_serving_saved_model)")
    keep = list(OUTPUT_NAMES)
    if raw_outputs:
        keep += sorted(name for name in outputs if name.startswith(RAW_PREFIX))
    signature.outputs = [outputs[name] for name in keep]
    graph.outputs = [outputs[name].tensorIndex for name in keep]
    for name in keep:
        graph.tensors[outputs[name].tensorIndex].name = name
    graph.tensors[signature.inputs[0].tensorIndex].name = INPUT_NAME
    if metadata is not None:
        buffer = tflite_schema.BufferT()
        buffer.data = np.frombuffer(json.dumps(metadata).encode("utf-8"), np.uint8)
        model_t.buffers.append(buffer)
        entry = tflite_schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model_t.buffers) - 1
        model_t.metadata = [m for m in (model_t.metadata or [])
                            if _name(m.name) != METADATA_NAME] + [entry]
    return flatbuffer_utils.convert_object_to_bytearray(model_t)
