"""TFRecord shards of source elements, and the same elements straight from in-memory records.

Both :func:`read_shards` and :func:`source_from_records` yield the source-element dicts of
tfpose.data.records (``image_bytes``, ``image_id``, ``keypoints`` [N, K, 3], ``boxes`` [N, 4],
``ignore_png``) with identical element specs, so the pipeline does not care which one it gets.

One ``tf.train.Example`` per image holds exactly those fields, keypoints flattened, plus
``num_people`` (N) and ``num_keypoints`` (K):

    image_bytes    bytes    the image file as read from disk
    image_id       int64
    num_people     int64    N
    num_keypoints  int64    K (checked against the spec when reading)
    keypoints      float    N * K * 3
    boxes          float    N * 4
    ignore_png     bytes    PNG of the uint8 ignore mask, or b"" when nothing is ignored
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfpose.data.images import ignore_mask
from tfpose.data.records import DatasetError, ImageRecord
from tfpose.keypoints import get_spec

_FEATURES = {
    "image_bytes": tf.io.FixedLenFeature([], tf.string),
    "image_id": tf.io.FixedLenFeature([], tf.int64),
    "num_people": tf.io.FixedLenFeature([], tf.int64),
    "num_keypoints": tf.io.FixedLenFeature([], tf.int64),
    "keypoints": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
    "boxes": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
    "ignore_png": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def element_spec(num_keypoints: int) -> dict:
    """The tf.data element spec of a source element for K = num_keypoints."""
    return {
        "image_bytes": tf.TensorSpec([], tf.string),
        "image_id": tf.TensorSpec([], tf.int64),
        "keypoints": tf.TensorSpec([None, num_keypoints, 3], tf.float32),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "ignore_png": tf.TensorSpec([], tf.string),
    }


def encode_ignore_png(record: ImageRecord) -> bytes:
    """PNG of :func:`tfpose.data.images.ignore_mask` (values 0/1); b"" if nothing is ignored."""
    import cv2

    mask = ignore_mask(record)
    if mask is None:
        return b""
    ok, data = cv2.imencode(".png", mask)
    if not ok:
        raise DatasetError(f"image {record.image_id} ({record.path}): cannot encode ignore mask")
    return data.tobytes()


def _ignore_pngs(records: Sequence[ImageRecord], num_threads: int = 8) -> list:
    """encode_ignore_png for every record; rasterised only where there are ignore regions."""
    out = [b""] * len(records)
    todo = [i for i, r in enumerate(records) if r.ignore_regions]
    if todo:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(num_threads, len(todo)))) as pool:
            for i, data in zip(todo, pool.map(lambda i: encode_ignore_png(records[i]), todo)):
                out[i] = data
    return out


def _num_keypoints(records: Sequence[ImageRecord]) -> int:
    if not records:
        raise DatasetError("no records: the dataset is empty")
    ks = {int(r.keypoints.shape[1]) for r in records}
    if len(ks) != 1:
        raise DatasetError(f"records have different keypoint counts {sorted(ks)}")
    for r in records:
        if r.keypoints.ndim != 3 or r.keypoints.shape[2] != 3 or \
                r.boxes.shape != (r.keypoints.shape[0], 4):
            raise DatasetError(f"image {r.image_id} ({r.path}): keypoints {r.keypoints.shape} "
                               f"and boxes {r.boxes.shape} do not fit [N, K, 3] / [N, 4]")
    return ks.pop()


def _read_bytes(path: str) -> bytes:
    try:
        with tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb") as f:
            return f.read()
    except (OSError, tf.errors.OpError) as e:
        raise DatasetError(f"{path}: image file cannot be read ({type(e).__name__})") from None


def _example(record: ImageRecord, image_bytes: bytes, ignore_png: bytes) -> bytes:
    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def floats(a):
        return tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(a, np.float32).reshape(-1)))

    def raw(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))

    features = {
        "image_bytes": raw(image_bytes),
        "image_id": ints(record.image_id),
        "num_people": ints(record.keypoints.shape[0]),
        "num_keypoints": ints(record.keypoints.shape[1]),
        "keypoints": floats(record.keypoints),
        "boxes": floats(record.boxes),
        "ignore_png": raw(ignore_png),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def shard_paths(out_prefix: str, num_shards: int) -> list:
    """``{out_prefix}-00000-of-0000N.tfrecord`` ... for N = num_shards."""
    return [f"{out_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def write_shards(records: Sequence[ImageRecord], out_prefix: str, num_shards: int) -> list:
    """Writes records as tf.train.Example shards, each atomically (temp file, then rename).

    Record i goes to shard i % num_shards, so shards hold balanced, deterministic slices.

    Args:
        records: list of ImageRecord (images already validated).
        out_prefix: str, path prefix of the shards; its folder is created.
        num_shards: int >= 1.

    Returns:
        list of the shard paths written, in shard order.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, "
                         f"received: num_shards={num_shards!r}")
    records = list(records)
    _num_keypoints(records)
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"duplicate image id {dup} among the records to write")
    pngs = _ignore_pngs(records)
    remote = "://" in out_prefix
    folder = os.path.dirname(out_prefix) or "."
    tf.io.gfile.makedirs(folder)
    paths = shard_paths(out_prefix, num_shards)
    for shard, path in enumerate(paths):
        if remote:
            tmp = f"{path}.tmp-{os.getpid()}"
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                       dir=folder)
            os.close(fd)
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for i in range(shard, len(records), num_shards):
                    writer.write(_example(records[i], _read_bytes(records[i].path), pngs[i]))
            if remote:
                tf.io.gfile.rename(tmp, path, overwrite=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
            raise
    return paths


def _first_example(path: str) -> Optional[tf.train.Example]:
    """The first Example of an uncompressed TFRecord file, or None when the file is empty."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            head = f.read(12)
            if not head:
                return None
            if len(head) < 12:
                raise DatasetError(f"{path}: not a TFRecord file (truncated record header)")
            (length,) = struct.unpack("<Q", head[:8])
            if length + 16 > tf.io.gfile.stat(path).length:  # length, 2 CRCs, data
                raise DatasetError(f"{path}: not a TFRecord file (record length {length} is "
                                   f"past the end of the file)")
            data = f.read(length)
    except tf.errors.OpError as e:
        raise DatasetError(f"{path}: cannot read TFRecord shard ({type(e).__name__})") from None
    if len(data) != length:
        raise DatasetError(f"{path}: not a TFRecord file (truncated first record)")
    try:
        return tf.train.Example.FromString(data)
    except Exception:  # google.protobuf.message.DecodeError
        raise DatasetError(f"{path}: first record is not a tf.train.Example") from None


def _check_shard(path: str, spec) -> None:
    example = _first_example(path)
    if example is None:
        return
    feature = example.features.feature
    if "num_keypoints" not in feature or "keypoints" not in feature:
        raise DatasetError(f"{path}: not a tfpose shard (no 'num_keypoints'/'keypoints' feature)")
    k = feature["num_keypoints"].int64_list.value[0]
    if k != spec.num_keypoints:
        raise DatasetError(f"{path}: shard holds K = {k} keypoints but spec '{spec.name}' has "
                           f"{spec.num_keypoints}")


def _shard_files(files: list, input_context) -> list:
    if input_context is None or input_context.num_input_pipelines <= 1:
        return files
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) < n:
        raise DatasetError(f"{len(files)} TFRecord shards cannot feed {n} input pipelines; "
                           f"write at least {n} shards")
    return files[i::n]


def read_shards(pattern: str, spec, input_context: Optional[tf.distribute.InputContext] = None,
                num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Source elements from TFRecord shards matching a glob.

    Args:
        pattern: str, glob of shard files (sorted by name).
        spec: KeypointSpec or name; every shard's K must match it.
        input_context: optional tf.distribute.InputContext; pipeline i of n reads files
            i, i + n, ... (needs at least n shards).
        num_parallel_calls: parse parallelism.

    Returns:
        tf.data.Dataset of source-element dicts (see :func:`element_spec`).

    Raises:
        DatasetError: no file matches, fewer shards than input pipelines, or a shard whose first
            record has another K (named). Later records with another K fail inside tf.data with
            an InvalidArgumentError that also names the shard.
    """
    spec = get_spec(spec)
    k = spec.num_keypoints
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise DatasetError(f"{pattern}: no TFRecord shards match")
    files = _shard_files(files, input_context)
    with concurrent.futures.ThreadPoolExecutor(min(16, len(files))) as pool:
        list(pool.map(lambda f: _check_shard(f, spec), files))

    def parse(serialized, filename):
        ex = tf.io.parse_single_example(serialized, _FEATURES)
        check = tf.debugging.Assert(
            tf.equal(ex["num_keypoints"], k),
            ["shard", filename, "holds an example with K =", ex["num_keypoints"],
             f"but spec '{spec.name}' has K = {k}"])
        with tf.control_dependencies([check]):
            n = tf.cast(ex["num_people"], tf.int32)
        return {
            "image_bytes": ex["image_bytes"],
            "image_id": ex["image_id"],
            "keypoints": tf.reshape(ex["keypoints"], [n, k, 3]),
            "boxes": tf.reshape(ex["boxes"], [n, 4]),
            "ignore_png": ex["ignore_png"],
        }

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f).map(lambda s: (s, f)),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(parse, num_parallel_calls=num_parallel_calls)


