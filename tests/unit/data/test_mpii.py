"""MPII JSON reader on the real mini set and on variants of it."""

import copy
import json
import math

import cv2
import numpy as np
import pytest

from tfpose.data.mpii import read_mpii
from tfpose.data.records import DatasetError


@pytest.fixture(scope="module")
def mpii(data_dir):
    path = data_dir / "mpii_mini" / "test_mpii.json"
    return path, json.loads(path.read_text())


def _write(tmp_path, data):
    path = tmp_path / "mpii.json"
    path.write_text(json.dumps(data))
    return str(path)


def _tiny_images(folder, names):
    for name in names:
        cv2.imwrite(str(folder / name), np.zeros((6, 8, 3), np.uint8))


def test_mpii_mini(mpii, data_dir):
    path, raw = mpii
    records = read_mpii(str(path), str(data_dir / "mpii_mini"), "mpii")
    names = sorted(e["image"] for e in raw)
    assert len(records) == 5
    # numeric file stems, as MMPose: 004645041.jpg -> 4645041
    assert [r.image_id for r in records] == [4645041, 5808361, 51423444, 52475643, 60754485]
    assert [r.path for r in records] == [str(data_dir / "mpii_mini" / n) for n in names]
    for record in records:
        entry = next(e for e in raw if e["image"] in record.path)
        image = cv2.imread(record.path)
        assert (record.height, record.width) == image.shape[:2]
        joints = np.array(entry["joints"])
        vis = np.array(entry["joints_vis"])
        labelled = (vis > 0) & (joints >= 0).all(1)
        assert record.keypoints.shape == (1, 16, 3) and record.keypoints.dtype == np.float32
        # 1-based MATLAB pixel index p -> continuous p - 0.5; unlabelled joints (0, 0, 0)
        np.testing.assert_allclose(record.keypoints[0, labelled, :2], joints[labelled] - 0.5,
                                   rtol=1e-6)
        np.testing.assert_array_equal(record.keypoints[0, ~labelled], 0.0)
        np.testing.assert_array_equal(record.keypoints[0, :, 2], labelled.astype(np.float32))
        side = entry["scale"] * 200
        cx, cy = np.array(entry["center"]) - 0.5
        np.testing.assert_allclose(record.boxes[0], [cx - side / 2, cy - side / 2, side, side],
                                   rtol=1e-5)
        np.testing.assert_allclose(record.areas, [side * side], rtol=1e-5)
        # Fallback head size: upper_neck (8) <-> head_top (9) in MPII joint order.
        expected = math.dist(entry["joints"][8], entry["joints"][9])
        np.testing.assert_allclose(record.head_size, [expected], rtol=1e-5)
        assert record.ignore_regions == []


def test_several_people_missing_joints_headbox_and_order(tmp_path, mpii, data_dir):
    _, raw = mpii
    data = copy.deepcopy(raw)
    second = copy.deepcopy(raw[0])
    second["joints"][3] = [-1.0, -1.0]  # MPII's missing joint
    second["joints_vis"][5] = 0
    second["headbox"] = [10, 20, 40, 60]
    nobody = copy.deepcopy(raw[0])
    nobody["joints_vis"] = [0] * 16
    data += [second, nobody]
    data.reverse()  # entry order must not change image ids
    records = read_mpii(_write(tmp_path, data), str(data_dir / "mpii_mini"), "mpii")
    assert [r.path for r in records] == sorted(r.path for r in records)
    record = next(r for r in records if r.path.endswith(raw[0]["image"]))
    assert record.num_people == 2
    two = next(k for k in record.keypoints if k[3, 2] == 0)
    assert two[5, 2] == 0 and (np.delete(two[:, 2], [3, 5]) == 1).all()
    assert sorted(record.head_size.tolist()) == pytest.approx(
        sorted([0.6 * 50.0, math.dist(raw[0]["joints"][8], raw[0]["joints"][9])]))
    side = raw[0]["scale"] * 200
    assert len(record.ignore_regions) == 1
    np.testing.assert_allclose(record.ignore_regions[0][0][2] - record.ignore_regions[0][0][0],
                               side, rtol=1e-6)


