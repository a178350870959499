"""Benchmarks that print figures (never asserted in tests).

    python -m tfpose.benchmark pipeline --config C [--split train] [--batches 30] [--json]
    python -m tfpose.benchmark model --config C [--runs 20] [--warmup 3] [--json]
    python -m tfpose.benchmark tflite --model M.tflite [--threads 2] [--runs 20] [--warmup 3]
        [--saved_model DIR] [--json]
    python -m tfpose.benchmark parity --config C --checkpoint P [--images 8] [--json]

``pipeline``: images/s of the training input pipeline (decode + augment + encode + batch) on the
config's split, after a warm-up.

``model``: size and speed of the config's method at batch 1 and the config's input size:
parameters; GFLOPs = 2 x multiply-adds of the convolutions and matrix products (Conv2D,
depthwise, transposed conv, MatMul, BatchMatMul, Einsum), counted by the TF v1 profiler on the
graph of a batch-1 forward (element-wise ops such as BatchNorm, ReLU and additions are not
counted; papers on HRNet-based pose estimation count multiply-adds of convolutions, so their
"GFLOPs" is ``gmacs`` here); median and min milliseconds of the forward pass (tf.function model
call, outputs fetched to the host) and of ``codec.decode`` (tf.function) on the model's outputs
for the first image of the val split (a random image if the config has none), over ``--runs``
runs after ``--warmup`` runs. Untrained weights: decode time depends on how many candidates the
outputs hold, so it is only indicative before training.

``tflite``: batch-1 latency of an exported .tflite (tfpose.export.tflite) on the CPU with the
LiteRT interpreter (``ai_edge_litert``) and its default XNNPACK delegate on ``--threads``
threads: median and min milliseconds of set input + invoke + read outputs, over ``--runs`` runs
after ``--warmup`` runs, on a random image (seeded; the decode time depends on how many
candidates the image gives, so time a trained model), plus the file size and the metadata's
quantisation. With ``--saved_model DIR`` the same image goes through that SavedModel's
``serving_default`` signature (TensorFlow limited to ``--threads`` intra-op threads), for a
comparison on the same machine.

``parity``: how far the exported formats' network outputs are from the Keras model's, for a
trained checkpoint: on ``--images`` letterboxed val images (train images when the config has no
val split), the largest absolute difference per network output between the Keras model
(``tfpose.inference.network_outputs``, eager) and the frozen network + decode graph that every
SavedModel signature runs (saved and loaded), the ONNX model in onnxruntime (both with the
config's flip test and scales), and the .tflite fp32 / fp16 files (one forward pass at batch 1,
as deployed; compared with the Keras model's single pass). ``magnitudes`` gives each output's
largest absolute value for scale. ONNX is skipped when tf2onnx or onnxruntime is not installed.

The last line is one JSON object when --json is given.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time

import numpy as np

from tfpose import cli

FLAGS = cli.FLAGS
log = logging.getLogger(__name__)

# Op types whose profiler FLOP count is 2 x multiply-adds (the TF v1 profiler's registered
# statistics, tensorflow/python/ops/nn_ops.py and math_ops.py).
MAC_OP_TYPES = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul",
                "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")


def benchmark_pipeline(cfg, split: str = "train", batches: int = 30, warmup: int = 5) -> dict:
    """Times `batches` batches of the training pipeline after `warmup` batches."""
    from tfpose.data.pipeline import build_dataset
    from tfpose.registry import build_codec

    codec = build_codec(cfg)
    iterator = iter(build_dataset(cfg, split, codec, training=True))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images_batch, _targets = next(iterator)
        images += int(images_batch.shape[0])
    seconds = time.perf_counter() - start
    return {"benchmark": "pipeline", "codec": codec.name, "input_size": cfg.data.input_size,
            "batch_size": cfg.data.batch_size, "images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 2)}


def graph_flops(concrete_function) -> int:
    """FLOPs (2 x multiply-adds) of the MAC ops in a concrete function's graph (TF v1 profiler).

    Every shape must be static (trace with a fully defined input signature). Ops inside nested
    function calls are not seen; Keras 3 layers are traced inline.
    """
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    options["account_type_regexes"] = [f"^{t}$" for t in MAC_OP_TYPES]
    graph = concrete_function.graph
    nested = sorted({op.type for op in graph.get_operations()
                     if op.type in ("PartitionedCall", "StatefulPartitionedCall", "While", "If",
                                    "StatelessWhile", "StatelessIf")})
    if nested:
        log.warning("graph_flops: ops inside %s are not counted", ", ".join(nested))
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def _milliseconds(call, runs: int, warmup: int) -> list:
    """Milliseconds of `runs` calls of call() after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _timed(fn, arg, runs: int, warmup: int) -> list:
    """Milliseconds of `runs` calls of fn(arg) (results fetched to the host) after `warmup`."""
    import tensorflow as tf

    return _milliseconds(lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(arg)), runs,
                         warmup)


