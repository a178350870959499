"""tfpose.export.tflite: fp32 / fp16 / int8 .tflite of export_cases' tiny dekr against Keras + the
codec, output names and order, metadata, the GPU-delegate check of the exports, and input errors.

The tiny dekr (quickstart's heads with adaptive convolutions on a two-conv stem, 64 px) is
exported once per module in the three modes from one intermediate SavedModel, with the raw
network outputs (test_check_gpu exports without them, as deployed; the full quickstart network is
exported in test_check_gpu's `large` test).
"""

import json
import os
import types
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from export_cases import (SIZE, run_tflite, tiny_config, tiny_dekr, tiny_posedet,
                          tiny_posedet_config, value)

from tfpose.codecs.base import Codec
from tfpose.config import ConfigError
from tfpose.export import tflite
from tfpose.export.check_gpu import check_gpu
from tfpose.export.saved_model import ExportError
from tfpose.fileio import temporary_prefix
from tfpose.layers.normalize import IMAGENET_MEAN, IMAGENET_STD
from tfpose.registry import build_codec

interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("tflite")
    cfg = tiny_config()
    model, codec = tiny_dekr(cfg), build_codec(cfg)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.uint8)
    paths = tflite.export_tflite_modes(
        model, codec, cfg, {mode: str(work / f"{mode}.tflite") for mode in tflite.QUANTIZE_MODES},
        images, raw_outputs=True, work_dir=str(work))
    keras_out = model(tf.cast(images, tf.float32), training=False)
    return types.SimpleNamespace(cfg=cfg, model=model, codec=codec, images=images, work=work,
                                 path=paths["fp32"],
                                 contents={m: Path(p).read_bytes() for m, p in paths.items()},
                                 keras={k: v.numpy() for k, v in keras_out.items()},
                                 poses={k: v.numpy() for k, v in codec.decode(keras_out).items()})


def test_outputs_names_order_and_types(exported):
    p, k = exported.codec.max_people, exported.cfg.spec.num_keypoints
    expect = [("keypoints", np.float32, [1, p, k, 3]), ("scores", np.float32, [1, p]),
              ("num_people", np.int32, [1])]
    n = SIZE // exported.codec.stride
    raw = [("raw_center", [1, n, n, 1]), ("raw_heatmaps", [1, n, n, k]),
           ("raw_offsets", [1, n, n, 2 * k])]
    for mode, content in exported.contents.items():
        interpreter = interpreter_module.Interpreter(model_content=content)
        (image,) = interpreter.get_input_details()
        assert (image["name"], image["dtype"], image["shape"].tolist()) == (
            "image", np.uint8, [1, SIZE, SIZE, 3])
        details = interpreter.get_output_details()
        got = [(d["name"], d["dtype"], d["shape"].tolist()) for d in details]
        assert got[:3] == expect, mode
        assert [(name, shape) for name, _, shape in got[3:]] == raw, mode
        assert interpreter.get_signature_list() == {"serving_default": {
            "inputs": ["image"], "outputs": sorted(name for name, _, _ in got)}}


def test_fp32_network_outputs_and_poses_match_keras(exported):
    out = run_tflite(exported.contents["fp32"], exported.images[0])
    for name, reference in exported.keras.items():
        np.testing.assert_allclose(value(out["raw_" + name]), reference[:1], rtol=0, atol=1e-4,
                                   err_msg=name)
    poses = exported.poses
    n = int(poses["num_people"][0])
    assert n >= 2  # the scaled maps give people to compare
    assert int(value(out["num_people"])[0]) == n
    keypoints = value(out["keypoints"])[0]
    np.testing.assert_allclose(keypoints[:n, :, :2], poses["keypoints"][0, :n, :, :2], atol=0.5)
    np.testing.assert_allclose(keypoints[:n, :, 2], poses["keypoints"][0, :n, :, 2], atol=1e-4)
    np.testing.assert_allclose(value(out["scores"])[0], poses["scores"][0], atol=1e-4)
    np.testing.assert_array_equal(keypoints[n:], 0.0)


