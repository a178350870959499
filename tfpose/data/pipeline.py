"""The tf.data input pipeline: source elements -> decoded images -> samples -> codec targets.

Stages of :func:`build_dataset`::

    source (records via read_split + validate_images + source_from_records, or TFRecord shards;
    sharded per input pipeline by those functions with ``input_context``) -> enumerate (element
    index i) -> [decode + cache when ``data.cache``] -> shuffle (training; seeded, reshuffled each
    epoch) -> repeat (training) -> enumerate (sample counter t) -> parallel map: decode, sample
    builder (augmentation or letterbox, valid mask) -> split samples -> parallel map: codec.encode ->
    batch -> prefetch

Randomness is stateless and seeded by the config: the sample at position t of the repeated
stream (t = epoch * N + position in the epoch), holding source element i, is augmented with the
seed ``fold_in(fold_in((cfg.seed, worker), t), i)`` (``tf.random.stateless_*``), and the shuffle
is seeded from (cfg.seed, worker). An image gets a new draw every epoch, and a draw never depends
on thread timing. ``data.deterministic`` sets ``tf.data.Options.deterministic``: true fixes the
output order of the parallel maps, so two pipelines with the same config give identical batches;
false lets tf.data hand out whichever element is ready first (faster; each sample's augmentation
is still the same, only the order varies).

Errors: no ``ignore_errors``. Annotation problems raise ``DatasetError`` in the readers before any
tf.data code runs. Image files are checked before the dataset is built: records (read or given)
go through ``tfpose.data.images.validate_images(on_error='skip')``, which drops files TF cannot
decode and logs one warning with their count and the first bad file; TFRecord shards were checked
the same way by ``tfpose.data.convert`` when written. A file that still fails to decode (corrupt
compressed data behind valid headers) stops the pipeline rather than being skipped silently.

Sample builder (the seam between whole-image bottom-up methods and top-down ``rmpe``)::

    sample_builder(element, seed, *, cfg, training) -> samples

``element`` is one decoded image: ``image`` uint8 [H, W, 3], ``image_id`` int64 [],
``keypoints`` float32 [N, K, 3] and ``boxes`` float32 [N, 4] in original pixels,
``ignore_mask`` uint8 [H, W] (nonzero = ignore). ``seed`` is int64 [2] for
``tf.random.stateless_*``; ``training`` is a Python bool. It returns a dict of M >= 0 samples
stacked on a leading axis (M may vary per image; the pipeline slices them apart), TF ops only:

    ``image``       float32 [M, S, S, 3], 0..255.
    ``keypoints``   float32 [M, N', K, 3], (x, y, v) in input pixels, v = 0 outside [0, S)
                    (what ``codec.encode`` receives; N' may differ from N).
    ``valid_mask``  float32 [M, S, S], 1 where the loss applies.
    ``image_id``    int64 [M].
    ``transform``   float32 [M, 2, 3], input -> original pixels (maps predictions back).
    Further keys (e.g. ``image_size``, a top-down box) are passed through to evaluation elements.

:func:`bottom_up_samples` is the default (one sample per image: the whole image). A top-down
builder crops around (jittered) person boxes with the same helpers (``random_affine`` /
``eval_affine`` with ``center`` and ``extent``, ``warp_image``, ``warp_mask``,
``transform_keypoints``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfpose.config import ConfigError
from tfpose.data import augment
from tfpose.data.records import DatasetError

SAMPLE_KEYS = ("image", "keypoints", "valid_mask", "image_id", "transform")


def _parallel_calls(value: int):
    return tf.data.AUTOTUNE if value == -1 else value


def decode_element(element: dict) -> dict:
    """Source element -> decoded element (see the module docstring)."""
    from tfpose.data.images import decode_image_tf

    image = decode_image_tf(element["image_bytes"])
    png = element["ignore_png"]
    hw = tf.shape(image)[:2]
    ignore = tf.cond(
        tf.strings.length(png) > 0,
        lambda: tf.reshape(tf.io.decode_png(png, channels=1), hw),
        lambda: tf.zeros(hw, tf.uint8))
    out = {k: v for k, v in element.items() if k not in ("image_bytes", "ignore_png")}
    out["image"] = image
    out["ignore_mask"] = ignore
    return out


def bottom_up_samples(element: dict, seed, *, cfg, training: bool) -> dict:
    """Default sample builder: the whole image, randomly warped (training) or letterboxed.

    Persons left with no keypoint inside the input are dropped; ``valid_mask`` is
    1 - (warped ignore mask), so the padding outside the image counts as background.
    """
    data, spec = cfg.data, cfg.spec
    size = data.input_size
    image = element["image"]
    hw = tf.shape(image)[:2]
    if training:
        matrix, flipped = augment.random_affine(data.augment, hw, size, seed,
                                                keypoints=element["keypoints"])
    else:
        matrix, flipped = augment.eval_affine(hw, size), tf.constant(False)
    warped = tf.ensure_shape(augment.warp_image(image, matrix, size), [size, size, 3])
    keypoints = augment.transform_keypoints(element["keypoints"], matrix, flipped,
                                            spec.flip_index, size)
    keypoints = tf.boolean_mask(keypoints, tf.reduce_any(keypoints[..., 2] > 0, axis=-1))
    ignore = element["ignore_mask"]
    ignored = tf.cond(tf.reduce_any(ignore > 0),
                      lambda: augment.warp_mask(ignore, matrix, size),
                      lambda: tf.zeros([size, size], tf.float32))
    sample = {
        "image": warped,
        "keypoints": keypoints,
        "valid_mask": 1.0 - ignored,
        "image_id": tf.cast(element["image_id"], tf.int64),
        "transform": augment.invert_affine(matrix)[:2],
        "image_size": tf.cast(hw, tf.int32),
    }
    return {k: v[None] for k, v in sample.items()}


def _source(cfg, split: str, records, input_context):
    """Source elements of a split: its TFRecord shards, or (given or read) checked records."""
    from tfpose.data import tfrecord
    from tfpose.data.images import validate_images

    split_cfg = getattr(cfg.data, split)
    if records is None and split_cfg.tfrecords:
        # tfpose.data.convert validated every image before writing the shards
        return tfrecord.read_shards(split_cfg.tfrecords, cfg.spec, input_context)
    if records is None:
        if not split_cfg.annotations:
            raise ConfigError(f"{cfg.source or '<config>'}: data.{split} has neither "
                              f"'annotations' nor 'tfrecords'")
        from tfpose.data.readers import read_split

        records = read_split(split_cfg, cfg.spec)
    # header checks only (cheap); images TF could not decode are dropped and counted in a warning
    records = validate_images(records, on_error="skip")
    if not records:
        raise DatasetError(f"data.{split}: no decodable image")
    return tfrecord.source_from_records(records, input_context)


def build_dataset(cfg, split: str, codec, training: bool, input_context=None,
                  sample_builder=None, records=None, source=None,
                  repeat: bool = True) -> tf.data.Dataset:
    """The input pipeline of one split.

    Args:
        cfg: Config.
        split: 'train' or 'val' (which ``cfg.data`` split to read).
        codec: a Codec whose ``encode`` makes the targets, or None (evaluation elements then
            carry no targets).
        training: bool; shuffles, repeats forever (unless ``repeat`` is False), augments and
            drops the last partial batch.
        input_context: optional ``tf.distribute.InputContext``; the source is sharded per input
            pipeline and batches hold ``get_per_replica_batch_size(batch)`` samples.
        sample_builder: optional seam (module docstring); default :func:`bottom_up_samples`.
        records: optional list of ImageRecord used instead of reading the split's files.
        source: optional tf.data.Dataset of source elements (``tfpose.data.records``) used instead
            of records or files; it is sharded here with ``input_context``.
        repeat: bool, training only: False gives one pass (known cardinality when the source's
            is known), which is how ``train.steps_per_epoch: 0`` measures an epoch.

    Returns:
        training: ``(images float32 [B, S, S, 3] 0..255, targets dict)`` with
        B = ``data.batch_size`` (the global batch; divided by the replicas with
        ``input_context``). Otherwise dicts with ``image``, ``image_id`` [B], ``transform``
        [B, 2, 3] (input -> original pixels), ``image_size`` [B, 2] (H, W), ``targets`` (when a
        codec is given) and any extra builder keys, B = ``eval.batch_size``; the last batch may
        be smaller.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if training and codec is None:
        raise ValueError("build_dataset(training=True) needs a codec to make the targets")
    data = cfg.data
    builder = sample_builder or bottom_up_samples
    calls = _parallel_calls(data.parallel_calls)
    if source is None:
        source = _source(cfg, split, records, input_context)
    elif input_context is not None:
        source = source.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    worker = input_context.input_pipeline_id if input_context is not None else 0
    aug_key = tf.constant([cfg.seed, worker], tf.int64)

    ds = source.enumerate()
    if data.cache:
        ds = ds.map(lambda i, el: (i, decode_element(el)), num_parallel_calls=calls,
                    deterministic=True).cache()
    if training:
        if data.shuffle_buffer > 1:
            shuffle_seed = int(np.random.SeedSequence([cfg.seed, worker]).generate_state(1)[0])
            ds = ds.shuffle(data.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()

    def build(step, indexed):
        index, element = indexed
        seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(aug_key, step), index)
        if not data.cache:
            element = decode_element(element)
        samples = builder(element, seed, cfg=cfg, training=training)
        missing = [k for k in SAMPLE_KEYS if k not in samples]
        if missing:
            raise ValueError(f"sample_builder returned no {missing} (needs {list(SAMPLE_KEYS)})")
        return samples

    ds = ds.enumerate().map(build, num_parallel_calls=calls)
    # Not .unbatch(): in TF 2.21 it segfaults on a zero-size component such as the keypoints
    # [1, 0, K, 3] of an image with nobody in view; from_tensor_slices handles it.
    ds = ds.flat_map(tf.data.Dataset.from_tensor_slices)
    images = int(source.cardinality())
    if builder is bottom_up_samples and images >= 0 and not (training and repeat):
        ds = ds.apply(tf.data.experimental.assert_cardinality(images))  # one sample per image

    def finish(sample):
        targets = (None if codec is None
                   else codec.encode(sample["keypoints"], sample["valid_mask"]))
        if training:
            return sample["image"], targets
        out = {k: v for k, v in sample.items() if k not in ("keypoints", "valid_mask")}
        if targets is not None:
            out["targets"] = targets
        return out

    ds = ds.map(finish, num_parallel_calls=calls)
    batch = data.batch_size if training else cfg.eval.batch_size
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch)
    ds = ds.batch(batch, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = data.deterministic
    if input_context is not None:
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(options)