def _decode_image(cfg, codec, size: int):
    """(image [1, S, S, 3] float32, description): the first val image, or a random one."""
    import tensorflow as tf

    from tfpose.checkpoints import CheckpointError
    from tfpose.data.pipeline import build_dataset
    from tfpose.evaluation import EvaluationError

    if cfg.data.val.annotations or cfg.data.val.tfrecords:
        try:
            batch = next(iter(build_dataset(cfg, "val", codec, training=False).take(1)))
            return (tf.cast(batch["image"][:1], tf.float32),
                    f"val image {int(batch['image_id'][0])}")
        except cli.USER_ERRORS + (EvaluationError, CheckpointError, StopIteration) as e:
            log.warning("benchmark model: no val image (%s); decoding a random image", e)
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(0, 255, [1, size, size, 3]), tf.float32), "random image"


def benchmark_model(cfg, runs: int = 20, warmup: int = 3) -> dict:
    """Parameters, GFLOPs and batch-1 forward / decode milliseconds of the config's method."""
    import tensorflow as tf

    from tfpose.registry import METHODS, build_codec

    if not cfg.method:
        raise cli.ConfigError(f"{cfg.source}: the model benchmark needs a 'method'")
    if cfg.method not in METHODS:
        raise cli.ConfigError(f"{cfg.source}: unknown method {cfg.method!r} (known: "
                              f"{sorted(METHODS)})")
    if runs < 1 or warmup < 0:
        raise cli.ConfigError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    size = cfg.data.input_size
    codec = build_codec(cfg)
    model = METHODS[cfg.method].build_model(cfg)
    spec = tf.TensorSpec([1, size, size, 3], tf.float32)
    forward = tf.function(lambda images: model(images, training=False))
    flops = graph_flops(forward.get_concrete_function(spec))
    image, source = _decode_image(cfg, codec, size)
    forward_ms = _timed(forward, image, runs, warmup)
    decode = tf.function(codec.decode)
    decode_ms = _timed(decode, forward(image), runs, warmup)
    devices = tf.config.list_logical_devices("GPU")
    return {
        "benchmark": "model", "method": cfg.method, "codec": codec.name, "input_size": size,
        "batch_size": 1, "params": int(model.count_params()),
        "params_m": round(model.count_params() / 1e6, 3),
        "gflops": round(flops / 1e9, 3), "gmacs": round(flops / 2e9, 3),
        "forward_ms_median": round(statistics.median(forward_ms), 2),
        "forward_ms_min": round(min(forward_ms), 2),
        "decode_ms_median": round(statistics.median(decode_ms), 2),
        "decode_ms_min": round(min(decode_ms), 2),
        "runs": runs, "warmup": warmup, "decode_input": source,
        "device": devices[0].name if devices else "CPU",
    }