def test_fp16_stores_half_weights_and_keeps_poses(exported):
    """Convolution kernels are float16 constants dequantised at load time. Rounding weights to
    11 significant bits (relative error <= 2**-11) moves every network output by at most 2e-3 of
    its largest magnitude. The decoded poses: the same number of people, 95 % of the keypoints
    within 0.5 px (the others are near-ties of the absorption step on these random maps, which
    pick another candidate), scores within 0.05; and the tail decodes the fp16 maps exactly."""
    content = exported.contents["fp16"]
    ops = tflite.operators(content, subgraph=0)
    dequantized = {op.Outputs(0): graph.Tensors(op.Inputs(0)).Type()
                   for name, graph, op in ops if name == "DEQUANTIZE"}
    convs = [op for name, _, op in ops if name in tflite.CONV_OPS]
    assert convs and all(dequantized.get(op.Inputs(1)) == tflite.tflite_schema.TensorType.FLOAT16
                         for op in convs)
    assert len(content) < 0.8 * len(exported.contents["fp32"])
    poses, close = exported.poses, []
    for b, image in enumerate(exported.images):
        out = run_tflite(content, image)
        for name, reference in exported.keras.items():
            np.testing.assert_allclose(value(out["raw_" + name]), reference[b:b + 1], rtol=0,
                                       atol=2e-3 * np.abs(reference[b]).max(), err_msg=name)
        n = int(poses["num_people"][b])
        assert int(value(out["num_people"])[0]) == n
        keypoints = value(out["keypoints"])[0]
        close.append(np.linalg.norm(keypoints[:n, :, :2] - poses["keypoints"][b, :n, :, :2],
                                    axis=-1).ravel() <= 0.5)
        np.testing.assert_allclose(value(out["scores"])[0], poses["scores"][b], atol=0.05)
        assert_decodes_own_maps(exported.codec, out)
    assert np.mean(np.concatenate(close)) >= 0.95


def assert_decodes_own_maps(codec, out):
    """The .tflite's decoded outputs equal codec.decode (TF) of its own raw network outputs."""
    raw = {name[len(tflite.RAW_PREFIX):]: tf.constant(value(o)) for name, o in out.items()
           if name.startswith(tflite.RAW_PREFIX)}
    poses = {k: v.numpy() for k, v in codec.decode(raw).items()}
    n = int(value(out["num_people"])[0])
    assert n == int(poses["num_people"][0]) >= 1
    np.testing.assert_allclose(value(out["scores"]), poses["scores"], atol=1e-5)
    np.testing.assert_allclose(_people(value(out["keypoints"]), value(out["scores"]), n),
                               _people(poses["keypoints"], poses["scores"], n), atol=1e-3)
    return raw


def _people(keypoints, scores, n):
    """The first n people of image 0 as rows (score, keypoints) in a canonical order: people
    with equal scores (int8 maps give ties) may come in either order."""
    rows = np.concatenate([scores[0, :n, None], keypoints[0, :n].reshape(n, -1)], axis=1)
    return rows[np.lexsort(np.round(rows, 2).T[::-1])]


def test_int8_integer_network_float_decoding(exported):
    content = exported.contents["int8"]
    int8 = tflite.tflite_schema.TensorType.INT8
    float32 = tflite.tflite_schema.TensorType.FLOAT32
    ops = tflite.operators(content, subgraph=0)
    kinds = {}
    for name, graph, op in ops:
        kinds.setdefault(name, set()).add(graph.Tensors(op.Outputs(0)).Type())
    assert kinds["CONV_2D"] == {int8}  # every convolution, heads included, is integer
    assert kinds["FLOOR"] == {float32}  # sampling coordinates stay float
    assert {"TOPK_V2", "WHILE"} <= set(kinds) and kinds["TOPK_V2"] == {float32}
    for b, image in enumerate(exported.images[:2]):
        out = run_tflite(content, image)
        # the float tail decodes exactly the dequantised int8 network outputs
        raw = assert_decodes_own_maps(exported.codec, out)
        # integer network: within a few % of each map's range of the float network (the
        # calibration images are the test images)
        for name, reference in exported.keras.items():
            error = np.abs(raw[name].numpy() - reference[b:b + 1])
            span = np.ptp(reference[b])
            assert error.mean() < 0.02 * span and error.max() < 0.15 * span, name


