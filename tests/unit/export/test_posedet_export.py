"""Export of a tiny posedet (top-k + while-loop OKS NMS decode): Keras vs the TF Serving
SavedModel vs TFLite fp32 / fp16 vs ONNX, the GPU-delegate check, and no training-only
intermediate heatmaps in any exported graph.

The model is export_cases.tiny_posedet: configs/posedet/posedet_quickstart.yaml (MobileNetV3
width 8, FPN at strides 8 / 16 / 32) with 16-channel FPN and head at 64 px, seeded random weights
with the classifier and displacement convolutions scaled up so that real images decode to
several people. It is exported once per module: the SavedModel and ONNX from one shared
decode_function, the fp32 and fp16 .tflite from one intermediate SavedModel (with the raw
network outputs; the deployed files, without them, are converted again for check_gpu). Inputs:
the coco_mini images letterboxed to 64 px as ``predict`` does.
"""

import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from export_cases import SIZE, run_tflite, tiny_posedet, tiny_posedet_config, value

from tfpose.export import tflite
from tfpose.export.check_gpu import check_gpu
from tfpose.export.saved_model import SIGNATURE_IMAGE, decode_function, export_saved_model
from tfpose.predict import letterbox, read_image
from tfpose.registry import build_codec

pytest.importorskip("ai_edge_litert.interpreter")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

# decode reads these; the intermediate heatmaps (heatmaps_s8, ...) only train the network
DECODED_FROM = ("coarse", "logits", "refine")
POSE_OUTPUTS = ("keypoints", "scores", "num_people")
RAW_ATOL = 1e-4  # network outputs, every float32 format
PIXEL_ATOL = 0.5  # decoded keypoints
SCORE_ATOL = 1e-4  # pose scores; also what counts as a near-tie of two scores


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    from tfpose.export.onnx import export_onnx, run_onnx

    work = tmp_path_factory.mktemp("posedet")
    cfg = tiny_posedet_config(run_dir=work / "run")
    model, codec = tiny_posedet(cfg), build_codec(cfg)
    images = np.stack([np.clip(np.rint(letterbox(read_image(str(p)), SIZE)[0]), 0, 255)
                       for p in sorted((data_dir / "coco_mini").glob("*.jpg"))]).astype(np.uint8)
    outputs = model(tf.constant(images, tf.float32), training=False)
    decode = decode_function(cfg, model, codec)
    version = export_saved_model(cfg, model, codec, str(work / "serving"), "posedet",
                                 decode=decode)
    onnx_path = export_onnx(cfg, model, codec, str(work / "posedet.onnx"), decode=decode,
                            work_dir=str(work / "onnx"))
    modes = ("fp32", "fp16")
    tflite_dir = work / "tflite"
    paths = tflite.export_tflite_modes(model, codec, cfg,
                                       {m: str(work / f"{m}.tflite") for m in modes},
                                       raw_outputs=True, work_dir=str(tflite_dir))
    onnx_content = Path(onnx_path).read_bytes()
    return types.SimpleNamespace(
        cfg=cfg, codec=codec, images=images, work=work,
        keras={k: v.numpy() for k, v in outputs.items()},
        poses={k: v.numpy() for k, v in codec.decode(outputs).items()},
        serving=tf.saved_model.load(version).signatures[SIGNATURE_IMAGE],
        tf2onnx_input=tf.saved_model.load(str(work / "onnx" / "saved_model")),
        onnx_content=onnx_content, onnx=run_onnx(onnx_content, {"images": images.astype(np.float32)}),
        tflite={m: Path(p).read_bytes() for m, p in paths.items()},
        deployed={m: tflite.convert_saved_model(str(tflite_dir / "saved_model"), m)
                  for m in modes})


def assert_same_poses(got, want, n, pixels=PIXEL_ATOL, scores=SCORE_ATOL):
    """Poses [P, K, 3] + scores [P] of one image: the first `n` rows pose by pose, rows past `n`
    zero. Pose i is compared with the pose of the reference whose score is within `scores` of
    its own (near-ties may come out of top-k and NMS in either order) and whose keypoints are
    closest: keypoints within `pixels`, keypoint scores within `scores`."""
    (kp, sc), (ref_kp, ref_sc) = got, want
    for i in range(n):
        tied = np.flatnonzero(np.abs(ref_sc[:n] - sc[i]) <= scores)
        assert tied.size, f"pose {i}: score {sc[i]} not in the reference {ref_sc[:n]}"
        gaps = [np.abs(kp[i, :, :2] - ref_kp[j, :, :2]).max() for j in tied]
        j = tied[int(np.argmin(gaps))]
        assert min(gaps) <= pixels, f"pose {i}: keypoints {min(gaps):.3f} px from the reference"
        np.testing.assert_allclose(kp[i, :, 2], ref_kp[j, :, 2], atol=scores)
    np.testing.assert_array_equal(kp[n:], 0.0)
    np.testing.assert_array_equal(sc[n:], 0.0)


