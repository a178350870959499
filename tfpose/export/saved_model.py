"""SavedModel export in the TF Serving layout: letterbox, network and decoding in one graph.

Layout written by :func:`export_saved_model` (``DIR/<model_name>`` is a TF Serving
``base_path``; each version is a folder named by an integer)::

    DIR/<model_name>/<version>/saved_model.pb
    DIR/<model_name>/<version>/variables/               (empty: the weights are constants)
    DIR/<model_name>/<version>/assets.extra/tfpose.json keypoint spec and I/O description

The SavedModel is written by ``keras.export.ExportArchive`` (DESIGN.md section 1) around one
frozen graph of the network and ``codec.decode`` (:func:`decode_function`; decode is the only
decoding path), run with the config's ``eval.flip_test`` / ``eval.scales`` as ``predict`` does.
Two signatures:

* ``serving_default``: input ``image`` uint8 [B, H, W, 3], RGB, any H and W (B = 1 for one
  image; the images of a batch share their size). The signature's dtype refuses float input.
* ``image_bytes``: input ``image_bytes`` string [B], encoded JPEG / PNG / BMP / GIF files (the
  TF Serving REST API takes them as ``{"b64": "..."}``) of any sizes, decoded to 3 channels as
  the data pipeline does (tfpose.data.images.decode_image_tf: grayscale replicated, alpha
  dropped).

Each image is letterboxed into the S x S input inside the graph exactly as the eval pipeline and
``predict`` do (tfpose.data.augment.eval_affine + warp_image: the longer side fitted to S, aspect
kept, centred, zero padding). Outputs (P = ``codec.max_people``, K keypoints of the spec):

* ``keypoints`` float32 [B, P, K, 3]: (x, y, score) in the original image's pixels (continuous
  coordinates, pixel centres at integer + 0.5: tfpose.codecs.base), x clipped to [0, W] and y to
  [0, H], so a keypoint regressed into the letterbox padding lands on the image border;
* ``scores`` float32 [B, P], decreasing; ``num_people`` int32 [B];
* rows past ``num_people`` are zero.

``assets.extra/tfpose.json`` (:func:`export_metadata`) describes the keypoints (names, flip pairs
and flip index, skeleton, OKS sigmas), the input size, ``max_people``, the signatures and the
outputs, so a client can name and draw keypoints without tfpose; TF Serving ignores the folder.
"""

from __future__ import annotations

import collections.abc
import json
import os
import re
import shutil
import uuid

import keras
import tensorflow as tf
# No public TF 2 API freezes a ConcreteFunction; tf2onnx and the TFLite converter use this one.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfpose.config import ConfigError
from tfpose.fileio import atomic_write, fsync_path, fsync_tree
from tfpose.layers.sampling import portable_sampling

METADATA_FILE = os.path.join("assets.extra", "tfpose.json")
METADATA_VERSION = 1  # bumped when a metadata key changes meaning
SIGNATURE_IMAGE = "serving_default"
SIGNATURE_BYTES = "image_bytes"
OUTPUT_KEYS = ("keypoints", "scores", "num_people")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExportError(RuntimeError):
    """An export that cannot be written, or an exported model that does not run as it should."""


def export_metadata(cfg, codec, **extra) -> dict:
    """JSON-ready description of an exported model: keypoint spec, input size, outputs.

    Args:
        cfg: Config.
        codec: the config's codec.
        **extra: further keys, replacing the defaults (e.g. ``signatures``, ``format``).
    """
    spec = codec.spec
    out = {
        "format_version": METADATA_VERSION,
        "method": cfg.method,
        "codec": codec.name,
        "input_size": int(codec.input_size),
        "max_people": int(codec.max_people),
        "keypoints": {**spec.to_dict(), "flip_index": [int(i) for i in spec.flip_index]},
        "pixel_convention": "continuous coordinates, pixel centres at integer + 0.5",
        "letterbox": "longer side fitted to input_size, aspect ratio kept, image centred, "
                     "zero padding",
        "flip_test": bool(cfg.eval.flip_test),
        "scales": [float(s) for s in cfg.eval.scales],
        "outputs": {
            "keypoints": "float32 [B, max_people, K, 3] (x, y, score); rows past num_people "
                         "are zero",
            "scores": "float32 [B, max_people], decreasing",
            "num_people": "int32 [B]",
        },
    }
    out.update(extra)
    return out