def test_metadata_travels_in_the_flatbuffer(exported, tmp_path):
    codec, spec = exported.codec, exported.cfg.spec
    meta = tflite.read_metadata(exported.path)
    assert meta == tflite.read_metadata(exported.contents["fp32"])
    assert json.loads(json.dumps(meta)) == meta
    assert meta["keypoints"]["names"] == list(spec.names)
    assert meta["keypoints"]["flip_index"] == spec.flip_index.tolist()
    assert meta["keypoints"]["skeleton"] == [list(p) for p in spec.skeleton]
    assert meta["keypoints"]["sigmas"] == pytest.approx(list(spec.sigmas))
    assert (meta["method"], meta["codec"], meta["input_size"], meta["max_people"]) == (
        "dekr", "dekr", SIZE, codec.max_people)
    assert meta["input"]["shape"] == [1, SIZE, SIZE, 3] and meta["input"]["dtype"] == "uint8"
    norm = meta["input"]["normalization"]
    assert norm["mean"] == pytest.approx(IMAGENET_MEAN)
    assert norm["std"] == pytest.approx(IMAGENET_STD)
    assert [(o["name"], o["index"], o["shape"]) for o in meta["outputs"]] == [
        ("keypoints", 0, [1, codec.max_people, spec.num_keypoints, 3]),
        ("scores", 1, [1, codec.max_people]), ("num_people", 2, [1])]
    assert meta["flip_test"] is False and meta["scales"] == [1.0]
    quantization = {m: tflite.read_metadata(c)["quantization"]
                    for m, c in exported.contents.items()}
    assert quantization == {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}
    # written atomically: no temporary file left beside it
    leftovers = [f for f in os.listdir(exported.work)
                 if f.startswith(temporary_prefix("fp32.tflite"))]
    assert not leftovers
    with pytest.raises(ValueError, match="no 'tfpose' metadata"):
        tflite.read_metadata(tflite.keras_to_tflite(
            keras.Sequential([keras.Input((4,), batch_size=1), keras.layers.Dense(2)]),
            [tf.TensorSpec([1, 4])], str(tmp_path)))


def test_exports_pass_the_gpu_delegate_check(exported):
    for mode, content in exported.contents.items():
        result = check_gpu(content)
        assert result.passed, (mode, result.summary())
        first = result.partitions[0]
        assert first["gpu"] and first["first"] == 0 and first["last"] >= result.last_conv


def test_input_errors_name_the_problem(exported):
    cfg, model, codec = exported.cfg, exported.model, exported.codec
    out = str(exported.work / "bad.tflite")
    with pytest.raises(ConfigError, match="quantize = 'int4'"):
        tflite.export_tflite(model, codec, cfg, out, "int4")
    with pytest.raises(ConfigError, match="no quantisation mode given"):
        tflite.export_tflite_modes(model, codec, cfg, {})
    with pytest.raises(ExportError, match="needs representative_images"):
        tflite.export_tflite(model, codec, cfg, out, "int8")
    with pytest.raises(ExportError, match=r"representative_images\[1\] must be uint8"):
        tflite.export_tflite(model, codec, cfg, out, "int8",
                             [exported.images[0], exported.images[1].astype(np.float32)])
    with pytest.raises(ExportError, match="representative_images is empty"):
        tflite.export_tflite(model, codec, cfg, out, "int8", iter([]))
    other = tiny_config("data.input_size=96")
    with pytest.raises(ConfigError, match="data.input_size = 96"):
        tflite.export_tflite(model, codec, other, out)
    with pytest.raises(ExportError, match=r"representative_images\[0\] must be uint8 \[64, 64"):
        tflite.export_tflite(model, codec, cfg, out, "int8", [np.zeros((32, 32, 3), np.uint8)])
    assert not os.path.exists(out)


class ErfCodec(Codec):
    """Decodes with tf.math.erfinv, which has no TFLite builtin op."""

    name = "erf"

    def decode(self, outputs):
        heat = outputs["heatmaps"]
        points = tf.math.erfinv(tf.tanh(tf.reshape(heat[:, :1, :1, :1], [-1, 1, 1, 1])))
        k, p = self.num_keypoints, self.max_people
        return {"keypoints": tf.tile(points, [1, p, k, 3]), "scores": tf.zeros([1, p]),
                "num_people": tf.ones([1], tf.int32)}


def test_ops_outside_the_builtin_set_are_named(exported, tmp_path):
    codec = ErfCodec(types.SimpleNamespace(max_people=2), exported.cfg.spec, SIZE)
    images = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(images, {"heatmaps": keras.layers.Conv2D(1, 1)(images)})
    saved = tflite.write_serving_saved_model(exported.cfg, model, codec,
                                             str(tmp_path / "saved_model"))
    with pytest.raises(ExportError, match="outside the builtin set: tf.Erfinv"):
        tflite.convert_saved_model(saved)