def test_reference_decodes_people(exported):
    """The random network gives something to compare: people in every image, fewer than
    max_people (zero rows tested), from the stride-8 candidates' spread logits."""
    n = exported.poses["num_people"]
    assert n.min() >= 2 and n.max() < exported.codec.max_people, n
    assert np.abs(exported.keras["coarse"]).max() > 1.0  # poses spread over stride units


def test_no_intermediate_heatmaps_in_any_exported_graph(exported):
    """The network has heatmaps_s{s} outputs (training-only supervision); no export holds them,
    nor the layers only they need (no convolution writes K channels: the heatmap branch's final
    1x1 conv is the only one)."""
    k = exported.cfg.spec.num_keypoints
    heatmaps = {f"heatmaps_s{s}" for s in exported.codec.strides}
    assert heatmaps <= set(exported.keras)
    raw = {tflite.RAW_PREFIX + name for name in DECODED_FROM}
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    for mode, content in {**exported.tflite,
                          **{f"deployed {m}": c for m, c in exported.deployed.items()}}.items():
        names = [d["name"] for d in
                 interpreter.Interpreter(model_content=content).get_output_details()]
        want = list(POSE_OUTPUTS) + (sorted(raw) if "deployed" not in mode else [])
        assert names == want, mode
        widths = {graph.Tensors(op.Outputs(0)).ShapeAsNumpy()[-1]
                  for name, graph, op in tflite.operators(content, subgraph=0)
                  if name in tflite.CONV_OPS}
        assert k not in widths and 2 * k in widths, (mode, widths)
    assert set(exported.onnx) == set(DECODED_FROM) | set(POSE_OUTPUTS)
    serving = exported.tf2onnx_input.signatures["serving_default"].structured_outputs
    assert set(serving) == set(DECODED_FROM) | set(POSE_OUTPUTS)
    assert set(exported.serving.structured_outputs) == set(POSE_OUTPUTS)


def test_network_outputs_keras_saved_model_tflite_onnx(exported):
    """Raw outputs of Keras, of the SavedModel tf2onnx converts, of onnxruntime (one batch) and
    of the fp32 .tflite (image by image) agree within 1e-4."""
    images = exported.images
    saved = {k: v.numpy() for k, v in exported.tf2onnx_input.signatures["serving_default"](
        images=tf.constant(images, tf.float32)).items()}
    np.testing.assert_array_equal(exported.onnx["num_people"], exported.poses["num_people"])
    for name in DECODED_FROM:
        reference = exported.keras[name]
        for got, where in ((saved[name], "saved_model"), (exported.onnx[name], "onnx")):
            np.testing.assert_allclose(got, reference, rtol=0, atol=RAW_ATOL,
                                       err_msg=f"{where} {name}")
    for b, image in enumerate(images):
        out = run_tflite(exported.tflite["fp32"], image)
        for name in DECODED_FROM:
            np.testing.assert_allclose(value(out[tflite.RAW_PREFIX + name]),
                                       exported.keras[name][b:b + 1], rtol=0, atol=RAW_ATOL,
                                       err_msg=f"tflite fp32 {name}")


def test_decoded_poses_saved_model_tflite_onnx_match_codec_decode(exported):
    """codec.decode of the Keras outputs against the poses of every format: the same number of
    people, keypoints within 0.5 px, scores within 1e-4. The TF Serving signature gets the 64 px
    images themselves (identity letterbox; its keypoints are clipped to the image)."""
    want = exported.poses
    serving = {k: v.numpy() for k, v in exported.serving(
        image=tf.constant(exported.images)).items()}
    clipped = np.concatenate([np.clip(want["keypoints"][..., :2], 0.0, SIZE),
                              want["keypoints"][..., 2:]], axis=-1)
    for b, image in enumerate(exported.images):
        n = int(want["num_people"][b])
        ref = (want["keypoints"][b], want["scores"][b])
        out = run_tflite(exported.tflite["fp32"], image)
        for poses, count, reference, where in (
                ((value(out["keypoints"])[0], value(out["scores"])[0]),
                 value(out["num_people"])[0], ref, "tflite"),
                ((exported.onnx["keypoints"][b], exported.onnx["scores"][b]),
                 exported.onnx["num_people"][b], ref, "onnx"),
                ((serving["keypoints"][b], serving["scores"][b]), serving["num_people"][b],
                 (clipped[b], want["scores"][b]), "saved_model")):
            assert int(count) == n, where
            assert_same_poses(poses, reference, n)


