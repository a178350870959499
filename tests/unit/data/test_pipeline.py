"""The tf.data pipeline on the real mini datasets and on a custom 5-keypoint spec."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import AugmentConfig, Config, ConfigError, DataConfig, EvalConfig, SplitConfig
from tfpose.data import augment, synthetic
from tfpose.data.images import ignore_mask
from tfpose.data.pipeline import build_dataset
from tfpose.data.readers import read_split
from tfpose.data.tfrecord import element_spec, source_from_records, write_shards

S = 128
MAX_PEOPLE = 12


class FakeCodec:
    """encode -> the input keypoints padded to MAX_PEOPLE, their count, and the valid mask."""

    def __init__(self, spec):
        self.spec = spec
        self.num_keypoints = spec.num_keypoints

    def encode(self, keypoints, valid_mask):
        n = tf.minimum(tf.shape(keypoints)[0], MAX_PEOPLE)
        padded = tf.pad(keypoints[:n], [[0, MAX_PEOPLE - n], [0, 0], [0, 0]])
        return {"keypoints": tf.ensure_shape(padded, [MAX_PEOPLE, self.num_keypoints, 3]),
                "num_people": n, "valid_mask": valid_mask}


# --- data ------------------------------------------------------------------------------------

DATASETS = {  # name -> (spec, folder, annotation file, format)
    "coco": ("coco", "coco_mini", "test_coco.json", "coco"),
    "crowdpose": ("crowdpose", "crowdpose_mini", "test_crowdpose.json", "coco"),
    "mpii": ("mpii", "mpii_mini", "test_mpii.json", "mpii"),
}


def _split(data_dir, name):
    _, folder, ann, fmt = DATASETS[name]
    return SplitConfig(annotations=str(data_dir / folder / ann), images=str(data_dir / folder),
                       format=fmt)


def _records(data_dir, name):
    return read_split(_split(data_dir, name), DATASETS[name][0])


def _dot_source(rng, count):
    """Flat images with a bright disc on every (pixel-centre) keypoint; image 0 has nobody."""
    elements = []
    for i in range(count):
        h, w = int(rng.integers(80, 160)), int(rng.integers(80, 160))
        image = np.full((h, w, 3), 30, np.uint8)
        n = int(rng.integers(1, 4)) if i else 0
        xy = rng.integers(6, [w - 6, h - 6], (n, 5, 2)) + 0.5
        kpts = np.concatenate([xy, np.full((n, 5, 1), 2.0)], -1).astype(np.float32)
        for x, y, _ in kpts.reshape(-1, 3):
            cv2.circle(image, (int(x), int(y)), 4, (255, 255, 255), -1)
        elements.append({"image_bytes": cv2.imencode(".png", image)[1].tobytes(),
                         "image_id": i, "keypoints": kpts,
                         "boxes": np.zeros((n, 4), np.float32), "ignore_png": b""})
    return tf.data.Dataset.from_generator(lambda: iter(elements),
                                          output_signature=element_spec(5))


def _config(keypoints="coco", deterministic=True, batch_size=2, augment_cfg=None, seed=0):
    data = DataConfig(keypoints=keypoints, train=SplitConfig(), val=SplitConfig(), input_size=S,
                      augment=augment_cfg or AugmentConfig(), batch_size=batch_size,
                      shuffle_buffer=8, parallel_calls=2, deterministic=deterministic)
    return Config(data=data, eval=EvalConfig(batch_size=1), seed=seed)


def _batches(ds, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(count)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)


def _to_index_matrix(to_input):
    """cv2's matrix (integer pixel-centre indices) for a continuous-coordinate transform."""
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return (np.linalg.inv(half) @ to_input @ half)[:2]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_training_batches_on_mini_datasets(data_dir, name):
    cfg = _config(DATASETS[name][0])
    cfg.data.train = _split(data_dir, name)  # the config path: read_split -> source_from_records
    ds = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True)
    k = cfg.spec.num_keypoints
    assert ds.element_spec[0].shape.as_list() == [2, S, S, 3]
    labelled = 0
    for images, targets in _batches(ds, 6):
        assert images.dtype == np.float32 and images.shape == (2, S, S, 3)
        assert 0 <= images.min() and images.max() <= 255 and images.max() > 50
        kp = targets["keypoints"]
        assert kp.shape == (2, MAX_PEOPLE, k, 3)
        vis = kp[..., 2] > 0
        assert np.all((kp[..., :2][vis] >= 0) & (kp[..., :2][vis] < S))
        assert np.all(kp[~vis] == 0) and np.all(np.isin(kp[..., 2], [0, 1, 2]))
        # persons left with no keypoint in view are dropped
        np.testing.assert_array_equal(vis.any(-1).sum(-1), targets["num_people"])
        labelled += vis.sum()
        assert targets["valid_mask"].shape == (2, S, S)
        assert set(np.unique(targets["valid_mask"])) <= {0.0, 1.0}
    assert labelled > 0


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_eval_elements_map_back_to_original_pixels(data_dir, name):
    cfg = _config(DATASETS[name][0])
    records = _records(data_dir, name)
    ds = build_dataset(cfg, "val", FakeCodec(cfg.spec), training=False, records=records)
    batches = _batches(ds, len(records) + 1)
    assert len(batches) == len(records)
    for batch, record in zip(batches, records):
        assert batch["image"].shape == (1, S, S, 3)
        assert batch["image_id"][0] == record.image_id
        np.testing.assert_array_equal(batch["image_size"][0], [record.height, record.width])
        kp = batch["targets"]["keypoints"][0][: batch["targets"]["num_people"][0]]
        src = record.keypoints[record.keypoints[..., 2].max(-1) > 0][:MAX_PEOPLE]
        assert kp.shape[0] == src.shape[0]
        t = batch["transform"][0]
        vis = kp[..., 2] > 0
        np.testing.assert_array_equal(vis, src[..., 2] > 0)  # letterbox keeps every keypoint
        back = kp[..., :2] @ t[:, :2].T + t[:, 2]
        np.testing.assert_allclose(back[vis], src[..., :2][vis], atol=1e-2)
        np.testing.assert_allclose(t[0, 0], max(record.height, record.width) / S, rtol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_valid_mask_is_zero_over_ignored_people(data_dir, training):
    # training uses a flip-only augmentation so that the expected transform is known
    aug = AugmentConfig(rotation=0, scale_min=1, scale_max=1, translation=0, flip=1.0)
    cfg = _config("coco", augment_cfg=aug, batch_size=1)
    cfg.data.shuffle_buffer = 0
    size = cfg.data.input_size = 384  # the ignored persons in coco_mini are small
    records = [r for r in _records(data_dir, "coco") if ignore_mask(r) is not None]
    assert records, "coco_mini has persons with no labelled keypoint"
    ds = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=training, records=records)
    for out, record in zip(_batches(ds, len(records)), records):
        valid = (out[1] if training else out["targets"])["valid_mask"][0]
        to_input = augment.eval_affine((record.height, record.width), size).numpy()
        if training:
            to_input = augment.hflip(size).numpy() @ to_input
        expected = cv2.warpAffine(ignore_mask(record), _to_index_matrix(to_input.astype(float)),
                                  (size, size), flags=cv2.INTER_NEAREST)
        assert expected.sum() > 50
        assert np.mean(valid[expected > 0] == 0) > 0.97
        assert np.mean(valid[expected == 0] == 1) > 0.99


