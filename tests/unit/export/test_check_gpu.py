"""tfpose.export.check_gpu: the network-before-decoding rule and the runtime partitions on hand-made
op graphs, a converted model with GATHER_ND between two convolutions, a deployed export with a
top-k decoding tail (also timed by ``tfpose.benchmark tflite``), and the command line. The
exported dekr models are checked in test_tflite_export, the full quickstart network in the
`large` test here."""

import json
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_cases import QUICKSTART, REPO, run_tflite

from tfpose.benchmark import benchmark_tflite
from tfpose.codecs.base import Codec
from tfpose.config import load_config
from tfpose.export import tflite
from tfpose.export.check_gpu import check_gpu, check_ops, partitions, report
from tfpose.layers.normalize import ImageNormalization

pytest.importorskip("ai_edge_litert.interpreter")

SIZE = 32


# --- the rule on hand-made graphs: (op name, input tensors, output tensors) --------------------


def test_decoding_listed_between_convolutions_passes():
    """The converter may list a tail op (TOPK_V2) before a later convolution that does not
    depend on it: data flow decides, and the delegate partitions the same way."""
    ops = [("CONV_2D", (0, 10), (1,)), ("TOPK_V2", (1, 11), (2, 3)),
           ("CONV_2D", (1, 12), (4,)), ("RESHAPE", (2,), (5,)), ("ADD", (4, 5), (6,))]
    result = check_ops(ops)
    assert result.passed and result.offending is None
    assert (result.num_ops, result.network_ops, result.last_conv) == (5, 2, 2)
    assert partitions(ops) == [(True, [0, 2]), (False, [1]), (True, [3, 4])]
    assert [(p["gpu"], p["ops"], p["first"], p["last"]) for p in result.partitions] == [
        (True, 2, 0, 2), (False, 1, 1, 1), (True, 2, 3, 4)]
    assert "PASS" in result.summary()


def test_disallowed_op_feeding_a_convolution_fails():
    ops = [("CONV_2D", (0,), (1,)), ("RESHAPE", (1,), (2,)), ("GATHER_ND", (2, 20), (3,)),
           ("ADD", (3, 1), (4,)), ("DEPTHWISE_CONV_2D", (4,), (5,)), ("TOPK_V2", (5,), (6, 7))]
    result = check_ops(ops)
    assert not result.passed
    assert result.offending == {"index": 2, "op": "GATHER_ND", "feeds_conv": 4}
    assert result.network_ops == 5 and result.last_conv == 4
    assert partitions(ops) == [(True, [0, 1]), (False, [2]), (True, [3, 4]), (False, [5])]
    assert "FAIL: op 2 GATHER_ND" in result.summary()
    # the first offending op in execution order is named, here the earlier of two
    ops = [("CONV_2D", (0,), (1,)), ("TOPK_V2", (1,), (2, 3)), ("ARG_MAX", (1,), (4,)),
           ("CAST", (4,), (5,)), ("GATHER_ND", (1, 5), (6,)), ("CONV_2D", (6,), (7,))]
    assert check_ops(ops).offending == {"index": 2, "op": "ARG_MAX", "feeds_conv": 5}


def test_no_convolution_and_empty_graph():
    assert check_ops([("TOPK_V2", (0,), (1, 2))]).passed
    assert check_ops([("TOPK_V2", (0,), (1, 2))]).last_conv == -1
    assert partitions([]) == [] and check_ops([]).passed


# --- converted models ----------------------------------------------------------------------------


class GatherNd(keras.layers.Layer):
    """Reads pixel (i, i) of each row block: a tf.gather_nd inside the network."""

    def call(self, x):
        index = tf.constant([[[0, i, i] for i in range(4)]], tf.int32)  # [1, 4, 3]
        return tf.reshape(tf.gather_nd(x, index), [1, 2, 2, x.shape[-1]])


