"""tfpose.export.onnx: tf2onnx conversion of the network + codec.decode, checked with onnxruntime.

The model is export_cases' tiny dekr (configs/quickstart.yaml's heads on a two-conv stem, 64 px,
seeded random weights with scaled final convolutions), exported once per module; the SavedModel
tf2onnx converted is kept and compared too. Inputs are the real coco_mini images letterboxed as
``predict`` does.
"""

import types

import numpy as np
import pytest
import tensorflow as tf
from export_cases import SIZE, tiny_config, tiny_dekr

from tfpose.config import ConfigError
from tfpose.export import onnx as onnx_export
from tfpose.export.saved_model import ExportError, decode_function, write_archive
from tfpose.inference import outputs_function
from tfpose.predict import letterbox, read_image
from tfpose.registry import build_codec

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

NETWORK_OUTPUTS = ("heatmaps", "center", "offsets")
POSE_OUTPUTS = ("keypoints", "scores", "num_people")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("onnx")
    cfg = tiny_config(run_dir=work / "run")
    model = tiny_dekr(cfg)
    codec = build_codec(cfg)
    decode = decode_function(cfg, model, codec)
    path = onnx_export.export_onnx(cfg, model, codec, str(work / "tiny.onnx"), decode=decode,
                                   work_dir=str(work))
    images = np.stack([letterbox(read_image(str(p)), SIZE)[0]
                       for p in sorted((data_dir / "coco_mini").glob("*.jpg"))])
    outputs = outputs_function(cfg, model, codec)(images)  # with the config's flip / scales
    keras_out = {k: v.numpy() for k, v in outputs.items()}
    poses = {k: v.numpy() for k, v in codec.decode(outputs).items()}
    content = open(path, "rb").read()
    return types.SimpleNamespace(
        cfg=cfg, codec=codec, decode=decode, path=path, content=content, images=images,
        keras=keras_out, poses=poses, onnx=onnx_export.run_onnx(content, {"images": images}),
        saved=tf.saved_model.load(str(work / "saved_model")).signatures["serving_default"])


def test_graph_inputs_outputs_opset_and_metadata(exported):
    model = onnx.load(exported.path)
    onnx.checker.check_model(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] >= onnx_export.MIN_OPSET
    (image,) = model.graph.input
    dims = [d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim]
    assert image.name == "images" and dims[1:] == [SIZE, SIZE, 3] and isinstance(dims[0], str)
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sorted(o.name for o in model.graph.output) == sorted(NETWORK_OUTPUTS + POSE_OUTPUTS)
    meta = onnx_export.read_metadata(exported.path)
    assert meta["keypoints"]["names"] == list(exported.cfg.spec.names)
    assert (meta["format"], meta["input_size"], meta["input"]["name"]) == ("onnx", SIZE, "images")


def test_network_outputs_keras_saved_model_onnx(exported):
    """The network outputs of Keras (with the config's flip test and scales), of the SavedModel
    tf2onnx reads and of onnxruntime agree within 1e-4 on four real images in one batch."""
    saved = {k: v.numpy() for k, v in exported.saved(images=tf.constant(exported.images)).items()}
    for name in NETWORK_OUTPUTS:
        reference = exported.keras[name]
        assert np.abs(reference).max() > 0.1  # maps with something to compare
        np.testing.assert_allclose(saved[name], reference, rtol=0, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(exported.onnx[name], reference, rtol=0, atol=1e-4,
                                   err_msg=name)


def test_decoded_poses_match_codec_decode(exported):
    """ONNX poses (input pixels) against codec.decode of the Keras outputs: the same people,
    keypoints within 0.5 px, scores within 1e-4, zero rows past num_people."""
    got, want = exported.onnx, exported.poses
    np.testing.assert_array_equal(got["num_people"], want["num_people"])
    assert got["num_people"].dtype == np.int32 and want["num_people"].sum() >= 4
    for b, n in enumerate(want["num_people"]):
        np.testing.assert_allclose(got["keypoints"][b, :n, :, :2],
                                   want["keypoints"][b, :n, :, :2], atol=0.5)
        np.testing.assert_allclose(got["keypoints"][b, :n, :, 2], want["keypoints"][b, :n, :, 2],
                                   atol=1e-4)
        np.testing.assert_allclose(got["scores"][b], want["scores"][b], atol=1e-4)
        np.testing.assert_array_equal(got["keypoints"][b, n:], 0.0)


def test_batch_size_is_dynamic(exported):
    one = onnx_export.run_onnx(exported.content, {"images": exported.images[2:3]})
    for name in NETWORK_OUTPUTS + POSE_OUTPUTS:
        assert one[name].shape[0] == 1
        np.testing.assert_allclose(one[name][0], exported.onnx[name][2], atol=1e-5,
                                   err_msg=name)


def test_unconvertible_op_fails_the_export(tmp_path):
    """tf2onnx logs an op it cannot convert and would still write a model; convert raises and
    names it (the projective warp of the letterbox, why the letterbox is not in the graph)."""
    from tfpose.data import augment

    def warp(images):
        matrix = augment.eval_affine(tf.constant([SIZE // 2, SIZE]), SIZE)
        return {"warped": tf.map_fn(lambda im: augment.warp_image(im, matrix, SIZE), images)}

    spec = [tf.TensorSpec([None, SIZE // 2, SIZE, 3], tf.float32, name="images")]
    saved = write_archive(str(tmp_path / "warp"), {"serving_default": (warp, spec)})
    with pytest.raises(ExportError, match="ImageProjectiveTransformV3"):
        onnx_export.convert(saved)


def test_verify_rejects_a_model_that_disagrees(exported):
    """A converted model whose numbers drift from TensorFlow (here one weight changed) is
    refused before it is written."""
    from onnx import numpy_helper

    model = onnx.load(exported.path)
    weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    changed = numpy_helper.to_array(weights) + np.float32(0.5)
    weights.CopyFrom(numpy_helper.from_array(changed, weights.name))
    onnx_export.verify(exported.content, exported.decode, exported.images[:1])  # the original
    with pytest.raises(ExportError, match="differs from TensorFlow"):
        onnx_export.verify(model.SerializeToString(), exported.decode, exported.images[:1])


def test_opset_below_13_is_refused(exported):
    with pytest.raises(ConfigError, match="opset 11"):
        onnx_export.export_onnx(exported.cfg, None, exported.codec, "unused.onnx", opset=11)