def test_deterministic_pipelines_give_identical_batches(data_dir, tmp_path):
    records = _records(data_dir, "coco")
    cfg = _config("coco", deterministic=True)

    def batches(**kwargs):
        ds = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True, **kwargs)
        return _batches(ds, 3)

    first = batches(records=records)
    cfg.data.cache = True  # decoded once, then from memory: the same stream
    _assert_same(first, batches(records=records))
    cfg.data.cache = False
    # TFRecord shards (record i in shard i % 2, read round-robin) give the same stream
    write_shards(records, str(tmp_path / "coco"), 2)
    cfg.data.train = SplitConfig(tfrecords=str(tmp_path / "coco-*.tfrecord"))
    _assert_same(first, batches())
    cfg.seed = 1
    other = batches(records=records)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_input_context_shards_and_splits_the_batch(data_dir):
    records = _records(data_dir, "coco")
    cfg = _config("coco", batch_size=4)
    cfg.eval.batch_size = 2
    seen = []
    for worker in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                         num_replicas_in_sync=2)
        ds = build_dataset(cfg, "val", None, training=False, records=records,
                           input_context=ctx)
        batches = _batches(ds, 10)
        assert all(b["image"].shape[0] == 1 for b in batches)  # 2 / 2 replicas
        seen.append([i for b in batches for i in b["image_id"]])
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {r.image_id for r in records}
    # an unsharded source dataset is sharded by build_dataset the same way
    ds = build_dataset(cfg, "val", None, training=False, source=source_from_records(records),
                       input_context=ctx)
    assert [i for b in _batches(ds, 10) for i in b["image_id"]] == seen[1]
    train = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True, records=records,
                          input_context=ctx)
    assert train.element_spec[0].shape[0] == 2