class ReadKeys(collections.abc.Mapping):
    """Read-only view of a dict that records the keys read through it (``[key]``, ``get``,
    ``items``; membership tests do not count): which network outputs ``codec.decode`` uses.

    Args:
        data: dict, the wrapped outputs.
    """

    def __init__(self, data):
        self._data = data
        self.keys_read = set()

    def __getitem__(self, key):
        value = self._data[key]
        self.keys_read.add(key)
        return value

    def __contains__(self, key):
        return key in self._data

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


def decode_function(cfg, model, codec, flip_test: bool | None = None, scales=None,
                    batch_size: int | None = None):
    """The network and ``codec.decode`` traced once and frozen (weights as constants).

    Every exported graph calls it: both signatures here, the ONNX graph and the .tflite
    (tfpose.export.tflite). Tracing the network is most of an export's time, and a
    ``tf.function`` would be traced again in the save context; a frozen graph also saves and
    loads several times faster than the thousands of variables of an HRNet. Learned decoding
    parts (e.g. the dekr pose scorer) are frozen in as well.

    Args:
        cfg: Config.
        model: keras.Model (or any callable ``model(images, training=False) -> dict``), float32
            RGB 0..255 [B, S, S, 3] -> network outputs.
        codec: the config's codec, assets loaded.
        flip_test: bool, the test-time flip (tfpose.inference.network_outputs); None: the
            config's ``eval.flip_test``.
        scales: sequence of float, the test-time scales; None: the config's ``eval.scales``.
        batch_size: int, a static batch size (TFLite takes [1, S, S, 3]); None: any.

    Returns:
        callable (images float32 [B, S, S, 3], letterboxed RGB 0..255) -> dict with the network
        outputs ``codec.decode`` reads (under their own names; training-only outputs such as
        intermediate heatmaps are left out, so the TFLite and ONNX converters drop the layers
        only they feed) and the decoded poses ``keypoints`` [B, P, K, 3] (input
        pixels), ``scores`` [B, P], ``num_people`` [B].
    """
    from tfpose.inference import network_outputs, scaled_sizes

    size = int(codec.input_size)
    flip_test = bool(cfg.eval.flip_test if flip_test is None else flip_test)
    scales = tuple(float(s) for s in (cfg.eval.scales if scales is None else scales))
    scaled_sizes(size, scales)  # bad scales: ConfigError before tracing

    def run(images):
        raw = network_outputs(model, codec, images, flip_test, scales)
        clash = sorted(set(raw) & set(OUTPUT_KEYS))
        if clash:
            raise ExportError(f"network outputs {clash} have the names of decoded outputs")
        read = ReadKeys(raw)
        poses = codec.decode(read)
        # outputs decode never reads (training-only maps) leave the graph with their layers
        return {**{k: v for k, v in raw.items() if k in read.keys_read}, **poses}

    spec = tf.TensorSpec([batch_size, size, size, 3], tf.float32, name="images")
    with portable_sampling():  # builtin ops for TFLite, ONNX and TF Serving (no XLA cluster)
        traced = tf.function(run, input_signature=[spec], autograph=False).get_concrete_function()
    # lower_control_flow=False keeps functional While ops (the pose-NMS loop) for tf2onnx/TFLite
    frozen = convert_variables_to_constants_v2(traced, lower_control_flow=False)
    structure = traced.structured_outputs

    def call(images):
        return tf.nest.pack_sequence_as(structure, frozen(images))

    return call