# method -> (config, model with unscaled random weights, training steps)
INT8_CASES = {"dekr": (tiny_config, lambda cfg: tiny_dekr(cfg, scaled=False), 200),
              "posedet": (tiny_posedet_config, lambda cfg: tiny_posedet(cfg, scaled=False), 400)}


@pytest.mark.large
@pytest.mark.parametrize("method", sorted(INT8_CASES))
def test_int8_poses_match_fp32_after_training(tmp_path, method):
    """Trains the method's tiny model on 16 synthetic 64 px images, then compares the int8
    export with the float Keras model + codec on those images: the fp32 poses that are correct
    detections (OKS >= 0.5 with a ground-truth person) are found again by the int8 model with
    mean OKS >= 0.9 (OKS between fp32 and int8 poses, the fp32 pose's keypoint box as area).
    With random weights the decoded poses are noise, so this needs a trained model."""
    from tfpose.data.pipeline import build_dataset
    from tfpose.data.synthetic import SyntheticConfig, generate
    from tfpose.evaluation.oks import oks
    from tfpose.registry import METHODS

    data = tmp_path / "synthetic"
    generate(str(data), "coco", num_images=16, image_size=SIZE, seed=0, split_name="train",
             config=SyntheticConfig(max_people=2, min_scale=0.6, max_scale=0.9, crowd_rate=0.0,
                                    border_prob=0.0, unlabelled_rate=0.0, clutter=0.3))
    fixed = ["data.augment.rotation=0", "data.augment.scale_min=1", "data.augment.scale_max=1",
             "data.augment.translation=0", "data.augment.flip=0", "data.cache=false",
             "data.batch_size=8", f"data.train.annotations={data}/annotations_train.json",
             f"data.train.images={data}/images/train"]
    make_config, make_model, steps = INT8_CASES[method]
    cfg = make_config(*fixed)
    model, codec = make_model(cfg), build_codec(cfg)
    loss_fn = METHODS[method].build_loss(cfg)
    optimizer = keras.optimizers.Adam(5e-3)
    batches = list(build_dataset(cfg, "train", codec, training=True).take(2))

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            terms = loss_fn(targets, model(images, training=True))
            loss = tf.add_n([tf.reduce_mean(v) for v in terms.values()])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for i in range(steps):
        step(*batches[i % 2])
    images = np.concatenate([b[0].numpy() for b in batches]).astype(np.uint8)
    content = Path(tflite.export_tflite(model, codec, cfg, str(tmp_path / "int8.tflite"), "int8",
                                        list(images))).read_bytes()
    poses = codec.decode(model(tf.cast(images, tf.float32), training=False))
    annotations = json.loads((data / "annotations_train.json").read_text())
    # the pipeline shuffles: find each batch image's file (identity letterbox at 64 px)
    originals = {img["id"]: cv2.cvtColor(cv2.imread(str(data / "images" / "train" /
                                                        img["file_name"])), cv2.COLOR_BGR2RGB)
                 for img in annotations["images"]}
    sigmas = cfg.spec.sigmas_array
    similarities = []
    for b, image in enumerate(images):
        image_id = min(originals, key=lambda i: np.abs(originals[i].astype(int) - image).mean())
        people = [a for a in annotations["annotations"] if a["image_id"] == image_id]
        if not people:
            continue
        gt = np.array([np.reshape(a["keypoints"], (-1, 3)) for a in people], np.float32)
        n = int(poses["num_people"][b])
        fp32 = poses["keypoints"].numpy()[b, :n]
        correct = fp32[oks(fp32, gt, [a["area"] for a in people], sigmas).max(axis=1) >= 0.5]
        out = run_tflite(content, image)
        found = value(out["keypoints"])[0, :int(value(out["num_people"])[0])]
        if not len(correct):
            continue
        as_gt = np.concatenate([correct[..., :2], np.full(correct.shape[:2] + (1,), 2.0)], -1)
        area = np.ptp(correct[..., 0], axis=1) * np.ptp(correct[..., 1], axis=1)
        best = oks(found, as_gt, area, sigmas).max(axis=0) if len(found) else np.zeros(len(correct))
        similarities.extend(best.tolist())
    assert len(similarities) >= 8
    assert np.mean(similarities) >= 0.9, similarities
