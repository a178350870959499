"""COCO-format reader on the real mini sets and on COCO-style variants built from them."""

import copy
import json
import logging
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tfpose.data.coco import read_coco
from tfpose.data.images import check_image, ignore_mask
from tfpose.data.records import DatasetError
from tfpose.keypoints import get_spec


@pytest.fixture(scope="module")
def coco(data_dir):
    path = data_dir / "coco_mini" / "test_coco.json"
    return path, json.loads(path.read_text())


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_mini(coco, data_dir):
    path, raw = coco
    records = read_coco(str(path), str(data_dir / "coco_mini"), "coco")
    assert [r.image_id for r in records] == [im["id"] for im in raw["images"]]
    assert len(raw["annotations"]) == 14
    total_people = total_ignored = 0
    for record, im in zip(records, raw["images"]):
        anns = [a for a in raw["annotations"] if a["image_id"] == im["id"]]
        people = [a for a in anns if a["num_keypoints"] > 0 and not a["iscrowd"]]
        ignored = [a for a in anns if a["num_keypoints"] == 0 or a["iscrowd"]]
        assert record.path == str(data_dir / "coco_mini" / im["file_name"])
        assert (record.height, record.width) == (im["height"], im["width"])
        assert record.keypoints.dtype == np.float32
        assert record.keypoints.shape == (len(people), 17, 3)
        np.testing.assert_allclose(
            record.keypoints, np.array([a["keypoints"] for a in people]).reshape(-1, 17, 3))
        np.testing.assert_allclose(record.boxes,
                                   np.array([a["bbox"] for a in people]).reshape(-1, 4))
        np.testing.assert_allclose(record.areas, [a["area"] for a in people], rtol=1e-6)
        assert record.ignore_regions == [a["segmentation"] for a in ignored]
        assert record.crowd_index is None and record.head_size is None
        check_image(record.path, (record.height, record.width))
        total_people += len(people)
        total_ignored += len(ignored)
    assert (len(records), total_people, total_ignored) == (4, 12, 2)


def test_coco_mini_ignore_mask_is_the_zero_keypoint_person(coco, data_dir):
    path, raw = coco
    record = next(r for r in read_coco(str(path), str(data_dir / "coco_mini"), "coco")
                  if r.image_id == 40083)
    ann = next(a for a in raw["annotations"] if a["id"] == 1202706)
    mask = ignore_mask(record)
    assert mask.shape == (333, 500)
    # pycocotools' own area of the polygon, and the annotation's area, match the raster.
    rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 333, 500))
    assert int(mask.sum()) == int(mask_utils.area(rle))
    assert abs(mask.sum() - ann["area"]) / ann["area"] < 0.1


def test_crowdpose_mini(data_dir):
    path = data_dir / "crowdpose_mini" / "test_crowdpose.json"
    raw = json.loads(path.read_text())
    records = read_coco(str(path), str(data_dir / "crowdpose_mini"), "crowdpose")
    assert {r.image_id: r.crowd_index for r in records} == {
        im["id"]: im["crowdIndex"] for im in raw["images"]}
    assert sum(r.num_people for r in records) == 4
    assert all(r.keypoints.shape[1:] == (14, 3) for r in records)
    r = next(r for r in records if r.image_id == 106848)
    # No `area` in CrowdPose: the bbox area is used. No segmentation: the bbox polygon is ignored.
    people = [a for a in raw["annotations"] if a["image_id"] == 106848 and a["num_keypoints"]]
    np.testing.assert_allclose(r.areas, [a["bbox"][2] * a["bbox"][3] for a in people], rtol=1e-6)
    x, y, w, h = 108.5, 96.78, 35.46, 30.23
    np.testing.assert_allclose(r.ignore_regions[0][0], [x, y, x + w, y, x + w, y + h, x, y + h])
    # CrowdPose's num_keypoints is not the labelled count; v > 0 is.
    labelled = [(np.array(a["keypoints"]).reshape(-1, 3)[:, 2] > 0).sum() for a in people]
    assert [int((k[:, 2] > 0).sum()) for k in r.keypoints] == labelled


def test_wrong_spec_names_annotation_and_counts(coco, data_dir):
    path, _ = coco
    with pytest.raises(DatasetError, match=r"annotation id 442619: 51 keypoint values \(17 "
                                           r"keypoints\), expected 42 \(14 keypoints of spec "
                                           r"'crowdpose'\)"):
        read_coco(str(path), str(data_dir / "coco_mini"), "crowdpose")