def letterbox_frame(image_hw, input_size: int):
    """Letterbox geometry of an H x W image (tfpose.data.augment.eval_affine), TF ops.

    Returns:
        (float32 [3, 3] original -> input, float32 [2, 3] input -> original, float32 [2] (W, H)).
    """
    from tfpose.data import augment

    matrix = augment.eval_affine(image_hw, input_size)
    wh = tf.cast(tf.reverse(image_hw, [0]), tf.float32)
    return matrix, augment.invert_affine(matrix)[:2], wh


def letterbox(image, input_size: int):
    """One uint8 [H, W, 3] image into the S x S input (bilinear, zero padding), TF ops.

    Returns:
        (float32 [S, S, 3] 0..255, float32 [2, 3] input -> original, float32 [2] (W, H)).
    """
    from tfpose.data import augment

    matrix, inverse, wh = letterbox_frame(tf.shape(image)[:2], input_size)
    warped = augment.warp_image(image, matrix, input_size)
    return tf.ensure_shape(warped, [input_size, input_size, 3]), inverse, wh


def to_original(poses: dict, transforms, sizes) -> dict:
    """Decoded poses in input pixels -> original pixels, clipped to each image, TF ops.

    Args:
        poses: ``codec.decode`` output (keypoints [B, P, K, 3], scores [B, P], num_people [B]).
        transforms: float32 [B, 2, 3], input -> original pixels.
        sizes: float32 [B, 2], (W, H) of each original image.

    Returns:
        dict keypoints, scores, num_people; keypoint (x, y) mapped and clipped to [0, W] x [0, H],
        scores kept, rows past ``num_people`` zero.
    """
    kpts = poses["keypoints"]
    xy = (tf.einsum("bpkj,bij->bpki", kpts[..., :2], transforms[:, :, :2])
          + transforms[:, None, None, :, 2])
    xy = tf.clip_by_value(xy, 0.0, sizes[:, None, None, :])
    live = tf.range(tf.shape(kpts)[1])[None, :] < poses["num_people"][:, None]
    kpts = tf.where(live[:, :, None, None], tf.concat([xy, kpts[..., 2:]], axis=-1), 0.0)
    return {"keypoints": kpts, "scores": poses["scores"], "num_people": poses["num_people"]}


