"""tfpose.export.saved_model and ``python -m tfpose.export``: the TF Serving SavedModel.

Two exports per module:

* export_cases' tiny dekr, checkpointed, then restored and exported (SavedModel and fp32 TFLite)
  by the export CLI's ``export_model`` in a fresh interpreter (fresh_export.py), which also
  reports that no tfpose.training module was imported. It is compared with the Keras model + the
  eval letterbox + codec.decode, as ``predict`` runs it.
* a stand-in network whose outputs are the codec's oracle maps of one person at known input
  pixels for any image that is not black (zeros for a black one), which gives exact expected
  coordinates in the original image for every size and the zero-people case.
"""

import base64
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from export_cases import (QUICKSTART, REPO, SIZE, run_tflite, scale_final_convs, tiny_config,
                          tiny_dekr, value)

from tfpose.config import ConfigError, load_config
from tfpose.evaluate import to_original_pixels
from tfpose.export import saved_model
from tfpose.export.saved_model import ExportError
from tfpose.inference import network_outputs, outputs_function, predictor
from tfpose.predict import letterbox, read_image
from tfpose.registry import METHODS, build_codec

FRESH_EXPORT = Path(__file__).with_name("fresh_export.py")


def calibrate_batch_norm(model, images):
    """Sets every BatchNormalization's moving statistics to those of `images` (one training-mode
    pass with momentum 0), so a random deep network keeps O(1) activations in inference."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def reference_poses(predict, image: np.ndarray, input_size: int) -> dict:
    """What ``predict`` computes for a uint8 [H, W, 3] image: eval letterbox, the Keras model
    with the config's flip test and scales + codec.decode (`predict`: tfpose.inference.predictor),
    keypoints mapped to the image's pixels, then clipped to it (as exported)."""
    warped, transform = letterbox(image, input_size)
    poses = {k: v.numpy()[0] for k, v in predict(tf.constant(warped[None])).items()}
    n = int(poses["num_people"])
    kpts = to_original_pixels(poses["keypoints"][:n], transform)
    h, w = image.shape[:2]
    kpts[..., 0] = np.clip(kpts[..., 0], 0, w)
    kpts[..., 1] = np.clip(kpts[..., 1], 0, h)
    return {"keypoints": kpts, "scores": poses["scores"][:n], "num_people": n}


def encode(image: np.ndarray, ext=".png") -> bytes:
    """Encoded file bytes of an RGB(A) or grayscale uint8 image (OpenCV writes BGR(A))."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4
                             else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def as_numpy(outputs) -> dict:
    return {k: v.numpy() for k, v in outputs.items()}


def assert_valid(out: dict, sizes, max_people: int, num_keypoints: int):
    """Shapes, dtypes, coordinates inside each (W, H) image, zero rows past num_people, and
    scores decreasing."""
    b = len(sizes)
    assert out["keypoints"].shape == (b, max_people, num_keypoints, 3)
    assert out["keypoints"].dtype == np.float32 and out["scores"].shape == (b, max_people)
    assert out["num_people"].shape == (b,) and out["num_people"].dtype == np.int32
    assert np.isfinite(out["keypoints"]).all() and np.isfinite(out["scores"]).all()
    for i, (w, h) in enumerate(sizes):
        n = int(out["num_people"][i])
        kpts = out["keypoints"][i]
        assert 0 <= n <= max_people
        assert (kpts[:n, :, 0] >= 0).all() and (kpts[:n, :, 0] <= w).all()
        assert (kpts[:n, :, 1] >= 0).all() and (kpts[:n, :, 1] <= h).all()
        np.testing.assert_array_equal(kpts[n:], 0.0)
        np.testing.assert_array_equal(out["scores"][i, n:], 0.0)
        assert (np.diff(out["scores"][i, :n]) <= 0).all()


def serving_request_tensor(body: dict, signature) -> dict:
    """The input tensors TF Serving builds from a REST predict body in row format: each
    instance is the value of the signature's only input (or a {name: value} map), and a
    {"b64": s} value is the base64-decoded string."""
    (name,) = signature.structured_input_signature[1]

    def value(v):
        return base64.b64decode(v["b64"]) if isinstance(v, dict) and set(v) == {"b64"} else v

    rows = [inst[name] if isinstance(inst, dict) and name in inst else inst
            for inst in body["instances"]]
    return {name: tf.constant([value(v) for v in rows])}


def load_rest_client():
    spec = importlib.util.spec_from_file_location("rest_client", REPO / "export" / "rest_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny dekr, checkpointed, restored and exported by the CLI's export_model in a fresh
    interpreter (fresh_export.py)."""
    work = tmp_path_factory.mktemp("saved_model")
    cfg = tiny_config(run_dir=work / "run")
    model = tiny_dekr(cfg)
    prefix = tf.train.Checkpoint(model=model).write(str(work / "ckpt" / "ckpt"))
    # the script's folder is on its path (export_cases); tfpose is found from the repository
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(FRESH_EXPORT), str(work / "run"), prefix,
                           str(work / "out"), "tiny", "saved_model,tflite"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    path = report["written"]["saved_model"]
    codec = build_codec(cfg)
    return types.SimpleNamespace(cfg=cfg, model=model, codec=codec, path=path, out=work / "out",
                                 report=report, loaded=tf.saved_model.load(path),
                                 predict=predictor(cfg, model, codec))