def test_head_size_nan_without_neck_or_top(tmp_path, mpii, data_dir):
    _, raw = mpii
    data = copy.deepcopy(raw[:1])
    data[0]["joints_vis"][9] = 0
    (record,) = read_mpii(_write(tmp_path, data), str(data_dir / "mpii_mini"), "mpii")
    assert np.isnan(record.head_size[0])


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.pop("center"), r"entry \[0\]: missing required key 'center'"),
    (lambda e: e.update(joints=e["joints"][:14]),
     r"entry \[0\] \('005808361.jpg'\): joints has shape \[14, 2\], expected \[16, 2\]"),
    (lambda e: e.update(scale=-1), "scale must be a positive number"),
    (lambda e: e.update(joints_vis=[1] * 15), r"joints_vis has shape \[15\], expected \[16\]"),
    (lambda e: e.update(image="nope.jpg"), "nope.jpg: image file cannot be opened"),
    (lambda e: e.update(image_id="7"), r"entry \[0\]: image_id must be a non-negative integer"),
])
def test_bad_entries(tmp_path, mpii, data_dir, edit, message):
    _, raw = mpii
    data = copy.deepcopy(raw[:1])
    edit(data[0])
    with pytest.raises(DatasetError, match=message):
        read_mpii(_write(tmp_path, data), str(data_dir / "mpii_mini"), "mpii")


def test_empty_and_not_a_list(tmp_path, data_dir):
    with pytest.raises(DatasetError, match="no entries"):
        read_mpii(_write(tmp_path, []), str(data_dir / "mpii_mini"), "mpii")
    with pytest.raises(DatasetError, match="top level must be a list"):
        read_mpii(_write(tmp_path, {"images": []}), str(data_dir / "mpii_mini"), "mpii")


def test_image_id_key_and_missing_joint_coordinates(tmp_path, mpii, data_dir):
    _, raw = mpii
    data = copy.deepcopy(raw[:2])
    data[0]["image_id"] = 17
    data[0]["joints"][0] = [-1.0, -1.0]
    data[0]["joints"][1] = [1.0, 1.0]  # the top-left pixel of the image: centre (0.5, 0.5)
    records = read_mpii(_write(tmp_path, data), str(data_dir / "mpii_mini"), "mpii")
    ids = {r.path.rsplit("/", 1)[1]: r.image_id for r in records}
    assert ids == {raw[0]["image"]: 17, raw[1]["image"]: int(raw[1]["image"].split(".")[0])}
    record = next(r for r in records if r.image_id == 17)
    np.testing.assert_array_equal(record.keypoints[0, :2], [[0.0, 0.0, 0.0], [0.5, 0.5, 1.0]])


def test_non_numeric_names_sorted_ids(tmp_path):
    _tiny_images(tmp_path, ["b.jpg", "a.png", "c.jpg"])
    person = {"joints": [[2.0, 3.0]] * 16, "joints_vis": [1] * 16, "center": [4.0, 3.0],
              "scale": 0.02}
    data = [dict(person, image=n) for n in ("c.jpg", "b.jpg", "a.png", "b.jpg")]
    records = read_mpii(_write(tmp_path, data), str(tmp_path), "mpii")
    assert [(r.path.rsplit("/", 1)[1], r.image_id, r.num_people) for r in records] == [
        ("a.png", 1, 1), ("b.jpg", 2, 2), ("c.jpg", 3, 1)]
    assert (records[0].height, records[0].width) == (6, 8)
    np.testing.assert_allclose(records[0].boxes[0], [3.5 - 2, 2.5 - 2, 4, 4])


@pytest.mark.parametrize("ids, message", [
    ({"a.jpg": 5, "5.jpg": None}, r"duplicate image id 5 \('a.jpg' and '5.jpg'\)"),
    ({"0005.jpg": None, "5.jpg": None}, r"duplicate image id 5 \('5.jpg' and '0005.jpg'\)"),
    ({"x.jpg": 2, "y.jpg": None}, r"duplicate image id 2 \('y.jpg' and 'x.jpg'\)"),
])
def test_duplicate_image_ids(tmp_path, ids, message):
    _tiny_images(tmp_path, list(ids))
    person = {"joints": [[2.0, 3.0]] * 16, "joints_vis": [1] * 16, "center": [4.0, 3.0],
              "scale": 0.02}
    data = [dict(person, image=n, **({"image_id": i} if i is not None else {}))
            for n, i in ids.items()]
    with pytest.raises(DatasetError, match=message):
        read_mpii(_write(tmp_path, data), str(tmp_path), "mpii")


def test_image_id_must_agree_within_an_image(tmp_path):
    _tiny_images(tmp_path, ["a.jpg"])
    person = {"image": "a.jpg", "joints": [[2.0, 3.0]] * 16, "joints_vis": [1] * 16,
              "center": [4.0, 3.0], "scale": 0.02}
    data = [dict(person, image_id=3), dict(person, image_id=4)]
    with pytest.raises(DatasetError, match=r"entry \[1\] \('a.jpg'\): image_id 4 differs"):
        read_mpii(_write(tmp_path, data), str(tmp_path), "mpii")