def serving_functions(decode, input_size: int) -> dict:
    """The two signatures of the module docstring around a :func:`decode_function`.

    Returns:
        dict signature name -> (fn, [tf.TensorSpec]) for ``ExportArchive.add_endpoint``.
    """
    from tfpose.data import augment
    from tfpose.data.images import decode_image_tf

    size = int(input_size)

    def poses(warped, transforms, sizes):
        return to_original(decode(warped), transforms, sizes)  # network outputs dropped

    def serve_image(image):
        batch = tf.shape(image)[0]
        matrix, inverse, wh = letterbox_frame(tf.shape(image)[1:3], size)  # one size per batch
        warped = tf.map_fn(lambda im: augment.warp_image(im, matrix, size), image,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return poses(warped, tf.tile(inverse[None], [batch, 1, 1]), tf.tile(wh[None], [batch, 1]))

    def serve_bytes(image_bytes):
        warped, transforms, sizes = tf.map_fn(
            lambda data: letterbox(decode_image_tf(data), size), image_bytes,
            fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32),
                                 tf.TensorSpec([2, 3], tf.float32),
                                 tf.TensorSpec([2], tf.float32)))
        return poses(warped, transforms, sizes)

    return {
        SIGNATURE_IMAGE: (serve_image,
                          [tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")]),
        SIGNATURE_BYTES: (serve_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")]),
    }


def write_archive(path: str, endpoints: dict, resources=()) -> str:
    """Writes a SavedModel with ``keras.export.ExportArchive`` (DESIGN.md section 1).

    Args:
        path: str, the SavedModel folder (must not exist).
        endpoints: dict name -> (fn, input signature); the first one is also
            ``serving_default`` unless an endpoint has that name.
        resources: keras models / layers to track (the variables the functions use are saved
            anyway; tracked ones are also listed by the loaded object's ``variables``).

    Returns:
        str, path.
    """
    archive = keras.export.ExportArchive()
    with portable_sampling():  # as decode_function: no XLA cluster in exported graphs
        for resource in resources:
            if resource is not None:
                archive.track(resource)
        for name, (fn, signature) in endpoints.items():
            archive.add_endpoint(name=name, fn=fn, input_signature=signature)
        archive.write_out(path, verbose=False)
    return path


def versions(base: str) -> list:
    """Sorted integer versions present under a TF Serving model base path."""
    if not os.path.isdir(base):
        return []
    return sorted(int(n) for n in os.listdir(base)
                  if n.isdigit() and os.path.isdir(os.path.join(base, n)))


def check_name(model_name) -> str:
    """The model name (a folder and the TF Serving model name); ConfigError when unusable."""
    if not isinstance(model_name, str) or not _NAME.match(model_name):
        raise ConfigError(f"--model_name {model_name!r}: use letters, digits, '.', '_' and '-', "
                          "starting with a letter or digit")
    return model_name


def version_dir(out_dir: str, model_name: str, version=None) -> str:
    """The version folder ``out_dir/<model_name>/<version>`` an export would write.

    Args:
        version: int >= 1, or None for one more than the newest version there (1 for none).

    Raises:
        ConfigError: a bad name or version, or an existing version folder (versions are never
        overwritten).
    """
    base = os.path.join(out_dir, check_name(model_name))
    present = versions(base)
    if version is None:
        version = (present[-1] + 1) if present else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"--version {version!r} must be an integer >= 1")
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise ConfigError(f"{final} already exists and versions are never overwritten; use "
                          f"--version {max(present + [version]) + 1}")
    return final


def export_saved_model(cfg, model, codec, out_dir: str, model_name: str, version=None,
                       decode=None) -> str:
    """Writes ``out_dir/<model_name>/<version>/`` (module docstring), atomically.

    The SavedModel goes to a hidden temporary folder beside the version folder (TF Serving only
    loads integer-named folders), is fsynced and then renamed into place, so a served base path
    never shows a half-written version.

    Args:
        cfg: Config (``eval.flip_test`` / ``eval.scales`` are baked into the graph).
        model: keras.Model of the method, float32 RGB 0..255 [B, S, S, 3] -> dict of outputs.
        codec: the config's codec, assets loaded (``tfpose.inference.restore_for_inference``).
        out_dir: str, the export folder.
        model_name: str, the TF Serving model name (a folder name).
        version: int >= 1, or None for one more than the newest version there (1 for none).
        decode: optional :func:`decode_function` of (cfg, model, codec) already built (the CLI
            shares one with the ONNX export).

    Returns:
        str, the version folder written.

    Raises:
        ConfigError: see :func:`version_dir`.
    """
    final = version_dir(out_dir, model_name, version)
    base, version = os.path.dirname(final), int(os.path.basename(final))
    decode = decode or decode_function(cfg, model, codec)
    os.makedirs(base, exist_ok=True)
    tmp = os.path.join(base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    try:
        write_archive(tmp, serving_functions(decode, codec.input_size))
        meta = export_metadata(cfg, codec, format="saved_model", signatures={
            SIGNATURE_IMAGE: {"image": "uint8 [B, H, W, 3] RGB, any H and W"},
            SIGNATURE_BYTES: {"image_bytes": "string [B], encoded JPEG/PNG/BMP/GIF files"}})
        atomic_write(os.path.join(tmp, METADATA_FILE),
                     json.dumps(meta, indent=2).encode("utf-8"))
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_path(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_metadata(path: str) -> dict:
    """The ``assets.extra/tfpose.json`` of an exported version folder `path`."""
    with open(os.path.join(path, METADATA_FILE), encoding="utf-8") as f:
        return json.load(f)