class OnePerson:
    """Stand-in network: the codec's oracle outputs of one person at `keypoints` (input
    pixels) for every image with a non-zero pixel, all-zero outputs (nobody) for a black one."""

    def __init__(self, codec, keypoints):
        size = codec.input_size
        targets = codec.encode(np.concatenate([keypoints, np.full_like(keypoints[:, :1], 2)],
                                              axis=-1)[None], np.ones([size, size], np.float32))
        self.maps = codec.oracle_outputs({k: v[None] for k, v in targets.items()})

    def __call__(self, images, training=False):
        lit = tf.cast(tf.reduce_max(images, axis=[1, 2, 3]) > 0, tf.float32)[:, None, None, None]
        return {k: v * lit for k, v in self.maps.items()}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    work = tmp_path_factory.mktemp("standin")
    cfg = tiny_config(run_dir=work / "run")  # one forward pass: the stand-in ignores flips
    codec = build_codec(cfg)
    k = cfg.spec.num_keypoints
    # a person within the input (x 14..50, y 6..58); keypoint 0 at y = 6: in the letterbox
    # padding of wide images
    t = np.arange(k, dtype=np.float32)
    gt = np.stack([14.0 + 36.0 * (t % 5) / 4.0, 10.0 + 48.0 * (t // 5) / 3.0], axis=-1)
    gt[0] = [32.0, 6.0]
    path = saved_model.export_saved_model(cfg, OnePerson(codec, gt), codec, str(work),
                                          "standin")
    return types.SimpleNamespace(cfg=cfg, codec=codec, gt=gt, loaded=tf.saved_model.load(path))


def expected_original(gt, size, w, h):
    """Letterbox inverse written out: input (x, y) -> original pixels, clipped to the image."""
    scale = max(w, h) / size
    x = np.clip((gt[:, 0] - size / 2) * scale + w / 2, 0, w)
    y = np.clip((gt[:, 1] - size / 2) * scale + h / 2, 0, h)
    return np.stack([x, y], axis=-1)


# --- the tiny dekr, through the CLI's export --------------------------------------------------


def test_tf_serving_layout_and_metadata(exported):
    tflite_path = str(exported.out / "tiny_fp32.tflite")
    assert exported.path == str(exported.out / "tiny" / "1")
    assert exported.report["written"]["tflite"] == {"fp32": tflite_path}
    assert exported.report["lines"] == [f"saved_model: {exported.path}",
                                        f"tflite (fp32): {tflite_path}"]
    assert os.listdir(exported.out / "tiny") == ["1"]  # no temporary folder left
    assert os.path.isfile(os.path.join(exported.path, "saved_model.pb"))
    meta = saved_model.read_metadata(exported.path)
    spec = exported.cfg.spec
    assert meta["keypoints"]["names"] == list(spec.names)
    assert meta["keypoints"]["flip_index"] == spec.flip_index.tolist()
    assert meta["keypoints"]["skeleton"] == [list(p) for p in spec.to_dict()["skeleton"]]
    assert (meta["input_size"], meta["max_people"], meta["method"]) == (
        SIZE, exported.codec.max_people, "dekr")
    assert sorted(meta["signatures"]) == ["image_bytes", "serving_default"]


def test_saved_model_samples_without_xla(exported):
    """The adaptive convs' sampler runs XLA-compiled in TensorFlow but is exported as plain ops
    (tfpose.layers.sampling.portable_sampling): TF Serving runs no XLA on CPU by default."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(exported.path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    functions = graph.library.function
    nodes = [n for f in functions for n in f.node_def] + list(graph.node)
    compiled = [n.name for n in nodes if n.attr["_XlaMustCompile"].b]
    compiled += [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]
    assert any(n.op == "GatherV2" for n in nodes)  # the sampler is in the graph
    assert compiled == []


def test_export_imports_no_training_code(exported):
    """DESIGN.md section 2: restoring the checkpoint and exporting (the whole export package
    imported) leave no tfpose.training module in the fresh interpreter's sys.modules."""
    assert exported.report["training_modules"] == []


def test_cli_tflite_holds_the_restored_network(exported, data_dir):
    """The CLI's fp32 .tflite (one forward pass) of the restored weights against Keras +
    codec.decode on a letterboxed photo."""
    from tfpose.export import tflite

    content = Path(exported.report["written"]["tflite"]["fp32"]).read_bytes()
    assert tflite.read_metadata(content)["quantization"] == "fp32"
    image = letterbox(read_image(str(data_dir / "coco_mini" / "000000040083.jpg")), SIZE)[0]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    out = run_tflite(content, image)
    want = {k: v.numpy()[0] for k, v in exported.codec.decode(
        exported.model(image[None].astype(np.float32), training=False)).items()}
    n = int(want["num_people"])
    assert int(value(out["num_people"])[0]) == n >= 1
    np.testing.assert_allclose(value(out["keypoints"])[0, :n, :, :2], want["keypoints"][:n, :, :2],
                               atol=0.5)
    np.testing.assert_allclose(value(out["scores"])[0], want["scores"], atol=1e-4)


def test_decode_function_runs_the_configs_test_time_passes(exported, data_dir):
    """decode_function (every format's graph) with the config's eval.flip_test and eval.scales:
    the network outputs of ``predict``'s computation (tfpose.inference.network_outputs, run
    eagerly); with them overridden and batch 1 (the .tflite's graph): one plain forward pass."""
    cfg = tiny_config("eval.flip_test=true", "eval.scales=[1.0,0.5]")
    model, codec = exported.model, exported.codec
    images = tf.constant(np.stack([letterbox(read_image(str(p)), SIZE)[0] for p in
                                   sorted((data_dir / "coco_mini").glob("*.jpg"))[:2]]))
    frozen = saved_model.decode_function(cfg, model, codec)(images)
    want = network_outputs(model, codec, images, flip_test=True, scales=(1.0, 0.5))
    plain = model(images, training=False)
    for name in want:
        np.testing.assert_allclose(frozen[name], want[name], atol=1e-4, err_msg=name)
        assert np.abs(want[name] - plain[name]).max() > 1e-2  # the passes changed the maps
    assert set(frozen) == set(want) | set(saved_model.OUTPUT_KEYS)
    single = saved_model.decode_function(cfg, model, codec, flip_test=False, scales=[1.0],
                                         batch_size=1)
    got = single(images[1:])
    for name in want:
        np.testing.assert_allclose(got[name], plain[name][1:], atol=1e-4, err_msg=name)


def test_saved_model_cli_lists_both_signatures(exported):
    shown = subprocess.run(["saved_model_cli", "show", "--dir", exported.path, "--all"],
                           capture_output=True, text=True, check=True).stdout
    sections = {name: shown.split(f"signature_def['{name}']")[1].split("signature_def[")[0]
                for name in ("serving_default", "image_bytes")}
    assert "DT_UINT8" in sections["serving_default"]
    assert "shape: (-1, -1, -1, 3)" in sections["serving_default"]
    assert "DT_STRING" in sections["image_bytes"] and "shape: (-1)" in sections["image_bytes"]
    for section in sections.values():
        for name in ("keypoints", "scores", "num_people"):
            assert f"outputs['{name}']" in section


def test_serving_default_matches_keras_and_decode(exported, data_dir):
    """Each image as ``predict`` runs it (eval letterbox, Keras, codec.decode, original pixels)
    against the SavedModel on the raw uint8 pixels."""
    serve = exported.loaded.signatures["serving_default"]
    people = 0
    for path in sorted((data_dir / "coco_mini").glob("*.jpg")):
        image = read_image(str(path))
        want = reference_poses(exported.predict, image, SIZE)
        got = as_numpy(serve(image=tf.constant(image[None])))
        n = want["num_people"]
        assert int(got["num_people"][0]) == n
        np.testing.assert_allclose(got["keypoints"][0, :n, :, :2], want["keypoints"][..., :2],
                                   atol=0.5)
        np.testing.assert_allclose(got["keypoints"][0, :n, :, 2], want["keypoints"][..., 2],
                                   atol=1e-4)
        np.testing.assert_allclose(got["scores"][0, :n], want["scores"], atol=1e-4)
        assert_valid(got, [image.shape[1::-1]], exported.codec.max_people,
                     exported.cfg.spec.num_keypoints)
        people += n
    assert people >= 4  # the comparison covered decoded people


def test_image_bytes_with_the_rest_client_request(exported, data_dir):
    rest_client = load_rest_client()
    path = data_dir / "coco_mini" / "000000040083.jpg"
    body = json.loads(json.dumps(rest_client.build_request(str(path))))  # as sent over HTTP
    assert body["signature_name"] == "image_bytes"
    signature = exported.loaded.signatures[body["signature_name"]]
    inputs = serving_request_tensor(body, signature)
    assert inputs["image_bytes"].numpy()[0] == path.read_bytes()
    got = as_numpy(signature(**inputs))
    image = read_image(str(path))
    want = as_numpy(exported.loaded.signatures["serving_default"](image=tf.constant(image[None])))
    assert int(got["num_people"][0]) == int(want["num_people"][0]) >= 1
    for key in ("keypoints", "scores"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-4)


def test_tiny_huge_grayscale_and_rgba_images(exported, data_dir):
    """Valid outputs for a 16 x 16 and a 4000 x 3000 image through both signatures, and for
    grayscale / RGBA PNGs through image_bytes, which decode as their RGB equivalents."""
    loaded = exported.loaded
    serve, from_bytes = loaded.signatures["serving_default"], loaded.signatures["image_bytes"]
    p, k = exported.codec.max_people, exported.cfg.spec.num_keypoints
    photo = read_image(str(data_dir / "coco_mini" / "000000000785.jpg"))
    tiny = cv2.resize(photo, (16, 16), interpolation=cv2.INTER_AREA)
    huge = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    for image in (tiny, huge):
        direct = as_numpy(serve(image=tf.constant(image[None])))
        assert_valid(direct, [image.shape[1::-1]], p, k)
        png = as_numpy(from_bytes(image_bytes=tf.constant([encode(image)])))
        for key in ("keypoints", "scores", "num_people"):
            np.testing.assert_allclose(png[key], direct[key], atol=1e-4, err_msg=key)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    alpha = np.random.default_rng(0).integers(0, 256, photo.shape[:2], dtype=np.uint8)
    rgba = np.concatenate([photo, alpha[..., None]], axis=-1)
    got = as_numpy(from_bytes(image_bytes=tf.constant([encode(gray), encode(rgba)])))
    assert_valid(got, [photo.shape[1::-1]] * 2, p, k)
    for i, rgb in enumerate((np.repeat(gray[..., None], 3, axis=-1), photo)):
        want = as_numpy(serve(image=tf.constant(rgb[None])))
        assert int(got["num_people"][i]) == int(want["num_people"][0]) >= 1
        np.testing.assert_allclose(got["keypoints"][i], want["keypoints"][0], atol=1e-4)


def test_float_input_is_refused_by_the_signature(exported):
    """The signature's uint8 dtype refuses float pixels (values 0..1 or 0..255 alike) before any
    op runs; the error names both types."""
    serve = exported.loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="expected to be a uint8 tensor but is a float tensor"):
        serve(image=tf.zeros([1, 32, 32, 3], tf.float32))


def test_existing_version_is_never_overwritten(exported):
    with pytest.raises(ConfigError, match=r"tiny/1 already exists.*--version 2"):
        saved_model.export_saved_model(exported.cfg, exported.model, exported.codec,
                                       str(exported.out), "tiny", 1)
    with pytest.raises(ConfigError, match="--model_name"):
        saved_model.export_saved_model(exported.cfg, exported.model, exported.codec,
                                       str(exported.out), "../up", 1)


def test_failed_export_leaves_no_version(tmp_path, exported):
    def broken(images):
        raise ExportError("broken graph")

    with pytest.raises(ExportError, match="broken graph"):
        saved_model.export_saved_model(exported.cfg, exported.model, exported.codec,
                                       str(tmp_path), "tiny", decode=broken)
    assert os.listdir(tmp_path / "tiny") == []  # neither a version nor the temporary folder


def test_cli_checks_formats_before_building_anything(exported):
    from tfpose.export.__main__ import export_model

    with pytest.raises(ConfigError, match=r"^--formats 'saved_model,pdf': choose from "
                                          r"saved_model,tflite,onnx$"):
        export_model(exported.cfg, "no/such/checkpoint", str(exported.out),
                     ["saved_model", "pdf"])
    with pytest.raises(ConfigError, match="--quantize 'int4'"):
        export_model(exported.cfg, "no/such/checkpoint", str(exported.out), ["tflite"],
                     ["int4"])
    with pytest.raises(ConfigError, match="tiny/1 already exists"):
        export_model(exported.cfg, "no/such/checkpoint", str(exported.out), ["saved_model"],
                     model_name="tiny", version=1)


def test_cli_writes_all_tflite_modes_in_one_call_calibrating_int8(exported, monkeypatch):
    """The CLI's TFLite glue: ``<name>_<mode>.tflite`` per --quantize mode, all from one call of
    tfpose.export.tflite.export_tflite_modes (one intermediate SavedModel), with representative
    images drawn once and only for int8 (that function's own tests convert real models)."""
    import tfpose.export.__main__ as cli_main
    from tfpose.export import tflite

    calls, drawn = [], []
    monkeypatch.setattr(tflite, "export_tflite_modes",
                        lambda model, codec, cfg, paths, images: calls.append(
                            (model, codec, cfg, paths, images)) or dict(paths))
    monkeypatch.setattr(cli_main, "representative_images", lambda cfg: drawn.append(cfg) or
                        ["calibration images"])
    lines = []
    written = cli_main.export_restored(exported.cfg, exported.model, exported.codec,
                                       str(exported.out), ["tflite"], ["fp16", "int8"], "tiny",
                                       echo=lines.append)
    paths = {mode: str(exported.out / f"tiny_{mode}.tflite") for mode in ("fp16", "int8")}
    assert written == {"tflite": paths}
    assert calls == [(exported.model, exported.codec, exported.cfg, paths,
                      ["calibration images"])]
    assert drawn == [exported.cfg]
    assert lines == [f"tflite (fp16): {paths['fp16']}", f"tflite (int8): {paths['int8']}"]
    calls.clear()
    cli_main.export_restored(exported.cfg, exported.model, exported.codec, str(exported.out),
                             ["tflite"], ["fp32"], "tiny", echo=lines.append)
    assert calls[0][-1] is None and drawn == [exported.cfg]  # no calibration without int8


def test_representative_images_are_letterboxed_training_images(tmp_path, data_dir):
    """Drawn without replacement from data.train, seeded, letterboxed as ``predict`` does."""
    from tfpose.data.readers import read_split
    from tfpose.export.__main__ import representative_images

    coco = data_dir / "coco_mini"
    cfg = tiny_config(f"data.train.annotations={coco / 'test_coco.json'}",
                      f"data.train.images={coco}", run_dir=tmp_path)
    images = representative_images(cfg, count=3)
    assert len(images) == 3
    again = representative_images(cfg, count=3)
    paths = {r.path for r in read_split(cfg.data.train, cfg.spec)}
    references = [np.clip(np.rint(letterbox(read_image(p), SIZE)[0]), 0, 255).astype(np.uint8)
                  for p in paths]
    for image, same in zip(images, again):
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(image, same)
        assert sum(np.array_equal(image, r) for r in references) == 1
    assert len({image.tobytes() for image in images}) == 3  # without replacement


# --- the stand-in network: exact coordinates -------------------------------------------------


@pytest.mark.parametrize("w, h", [(16, 16), (4000, 3000), (40, 150)])
def test_keypoints_in_original_pixels(standin, w, h):
    """The one person of the stand-in at its letterbox-inverted position, clipped to the image
    (keypoint 0 lies in the padding of wide images), through both signatures."""
    size = standin.cfg.data.input_size
    image = np.full((h, w, 3), 90, np.uint8)
    want = expected_original(standin.gt, size, w, h)
    tol = 0.5 * max(w, h) / size  # half an input pixel
    for out in (standin.loaded.signatures["serving_default"](image=tf.constant(image[None])),
                standin.loaded.signatures["image_bytes"](image_bytes=tf.constant([encode(image)]))):
        out = as_numpy(out)
        assert_valid(out, [(w, h)], standin.codec.max_people, standin.cfg.spec.num_keypoints)
        assert int(out["num_people"][0]) == 1
        np.testing.assert_allclose(out["keypoints"][0, 0, :, :2], want, atol=tol)
    if w > h:
        assert out["keypoints"][0, 0, 0, 1] == 0.0  # clipped to the top border


def test_black_and_transparent_images_have_nobody(standin):
    """Zero people: all outputs zero. A black RGBA image with opaque alpha is black once alpha
    is dropped; a batch mixes it with a grey image of another size."""
    black = np.zeros((30, 50, 3), np.uint8)
    out = as_numpy(standin.loaded.signatures["serving_default"](image=tf.constant(black[None])))
    assert int(out["num_people"][0]) == 0
    assert not out["keypoints"].any() and not out["scores"].any()
    rgba = np.concatenate([black, np.full((30, 50, 1), 255, np.uint8)], axis=-1)
    grey = np.full((20, 20), 128, np.uint8)
    out = as_numpy(standin.loaded.signatures["image_bytes"](
        image_bytes=tf.constant([encode(rgba), encode(grey, ".jpg")])))
    assert out["num_people"].tolist() == [0, 1]
    assert not out["keypoints"][0].any() and not out["scores"][0].any()
    want = expected_original(standin.gt, standin.cfg.data.input_size, 20, 20)
    np.testing.assert_allclose(out["keypoints"][1, 0, :, :2], want, atol=0.5 * 20 / SIZE)


# --- the real Quickstart network --------------------------------------------------------------


@pytest.mark.large
def test_quickstart_network_cli_export_saved_model_and_onnx(tmp_path, data_dir):
    """``python -m tfpose.export`` on a checkpoint of the full Quickstart network (HRNet-W8,
    128 px, batch norm calibrated on the coco_mini images): the SavedModel's poses against
    ``predict``'s computation, the ONNX network outputs against Keras and its poses against
    codec.decode of those outputs."""
    from tfpose.export.onnx import run_onnx

    # one forward pass (as tiny_config): flipped passes flatten the random network's peaks
    overrides = [f"train.out_dir={tmp_path / 'run'}", "eval.flip_test=false"]
    cfg = load_config(str(QUICKSTART), overrides)
    keras.utils.set_random_seed(0)
    model = METHODS["dekr"].build_model(cfg)
    photos = [read_image(str(p)) for p in sorted((data_dir / "coco_mini").glob("*.jpg"))]
    calibrate_batch_norm(model, np.stack([letterbox(p, cfg.data.input_size)[0] for p in photos]))
    scale_final_convs(model, cfg)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt"))
    result = subprocess.run(
        [sys.executable, "-m", "tfpose.export", "--config", str(QUICKSTART), "--checkpoint",
         prefix, "--out", str(tmp_path / "out"), "--formats", "saved_model,onnx",
         "--model-name", "qs", *(arg for o in overrides for arg in ("--set", o))],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [f"saved_model: {tmp_path / 'out' / 'qs' / '1'}",
                                          f"onnx: {tmp_path / 'out' / 'qs.onnx'}"]
    codec = build_codec(cfg)
    image = photos[0]
    loaded = tf.saved_model.load(str(tmp_path / "out" / "qs" / "1"))
    got = as_numpy(loaded.signatures["serving_default"](image=tf.constant(image[None])))
    want = reference_poses(predictor(cfg, model, codec), image, cfg.data.input_size)
    n = want["num_people"]
    assert int(got["num_people"][0]) == n >= 1
    np.testing.assert_allclose(got["keypoints"][0, :n, :, :2], want["keypoints"][..., :2],
                               atol=0.5)
    warped, _ = letterbox(image, cfg.data.input_size)
    onnx_out = run_onnx((tmp_path / "out" / "qs.onnx").read_bytes(), {"images": warped[None]})
    # ~300 float32 convolutions summed in another order than TF's, amplified by the final
    # convolutions scaled x60 / x300: 1e-3 (the tiny model of test_onnx meets 1e-4; on the
    # trained Quickstart `python -m tfpose.benchmark parity` measures ~5e-6)
    for name, output in outputs_function(cfg, model, codec)(warped[None]).items():
        np.testing.assert_allclose(onnx_out[name], output.numpy(), atol=1e-3, err_msg=name)
    own = codec.decode({k: tf.constant(onnx_out[k]) for k in ("heatmaps", "center", "offsets")})
    poses = {k: v.numpy() for k, v in own.items()}
    n = int(poses["num_people"][0])
    assert int(onnx_out["num_people"][0]) == n >= 1
    np.testing.assert_allclose(onnx_out["keypoints"][0, :n, :, :2],
                               poses["keypoints"][0, :n, :, :2], atol=0.5)