def benchmark_tflite(model: str, threads: int = 2, runs: int = 20, warmup: int = 3,
                     saved_model: str = "") -> dict:
    """Batch-1 CPU milliseconds of a .tflite (XNNPACK, `threads` threads) and, optionally, of a
    SavedModel's ``serving_default`` signature on the same image (module docstring)."""
    from ai_edge_litert.interpreter import Interpreter

    from tfpose.export.tflite import read_metadata

    if threads < 1 or runs < 1 or warmup < 0:
        raise cli.ConfigError(f"--threads and --runs must be >= 1 and --warmup >= 0 (got "
                              f"{threads}, {runs}, {warmup})")
    if not model or not os.path.isfile(model):
        raise FileNotFoundError(f"--model {model!r}: no such .tflite file")
    if saved_model and not os.path.isdir(saved_model):
        raise FileNotFoundError(f"--saved_model {saved_model!r}: no such SavedModel folder")
    try:
        interpreter = Interpreter(model_path=model, num_threads=threads)
    except ValueError as e:
        raise cli.ConfigError(f"--model {model}: not a loadable .tflite ({e})") from None
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    outputs = [d["index"] for d in interpreter.get_output_details()]
    dtype = np.dtype(detail["dtype"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, detail["shape"]).astype(dtype)

    def invoke():
        interpreter.set_tensor(detail["index"], image)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]

    times = _milliseconds(invoke, runs, warmup)
    try:
        quantization = read_metadata(model).get("quantization", "unknown")
    except ValueError:
        quantization = "unknown (no tfpose metadata)"
    result = {
        "benchmark": "tflite", "model": model,
        "file_mb": round(os.path.getsize(model) / 2**20, 3), "quantization": quantization,
        "input": f"{dtype.name} {[int(d) for d in detail['shape']]}", "threads": threads,
        "delegate": "XNNPACK (LiteRT default)",
        "ms_median": round(statistics.median(times), 2), "ms_min": round(min(times), 2),
        "runs": runs, "warmup": warmup, "input_image": "random (seed 0)",
    }
    if saved_model:
        result.update(_benchmark_saved_model(saved_model, image, threads, runs, warmup))
    return result


