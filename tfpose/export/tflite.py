"""TFLite conversion and flatbuffer inspection shared by export, the GPU-delegate check and tests.

Conversion follows DESIGN.md: a SavedModel written by ``keras.export.ExportArchive`` (frozen
weights) converted with ``tf.lite.TFLiteConverter.from_saved_model``.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as tflite_schema

# Builtin ops the TFLite GPU delegate accepts in the network part (DESIGN.md section 3).
GPU_DELEGATE_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "ADD", "MUL", "SUB", "CONCATENATION",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE",
    "TRANSPOSE", "SOFTMAX", "LOGISTIC", "TANH", "RELU", "RELU6", "MEAN", "PAD", "SLICE",
    "STRIDED_SLICE", "GATHER", "MAXIMUM", "MINIMUM", "FLOOR", "CAST", "DEQUANTIZE", "QUANTIZE",
})

_OP_NAMES = {v: k for k, v in vars(tflite_schema.BuiltinOperator).items() if not k.startswith("_")}


def keras_to_tflite(model: keras.Model, input_signature, work_dir: str) -> bytes:
    """Converts a Keras model to a .tflite flatbuffer (fp32, builtin ops).

    Args:
        model: keras.Model called as ``model(x, training=False)``.
        input_signature: list of tf.TensorSpec with static shapes.
        work_dir: str, a directory for the intermediate SavedModel.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda *x: model(*x, training=False),
                         input_signature=list(input_signature))
    saved_model = os.path.join(work_dir, "saved_model")
    archive.write_out(saved_model, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def operators(content: bytes) -> list:
    """The operators of a .tflite flatbuffer in execution order.

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
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            out.append((codes[op.OpcodeIndex()], graph, op))
    return out


def operator_names(content: bytes) -> list:
    """Op names of a .tflite flatbuffer in execution order."""
    return [name for name, _, _ in operators(content)]