def test_posetrack_ochuman_humanart_style(tmp_path, coco, data_dir):
    """Sub-folders, boolean iscrowd with RLE, compressed RLE, several categories, missing
    area/num_keypoints/height/width, unknown keys, null keypoints, PoseTrack ignore regions and
    unlabelled frames."""
    _, raw = coco
    data = copy.deepcopy(raw)
    sub = tmp_path / "images" / "val" / "000342_mpii_test"
    sub.mkdir(parents=True)
    for im in data["images"]:
        shutil.copy(data_dir / "coco_mini" / im["file_name"], sub / im["file_name"])
        im["file_name"] = f"val/000342_mpii_test/{im['file_name']}"
        im["vid_id"], im["frame_id"] = "000342", im["id"]  # unknown keys
    first, second = data["images"][0], data["images"][1]
    del first["height"], first["width"]
    first["ignore_regions_x"] = [[1, 30, 30, 1]]
    first["ignore_regions_y"] = [[2, 2, 40, 40]]
    data["images"].append(dict(second, id=999, file_name=second["file_name"], is_labeled=False))
    data["categories"].insert(0, {"id": 7, "name": "car", "keypoints": ["a", "b"]})
    h, w = second["height"], second["width"]
    blob = np.zeros((h, w), np.uint8, order="F")
    blob[10:20, 30:50] = 1
    rle = mask_utils.encode(blob)
    rle["counts"] = rle["counts"].decode("ascii")
    for ann in data["annotations"]:
        ann.pop("area")
        ann.pop("num_keypoints")
        ann["track_id"] = 3
    extra = [
        {"id": 1, "image_id": second["id"], "category_id": 1, "iscrowd": True,
         "bbox": [30, 10, 20, 10], "keypoints": [0] * 51, "segmentation": rle},
        {"id": 2, "image_id": second["id"], "category_id": 1, "iscrowd": False,
         "bbox": [0, 0, 5, 5], "keypoints": None},
        {"id": 3, "image_id": second["id"], "category_id": 7, "bbox": [0, 0, 1, 1],
         "keypoints": [1, 1, 2, 3, 3, 2]},
        {"id": 4, "image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "keypoints": [0] * 51},
    ]
    data["annotations"] += extra
    records = read_coco(_write(tmp_path, data), str(tmp_path / "images"), "coco")
    assert [r.image_id for r in records] == [im["id"] for im in raw["images"]]  # 999 dropped
    by_id = {r.image_id: r for r in records}
    assert sum(r.num_people for r in records) == 12
    r0 = by_id[first["id"]]
    assert r0.path == str(sub / raw["images"][0]["file_name"])
    assert (r0.height, r0.width) == (raw["images"][0]["height"], raw["images"][0]["width"])
    assert r0.ignore_regions == [[[1.0, 2.0, 30.0, 2.0, 30.0, 40.0, 1.0, 40.0]]]
    kept = [a for a in raw["annotations"] if a["image_id"] == first["id"] and a["num_keypoints"]]
    np.testing.assert_allclose(r0.areas, [a["bbox"][2] * a["bbox"][3] for a in kept], rtol=1e-6)
    r1 = by_id[second["id"]]
    assert r1.ignore_regions[-2] == rle
    assert r1.ignore_regions[-1] == [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 5.0]]
    mask = ignore_mask(r1)
    assert mask[10:20, 30:50].all() and mask[:5, :5].all()


def test_keypoints_outside_image_are_kept(tmp_path, coco, data_dir):
    _, raw = coco
    data = copy.deepcopy(raw)
    ann = data["annotations"][0]
    ann["keypoints"][0:3] = [-50.0, 9999.0, 2]
    records = read_coco(_write(tmp_path, data), str(data_dir / "coco_mini"), "coco")
    np.testing.assert_array_equal(records[0].keypoints[0, 0], [-50.0, 9999.0, 2])


def test_orphan_annotations_are_counted(tmp_path, coco, data_dir, caplog):
    _, raw = coco
    data = copy.deepcopy(raw)
    data["annotations"][3]["image_id"] = 123
    data["annotations"][5]["image_id"] = 456
    with caplog.at_level(logging.WARNING):
        records = read_coco(_write(tmp_path, data), str(data_dir / "coco_mini"), "coco")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 annotations" in warnings[0]
    assert "annotation 1202706 -> image_id 123" in warnings[0]
    assert sum(len(r.ignore_regions) for r in records) == 1


def test_custom_spec_by_category(tmp_path, coco, data_dir):
    """A custom 3-keypoint spec picks the category with 3 keypoint names."""
    _, raw = coco
    data = {"images": raw["images"][:1],
            "categories": raw["categories"] + [{"id": 5, "name": "hand", "keypoints": list("abc")}],
            "annotations": [{"id": 1, "image_id": raw["images"][0]["id"], "category_id": 5,
                             "bbox": [1, 2, 3, 4], "keypoints": [1, 2, 2, 3, 4, 0, 5, 6, 1]}]
            + raw["annotations"]}
    spec = get_spec({"names": ["a", "b", "c"], "sigmas": [0.1, 0.1, 0.1]})
    (record,) = read_coco(_write(tmp_path, data), str(data_dir / "coco_mini"), spec)
    np.testing.assert_array_equal(record.keypoints, [[[1, 2, 2], [3, 4, 0], [5, 6, 1]]])