def test_custom_five_keypoint_spec_and_flip(tmp_path):
    spec = {"name": "star5", "names": ["top", "left_arm", "right_arm", "left_leg", "right_leg"],
            "sigmas": [0.05] * 5, "flip_pairs": [["left_arm", "right_arm"],
                                                 ["left_leg", "right_leg"]],
            "skeleton": [["top", "left_arm"], ["top", "right_arm"], ["top", "left_leg"],
                         ["top", "right_leg"]]}
    ann = synthetic.generate(str(tmp_path), spec, num_images=4, image_size=96, seed=0)
    aug = AugmentConfig(rotation=0, scale_min=1, scale_max=1, translation=0, flip=1.0)
    cfg = _config(spec, augment_cfg=aug, batch_size=1)
    cfg.data.shuffle_buffer = 0
    cfg.data.train = cfg.data.val = SplitConfig(annotations=ann,
                                                images=str(tmp_path / "images" / "train"))
    flip_index = cfg.spec.flip_index
    train = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True)
    val = build_dataset(cfg, "val", FakeCodec(cfg.spec), training=False)
    n_images = len(read_split(cfg.data.val, cfg.spec))
    checked = 0
    for (image, t), e in zip(_batches(train, n_images), _batches(val, n_images)):
        assert t["keypoints"].shape == (1, MAX_PEOPLE, 5, 3)
        np.testing.assert_allclose(image[0], e["image"][0][:, ::-1], atol=1e-3)
        flipped, plain = t["keypoints"][0], e["targets"]["keypoints"][0]
        want = plain[:, flip_index]
        want[..., 0] = np.where(want[..., 2] > 0, S - want[..., 0], 0)
        np.testing.assert_allclose(flipped, want, atol=1e-3)
        checked += (flipped[..., 2] > 0).sum()
    assert checked > 0


def test_keypoints_stay_on_image_content():
    """Discs drawn at the keypoints end up under the augmented keypoints (5-keypoint spec)."""
    spec = {"names": ["a", "b", "c", "d", "e"], "sigmas": [0.05] * 5, "flip_pairs": [["b", "c"]]}
    cfg = _config(spec, augment_cfg=AugmentConfig(flip=0.5))
    ds = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True,
                       source=_dot_source(np.random.default_rng(0), 4))
    checked, empty = 0, 0
    for images, targets in _batches(ds, 4):
        empty += (targets["num_people"] == 0).sum()
        for b in range(2):
            gray = images[b].mean(-1)
            for x, y, v in targets["keypoints"][b].reshape(-1, 3):
                if v > 0:
                    assert gray[int(y), int(x)] > 128
                    checked += 1
    assert checked > 10 and empty > 0


def test_errors_and_options(data_dir):
    cfg = _config("coco", deterministic=False)
    with pytest.raises(ValueError, match="split"):
        build_dataset(cfg, "test", FakeCodec(cfg.spec), training=False)
    with pytest.raises(ConfigError, match="data.train"):
        build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True)
    with pytest.raises(ValueError, match="codec"):
        build_dataset(cfg, "train", None, training=True, records=_records(data_dir, "coco"))
    ds = build_dataset(cfg, "val", None, training=False, records=_records(data_dir, "coco"))
    assert not ds.options().deterministic
    batch = next(iter(ds))
    assert "targets" not in batch and batch["transform"].shape == (1, 2, 3)


def test_sample_builder_seam_yields_any_number_of_samples(data_dir):
    """A builder may return M samples per image (here one per person, as a top-down one would)."""
    from tfpose.data.pipeline import bottom_up_samples

    def per_person(element, seed, *, cfg, training):
        one = bottom_up_samples(element, seed, cfg=cfg, training=training)
        m = tf.shape(element["keypoints"])[0]
        out = {k: tf.repeat(v, m, axis=0) for k, v in one.items()}
        out["box"] = element["boxes"]
        return out

    records = _records(data_dir, "coco")
    cfg = _config("coco")
    ds = build_dataset(cfg, "val", FakeCodec(cfg.spec), training=False, records=records,
                       sample_builder=per_person)
    batches = _batches(ds, 100)
    assert len(batches) == sum(r.num_people for r in records)
    np.testing.assert_allclose(np.concatenate([b["box"] for b in batches]),
                               np.concatenate([r.boxes for r in records]))


def test_real_codec_targets_match_its_signature(data_dir):
    from tfpose.codecs.ae import AECodec, AEConfig

    cfg = _config("coco")
    codec = AECodec(AEConfig(strides=[4]), cfg.spec, S)
    ds = build_dataset(cfg, "train", codec, training=True, records=_records(data_dir, "coco"))
    images, targets = next(iter(ds))
    signature = codec.target_signature()
    assert set(targets) == set(signature)
    for name, spec in signature.items():
        assert targets[name].shape == [2] + spec.shape.as_list()
        assert targets[name].dtype == spec.dtype


@pytest.mark.parametrize("training", [True, False])
def test_one_pass_has_the_split_size_as_cardinality(data_dir, training):
    """train.steps_per_epoch: 0 reads the epoch length from this cardinality."""
    cfg = _config("crowdpose", batch_size=2)
    cfg.data.train = _split(data_dir, "crowdpose")
    images = len(_records(data_dir, "crowdpose"))
    ds = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=training, repeat=False)
    expected = images // 2 if training else images  # eval batches hold eval.batch_size = 1
    assert int(ds.cardinality()) == expected == len(_batches(ds, 100))
    repeating = build_dataset(cfg, "train", FakeCodec(cfg.spec), training=True)
    assert int(repeating.cardinality()) < 0  # endless: no epoch length to read