def source_from_records(records: Sequence[ImageRecord],
                        input_context: Optional[tf.distribute.InputContext] = None,
                        num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Source elements from in-memory records: image files read with tf.io.read_file.

    Ignore-mask PNGs are rasterised here in Python, only for records with ignore regions.

    Args:
        records: list of ImageRecord, all with the same K.
        input_context: optional tf.distribute.InputContext; pipeline i of n gets records
            i, i + n, ...
        num_parallel_calls: parallelism of the file-reading map.

    Returns:
        tf.data.Dataset of source-element dicts (see :func:`element_spec`), in record order.
    """
    records = list(records)
    k = _num_keypoints(records)
    counts = np.array([r.num_people for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    keypoints = tf.constant(np.concatenate(
        [r.keypoints.astype(np.float32) for r in records]).reshape(-1, k, 3))
    boxes = tf.constant(np.concatenate(
        [r.boxes.astype(np.float32) for r in records]).reshape(-1, 4))
    table = {
        "path": tf.constant([r.path for r in records]),
        "image_id": tf.constant([int(r.image_id) for r in records], tf.int64),
        "start": tf.constant(offsets[:-1]),
        "end": tf.constant(offsets[1:]),
        "ignore_png": tf.constant(_ignore_pngs(records), tf.string),
    }
    ds = tf.data.Dataset.from_tensor_slices(table)
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    def load(row):
        return {
            "image_bytes": tf.io.read_file(row["path"]),
            "image_id": row["image_id"],
            "keypoints": keypoints[row["start"]:row["end"]],
            "boxes": boxes[row["start"]:row["end"]],
            "ignore_png": row["ignore_png"],
        }

    return ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