@pytest.fixture(scope="module")
def gather_nd_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("gather_nd")
    inputs = keras.Input((4, 4, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = GatherNd()(x)
    x = keras.layers.Conv2D(2, 1)(x)
    content = tflite.keras_to_tflite(keras.Model(inputs, x), [tf.TensorSpec([1, 4, 4, 3])],
                                     str(work))
    path = work / "gather_nd.tflite"
    path.write_bytes(content)
    return path


def test_gather_nd_between_convolutions_fails(gather_nd_model, capsys):
    content = gather_nd_model.read_bytes()
    names = tflite.operator_names(content)
    result = check_gpu(content)
    assert not result.passed
    assert result.offending["op"] == "GATHER_ND"
    assert result.offending["index"] == names.index("GATHER_ND")
    assert names[result.offending["feeds_conv"]] == "CONV_2D"
    assert result.last_conv == len(names) - 1 - names[::-1].index("CONV_2D")
    assert report(str(gather_nd_model), as_json=True) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"FAIL: op {names.index('GATHER_ND')} GATHER_ND" in lines[-2]
    assert json.loads(lines[-1])["offending"]["op"] == "GATHER_ND"


class TopKCodec(Codec):
    """Toy decoding: the P highest pixels of each keypoint heatmap (TOPK_V2 after the network)."""

    name = "topk"

    def decode(self, outputs):
        heat = outputs["heatmaps"]
        h, w, k = heat.shape[1:]
        stride = self.input_size / w
        values, index = tf.math.top_k(
            tf.reshape(tf.transpose(heat, [0, 3, 1, 2]), [-1, k, h * w]), k=self.max_people)
        x = (tf.cast(index % w, tf.float32) + 0.5) * stride
        y = (tf.cast(index // w, tf.float32) + 0.5) * stride
        keypoints = tf.transpose(tf.stack([x, y, values], axis=-1), [0, 2, 1, 3])
        return {"keypoints": keypoints, "scores": tf.reduce_mean(values, axis=1),
                "num_people": tf.fill(tf.shape(heat)[:1], self.max_people)}


def test_deployed_export_passes_with_three_outputs(tmp_path, capsys):
    cfg = load_config(str(QUICKSTART), [f"data.input_size={SIZE}"])
    codec = TopKCodec(types.SimpleNamespace(max_people=3), cfg.spec, SIZE)
    keras.utils.set_random_seed(1)
    images = keras.Input((SIZE, SIZE, 3))
    x = ImageNormalization()(images)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    heat = keras.layers.Conv2D(cfg.spec.num_keypoints, 3, padding="same")(x)
    model = keras.Model(images, {"heatmaps": heat})
    path = tflite.export_tflite(model, codec, cfg, str(tmp_path / "topk.tflite"),
                                work_dir=str(tmp_path))
    content = Path(path).read_bytes()
    # decoding matches the codec on the Keras outputs
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    out = run_tflite(content, image)
    assert list(out) == list(tflite.OUTPUT_NAMES)
    expected = codec.decode(model(tf.cast(image[None], tf.float32)))
    np.testing.assert_allclose(out["keypoints"][0], expected["keypoints"].numpy(), atol=1e-4)
    result = check_gpu(content)
    assert result.passed
    assert [p["gpu"] for p in result.partitions[:2]] == [True, False]
    assert "TOPK_V2" in result.partitions[1]["op_types"]
    assert report(path) == 0
    assert capsys.readouterr().out.strip().endswith(
        "PASS: the network is one GPU partition; decoding runs after it")
    # the tflite benchmark reads the same file (and the SavedModel it came from)
    timing = benchmark_tflite(path, threads=1, runs=2, warmup=1,
                              saved_model=str(tmp_path / "saved_model"))
    assert timing["file_mb"] == round(len(content) / 2**20, 3)
    assert (timing["quantization"], timing["input"]) == ("fp32", f"uint8 [1, {SIZE}, {SIZE}, 3]")
    assert 0 < timing["ms_min"] <= timing["ms_median"]
    assert 0 < timing["saved_model_ms_min"] <= timing["saved_model_ms_median"]


def test_command_line(gather_nd_model, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tfpose.export.check_gpu", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=300)

    done = cli(str(gather_nd_model), "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["offending"]["op"] == "GATHER_ND"
    not_tflite = tmp_path / "model.tflite"
    not_tflite.write_bytes(b"not a flatbuffer at all")
    assert report(str(not_tflite)) == 2 and report(str(tmp_path / "missing.tflite")) == 2


@pytest.mark.large
def test_quickstart_network_passes_in_fp32_and_fp16(tmp_path):
    """The full quickstart dekr network (HRNet-W8, 128 px) with its decoding, as exported."""
    from tfpose.registry import METHODS, build_codec

    cfg = load_config(str(QUICKSTART))
    keras.utils.set_random_seed(0)
    model = METHODS["dekr"].build_model(cfg)
    codec = build_codec(cfg)
    paths = tflite.export_tflite_modes(model, codec, cfg, {
        mode: str(tmp_path / f"{mode}.tflite") for mode in ("fp32", "fp16")})
    for path in paths.values():
        result = check_gpu(Path(path).read_bytes())
        assert result.passed, result.summary()
        assert result.partitions[0]["gpu"] and result.partitions[0]["last"] >= result.last_conv
