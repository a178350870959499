"""TFRecord shards vs in-memory records, sharding, atomic writes, split reading and the CLI."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfpose.config import SplitConfig
from tfpose.data.coco import read_coco
from tfpose.data.convert import convert
from tfpose.data.images import ignore_mask
from tfpose.data.readers import read_split
from tfpose.data import tfrecord
from tfpose.data.records import DatasetError
from tfpose.data.tfrecord import (element_spec, read_shards, shard_paths, source_from_records,
                                  write_shards)


@pytest.fixture(scope="module")
def coco_records(data_dir):
    return read_coco(str(data_dir / "coco_mini" / "test_coco.json"),
                     str(data_dir / "coco_mini"), "coco")


def _as_numpy(ds):
    return [{k: v.numpy() for k, v in e.items()} for e in ds]


def _context(i, n):
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i)


def test_round_trip_equals_source_from_records(tmp_path, coco_records):
    paths = write_shards(coco_records, str(tmp_path / "out" / "coco"), 2)
    assert paths == shard_paths(str(tmp_path / "out" / "coco"), 2)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths)
    from_memory = source_from_records(coco_records)
    from_shards = read_shards(str(tmp_path / "out" / "coco-*.tfrecord"), "coco")
    assert from_memory.element_spec == from_shards.element_spec == element_spec(17)
    memory = sorted(_as_numpy(from_memory), key=lambda e: e["image_id"])
    shards = sorted(_as_numpy(from_shards), key=lambda e: e["image_id"])
    assert [e["image_id"] for e in memory] == sorted(r.image_id for r in coco_records)
    assert len(shards) == len(memory) == 4
    by_id = {r.image_id: r for r in coco_records}
    num_masks = 0
    for a, b in zip(memory, shards):
        record = by_id[a["image_id"]]
        assert a["image_id"] == b["image_id"]
        assert a["image_bytes"] == b["image_bytes"] == open(record.path, "rb").read()
        np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
        np.testing.assert_array_equal(a["keypoints"], record.keypoints)
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["boxes"], record.boxes)
        expected = ignore_mask(record)
        if expected is None:
            assert a["ignore_png"] == b["ignore_png"] == b""
            continue
        num_masks += 1
        for png in (a["ignore_png"], b["ignore_png"]):
            decoded = tf.io.decode_png(png, channels=1).numpy()[..., 0]
            np.testing.assert_array_equal(decoded, expected)
            np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), 0), expected)
    assert num_masks == 2


def test_sharding_by_file_and_by_element(tmp_path, coco_records):
    write_shards(coco_records, str(tmp_path / "coco"), 3)
    pattern = str(tmp_path / "coco-*")
    all_ids = sorted(r.image_id for r in coco_records)
    for make in (lambda c: read_shards(pattern, "coco", c),
                 lambda c: source_from_records(coco_records, c)):
        parts = [[int(e["image_id"]) for e in make(_context(i, 2))] for i in range(2)]
        assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == all_ids
    with pytest.raises(DatasetError, match="3 TFRecord shards cannot feed 4 input pipelines"):
        read_shards(pattern, "coco", _context(0, 4))


def test_k_mismatch_names_the_shard(tmp_path, coco_records):
    paths = write_shards(coco_records, str(tmp_path / "coco"), 2)
    with pytest.raises(DatasetError, match=rf"{paths[0]}: shard holds K = 17 keypoints but "
                                           rf"spec 'crowdpose' has 14"):
        read_shards(str(tmp_path / "coco-*"), "crowdpose")
    with pytest.raises(DatasetError, match="no TFRecord shards match"):
        read_shards(str(tmp_path / "none-*"), "coco")
    # A shard whose *later* record has another K fails inside tf.data, naming the shard.
    mixed = str(tmp_path / "mixed-00000-of-00001.tfrecord")
    short = dataclasses.replace(coco_records[1], keypoints=coco_records[1].keypoints[:, :14])
    with tf.io.TFRecordWriter(mixed) as writer:
        writer.write(tfrecord._example(coco_records[0], b"jpeg", b""))
        writer.write(tfrecord._example(short, b"jpeg", b""))
    with pytest.raises(tf.errors.InvalidArgumentError, match="mixed-00000-of-00001.tfrecord"):
        list(read_shards(mixed, "coco"))
    bogus = tmp_path / "bogus-00000-of-00001.tfrecord"
    bogus.write_bytes(b"definitely not a record")
    with pytest.raises(DatasetError, match="bogus-00000-of-00001.tfrecord: not a TFRecord"):
        read_shards(str(bogus), "coco")


def test_failed_write_leaves_no_partial_shard(tmp_path, coco_records):
    broken = list(coco_records)
    broken[1] = dataclasses.replace(broken[1], path=str(tmp_path / "gone.jpg"))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="gone.jpg: image file cannot be read"):
        write_shards(broken, str(out / "coco"), 2)
    # Shard 0 (records 0, 2) was complete and is kept; shard 1 failed: neither it nor a temp file.
    assert sorted(os.listdir(out)) == ["coco-00000-of-00002.tfrecord"]
    with pytest.raises(DatasetError, match="duplicate image id"):
        write_shards(coco_records + coco_records[:1], str(out / "dup"), 1)
    with pytest.raises(DatasetError, match="empty"):
        write_shards([], str(out / "empty"), 1)


def test_read_split_dispatch(data_dir, coco_records):
    coco = read_split(SplitConfig(annotations=str(data_dir / "coco_mini" / "test_coco.json")),
                      "coco")
    assert [r.image_id for r in coco] == [r.image_id for r in coco_records]
    mpii = read_split(SplitConfig(annotations=str(data_dir / "mpii_mini" / "test_mpii.json"),
                                  images=str(data_dir / "mpii_mini"), format="mpii"), "mpii")
    assert len(mpii) == 5
    with pytest.raises(DatasetError, match="no 'annotations' file"):
        read_split(SplitConfig(tfrecords="x-*"), "coco")


def _config(tmp_path, data_dir, annotations):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "data:\n  keypoints: coco\n"
        f"  train: {{annotations: '{annotations}', images: '{data_dir / 'coco_mini'}'}}\n"
        "codec: {type: ae}\n")
    return str(path)


def test_convert_skips_bad_images_with_counted_warning(tmp_path, data_dir, caplog):
    raw = json.loads((data_dir / "coco_mini" / "test_coco.json").read_text())
    raw["images"][2]["file_name"] = str(tmp_path / "truncated.jpg")  # absolute path wins the join
    data = (data_dir / "coco_mini" / "000000196141.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps(raw))
    config = _config(tmp_path, data_dir, annotations)
    with caplog.at_level(logging.WARNING):
        paths = convert(config, "train", str(tmp_path / "shards" / "train"), 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 of 4" in warnings[0] and "truncated.jpg" in warnings[0]
    ids = sorted(int(e["image_id"]) for e in read_shards(str(tmp_path / "shards" / "train-*"),
                                                         "coco"))
    assert len(paths) == 2 and ids == sorted([785, 40083, 197388])


def test_convert_cli(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, "unused.json")
    out = str(tmp_path / "cli" / "val")
    result = subprocess.run(
        [sys.executable, "-m", "tfpose.data.convert", "--config", config, "--split", "train",
         "--out", out, "--shards", "1",
         "--set", f"data.train.annotations={data_dir / 'coco_mini' / 'test_coco.json'}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == shard_paths(out, 1)
    assert sum(1 for _ in tf.data.TFRecordDataset(shard_paths(out, 1))) == 4
    bad = subprocess.run(
        [sys.executable, "-m", "tfpose.data.convert", "--config", config, "--out", out],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: unused.json: annotation file not found"
    assert "Traceback" not in bad.stderr