def _benchmark_saved_model(path: str, image, threads: int, runs: int, warmup: int) -> dict:
    """Median / min milliseconds of ``serving_default`` on `image` (cast to its input dtype)."""
    import tensorflow as tf

    try:  # only possible before TensorFlow runs its first op
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("benchmark tflite: TensorFlow already started; its thread count is unchanged")
    try:
        signature = tf.saved_model.load(path).signatures["serving_default"]
    except (KeyError, OSError, ValueError) as e:
        raise cli.ConfigError(f"--saved_model {path}: no loadable serving_default signature "
                              f"({type(e).__name__})") from None
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise cli.ConfigError(f"--saved_model {path}: serving_default takes {sorted(inputs)}; "
                              "the benchmark feeds one image input")
    (name, spec), = inputs.items()
    tensor = tf.constant(image, dtype=spec.dtype)
    times = _timed(lambda x: signature(**{name: x}), tensor, runs, warmup)
    return {"saved_model": path, "saved_model_ms_median": round(statistics.median(times), 2),
            "saved_model_ms_min": round(min(times), 2),
            "saved_model_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def _largest_differences(got: dict, want: dict) -> dict:
    return {k: float(f"{np.abs(got[k].astype(np.float64) - want[k]).max():.3g}") for k in want}


def _tflite_raw_outputs(content: bytes, images) -> dict:
    """Network outputs (``raw_<name>``) of a .tflite exported with raw outputs, image by image."""
    from ai_edge_litert.interpreter import Interpreter

    from tfpose.export.tflite import RAW_PREFIX

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    details = [d for d in interpreter.get_output_details() if d["name"].startswith(RAW_PREFIX)]
    outputs = {d["name"][len(RAW_PREFIX):]: [] for d in details}
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        for d in details:
            outputs[d["name"][len(RAW_PREFIX):]].append(interpreter.get_tensor(d["index"]))
    return {k: np.concatenate(v) for k, v in outputs.items()}


def benchmark_parity(cfg, checkpoint: str, images: int = 8) -> dict:
    """Largest differences of the exported formats' network outputs from Keras (module
    docstring)."""
    import importlib.util
    import tempfile

    import tensorflow as tf

    from tfpose.export import tflite
    from tfpose.export.__main__ import representative_images
    from tfpose.export.saved_model import OUTPUT_KEYS, decode_function, write_archive
    from tfpose.inference import network_outputs, restore_for_inference

    if images < 1:
        raise cli.ConfigError(f"--images must be >= 1 (got {images})")
    if not checkpoint:
        raise cli.ConfigError("benchmark parity needs --checkpoint (a trained run)")
    model, codec = restore_for_inference(cfg, checkpoint)
    split = "val" if (cfg.data.val.annotations or cfg.data.val.tfrecords) else "train"
    batch = np.stack(representative_images(cfg, images, split))
    x = tf.constant(batch, tf.float32)
    flip, scales = bool(cfg.eval.flip_test), tuple(cfg.eval.scales)
    decode = decode_function(cfg, model, codec)
    spec = [tf.TensorSpec([None] + list(batch.shape[1:]), tf.float32)]
    with tempfile.TemporaryDirectory(prefix="tfpose-parity-") as tmp:
        saved = tf.saved_model.load(write_archive(os.path.join(tmp, "saved_model"),
                                                  {"serving_default": (decode, spec)}))
        served = saved.signatures["serving_default"](x)
        names = [k for k in served if k not in OUTPUT_KEYS]  # the network outputs decode reads

        def numpy(outputs):
            return {k: outputs[k].numpy() for k in names}

        keras_test = numpy(network_outputs(model, codec, x, flip, scales))
        keras_one = numpy(network_outputs(model, codec, x))
        result = {"benchmark": "parity", "checkpoint": checkpoint, "images": len(batch),
                  "split": split, "flip_test": flip, "scales": list(scales),
                  "magnitudes": {k: float(f"{np.abs(v).max():.3g}")
                                 for k, v in keras_test.items()},
                  "saved_model": _largest_differences(numpy(served), keras_test)}
        if all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime")):
            from tfpose.export.onnx import export_onnx, run_onnx

            path = export_onnx(cfg, model, codec, os.path.join(tmp, "model.onnx"), decode=decode)
            with open(path, "rb") as f:
                result["onnx"] = _largest_differences(run_onnx(f.read(), {"images": batch.astype(
                    np.float32)}), keras_test)
        else:
            result["onnx"] = "skipped: tf2onnx / onnxruntime not installed"
        modes = ("fp32", "fp16")
        paths = tflite.export_tflite_modes(model, codec, cfg,
                                           {m: os.path.join(tmp, f"{m}.tflite") for m in modes},
                                           raw_outputs=True)
        for mode, path in paths.items():
            with open(path, "rb") as f:
                result[f"tflite_{mode}"] = _largest_differences(
                    _tflite_raw_outputs(f.read(), batch), keras_one)
    return result


BENCHMARKS = {"pipeline": benchmark_pipeline, "model": benchmark_model,
              "tflite": benchmark_tflite, "parity": benchmark_parity}


def _flag_args(name: str) -> dict:
    if name == "pipeline":
        return {"split": FLAGS.split, "batches": FLAGS.batches}
    if name == "tflite":
        return {"model": FLAGS.model, "threads": FLAGS.threads, "runs": FLAGS.runs,
                "warmup": FLAGS.warmup, "saved_model": FLAGS.saved_model}
    if name == "parity":
        return {"checkpoint": FLAGS.checkpoint, "images": FLAGS.images}
    return {"runs": FLAGS.runs, "warmup": FLAGS.warmup}


def main(argv):
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        raise cli.ConfigError(f"usage: python -m tfpose.benchmark {{{'|'.join(BENCHMARKS)}}} "
                              "(--config C | --model M.tflite) [--json]")
    if argv[1] == "tflite":
        result = benchmark_tflite(**_flag_args("tflite"))
    else:
        if not FLAGS.config:
            raise cli.ConfigError(f"benchmark {argv[1]} needs --config FILE")
        cfg = cli.load_config_from_flags()
        result = BENCHMARKS[argv[1]](cfg, **_flag_args(argv[1]))
    if FLAGS.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")


if __name__ == "__main__":
    cli.define_config_flags(required=False)
    cli.flags.DEFINE_string("split", "train", "Dataset split to read (train or val).")
    cli.flags.DEFINE_integer("batches", 30, "Batches to time after the warm-up.")
    cli.flags.DEFINE_integer("runs", 20, "model, tflite: timed runs after the warm-up.")
    cli.flags.DEFINE_integer("warmup", 3, "model, tflite: untimed runs first (tracing, "
                             "autotuning).")
    cli.flags.DEFINE_string("model", "", "tflite: the .tflite file to time.")
    cli.flags.DEFINE_integer("threads", 2, "tflite: interpreter (and SavedModel) CPU threads.")
    cli.flags.DEFINE_string("saved_model", "", "tflite: also time this SavedModel's "
                            "serving_default signature on the same image.")
    cli.flags.DEFINE_string("checkpoint", "", "parity: the trained run or checkpoint to export.")
    cli.flags.DEFINE_integer("images", 8, "parity: val images compared.")
    cli.flags.DEFINE_bool("json", False, "Print the result as one JSON line.")
    cli.run(main)