def test_fp16_within_stated_tolerance(exported):
    """fp16 weights (11 significant bits) through the MobileNetV3 + FPN + DCN head: every raw
    output within 1 % of its largest magnitude; poses: the same number of people, at least 90 % of
    the kept poses found within 1 px with a score within 0.02 (a pose whose logit moves past a
    near-tie may swap with another in top-k / NMS), and the .tflite's tail decodes its own fp16
    maps exactly as codec.decode does."""
    found, total = 0, 0
    for b, image in enumerate(exported.images):
        out = run_tflite(exported.tflite["fp16"], image)
        raw = {}
        for name in DECODED_FROM:
            raw[name] = value(out[tflite.RAW_PREFIX + name])
            reference = exported.keras[name][b:b + 1]
            np.testing.assert_allclose(raw[name], reference, rtol=0,
                                       atol=0.01 * np.abs(reference).max(), err_msg=name)
        n = int(exported.poses["num_people"][b])
        assert int(value(out["num_people"])[0]) == n
        kp, sc = value(out["keypoints"])[0], value(out["scores"])[0]
        ref_kp, ref_sc = exported.poses["keypoints"][b], exported.poses["scores"][b]
        for i in range(n):
            gap = np.abs(kp[i, None, :, :2] - ref_kp[:n, :, :2]).max(axis=(1, 2))
            found += bool(np.any((gap <= 1.0) & (np.abs(ref_sc[:n] - sc[i]) <= 0.02)))
        total += n
        own = {k: v.numpy() for k, v in exported.codec.decode(
            {k: tf.constant(v) for k, v in raw.items()}).items()}
        assert int(own["num_people"][0]) == n
        assert_same_poses((kp, sc), (own["keypoints"][0], own["scores"][0]), n,
                          pixels=1e-3, scores=1e-5)
    assert found >= 0.9 * total, (found, total)


def test_deployed_tflite_passes_the_gpu_delegate_check(exported):
    """fp32 and fp16 as deployed (no raw outputs): every op the convolutions depend on is a
    GPU-delegate op, so the delegate's partition (the largest allowed one) is the first, from op 0
    past the last convolution; the decoding (TOPK_V2, the NMS WHILE) runs on the CPU after it."""
    for mode, content in exported.deployed.items():
        result = check_gpu(content)
        assert result.passed, (mode, result.summary())
        first = result.partitions[0]
        assert first["gpu"] and first["first"] == 0 and first["last"] >= result.last_conv, mode
        assert first["ops"] == max(p["ops"] for p in result.partitions if p["gpu"]), mode
        assert {"TOPK_V2", "WHILE"} <= set(tflite.operator_names(content)), mode


def test_parity_benchmark_on_a_checkpoint(tmp_path, data_dir):
    """``python -m tfpose.benchmark parity`` restores a checkpoint and reports every format's
    largest network-output difference from Keras: float32 formats within RAW_ATOL, fp16 within
    1 % of each output's magnitude."""
    from tfpose.benchmark import benchmark_parity

    coco = data_dir / "coco_mini"
    cfg = tiny_posedet_config(f"data.val.annotations={coco / 'test_coco.json'}",
                              f"data.val.images={coco}", run_dir=tmp_path / "run")
    model = tiny_posedet(cfg)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt"))
    result = benchmark_parity(cfg, prefix, images=2)
    assert result["images"] == 2 and result["split"] == "val"
    assert set(result["magnitudes"]) == set(DECODED_FROM)
    for fmt in ("saved_model", "onnx", "tflite_fp32"):
        assert set(result[fmt]) == set(DECODED_FROM), fmt
        assert max(result[fmt].values()) <= RAW_ATOL, (fmt, result[fmt])
    for name, diff in result["tflite_fp16"].items():
        assert diff <= 0.01 * result["magnitudes"][name], (name, result["tflite_fp16"])
