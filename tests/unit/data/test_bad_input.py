"""Bad and unusual input, built in tmp_path from the real mini data: each either works correctly
or fails with one DatasetError line naming the file / key / value (or one counted warning)."""

import copy
import json
import logging
import shutil
import struct

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfpose.data.coco import read_coco
from tfpose.data.images import check_image, decode_image_tf, validate_images
from tfpose.data.mpii import read_mpii
from tfpose.data.records import DatasetError
from tfpose.data.tfrecord import source_from_records


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def flat_block_jpeg(blocks: np.ndarray, adobe_transform=None) -> bytes:
    """A baseline JPEG, written by hand, whose 8x8 blocks are flat.

    Args:
        blocks: uint8 [BH, BW, C], C in {1, 3, 4}: one value per block and component.
        adobe_transform: None (no APP14 marker) or the Adobe transform flag (0: CMYK as is).

    Only DC coefficients are coded (quantiser 1, Huffman tables: 12 four-bit DC codes, AC holds
    only EOB), so decoding is exact up to rounding of the colour conversion.
    """
    blocks = np.asarray(blocks)
    bh, bw, nc = blocks.shape
    out = b"\xff\xd8"
    if adobe_transform is not None:
        out += _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, adobe_transform))
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(0xC0, struct.pack(">BHHB", 8, bh * 8, bw * 8, nc)
                    + b"".join(bytes([i + 1, 0x11, 0]) for i in range(nc)))
    dc_table = b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12))
    ac_table = b"\x10" + bytes([1] + [0] * 15) + b"\x00"
    out += _segment(0xC4, dc_table + ac_table)
    out += _segment(0xDA, bytes([nc]) + b"".join(bytes([i + 1, 0]) for i in range(nc))
                    + b"\x00\x3f\x00")
    bits, previous = [], [0] * nc
    for r in range(bh):
        for c in range(bw):
            for k in range(nc):
                dc = 8 * (int(blocks[r, c, k]) - 128)  # DC of a flat block, level-shifted
                diff, previous[k] = dc - previous[k], dc
                size = abs(diff).bit_length()
                bits += [int(b) for b in format(size, "04b")]
                if size:
                    value = diff if diff >= 0 else diff + (1 << size) - 1
                    bits += [int(b) for b in format(value, f"0{size}b")]
                bits.append(0)  # EOB
    bits += [1] * (-len(bits) % 8)
    data = bytearray()
    for i in range(0, len(bits), 8):
        data.append(int("".join(map(str, bits[i:i + 8])), 2))
        if data[-1] == 0xFF:
            data.append(0)
    return out + bytes(data) + b"\xff\xd9"


@pytest.fixture(scope="module")
def coco_json(data_dir):
    return json.loads((data_dir / "coco_mini" / "test_coco.json").read_text())


def _dataset(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _one_image_dataset(coco_json, file_name, height, width, image_id=1):
    ann = copy.deepcopy(coco_json["annotations"][0])
    ann["image_id"] = image_id
    return {"images": [{"id": image_id, "file_name": file_name, "height": height, "width": width}],
            "annotations": [ann], "categories": coco_json["categories"]}


# --- images -------------------------------------------------------------------------------------


def test_corrupt_and_truncated_jpeg_are_skipped_and_counted(tmp_path, coco_json, data_dir, caplog):
    for im in coco_json["images"]:
        shutil.copy(data_dir / "coco_mini" / im["file_name"], tmp_path)
    first, second = (tmp_path / coco_json["images"][i]["file_name"] for i in (1, 2))
    first.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")  # corrupt header
    data = second.read_bytes()
    second.write_bytes(data[: len(data) - 5000])  # truncated
    records = read_coco(_dataset(tmp_path, coco_json), str(tmp_path), "coco")
    with caplog.at_level(logging.WARNING):
        kept = validate_images(records)
    assert [r.image_id for r in kept] == [coco_json["images"][i]["id"] for i in (0, 3)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 2 of 4" in warning and str(first) in warning
    with pytest.raises(DatasetError, match=f"{second}: truncated JPEG"):
        check_image(str(second))
    for path in (first, second):  # TF agrees: neither decodes
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(path.read_bytes(), channels=3)


def test_missing_image_file(tmp_path, coco_json, data_dir):
    records = read_coco(_dataset(tmp_path, coco_json), str(tmp_path / "nowhere"), "coco")
    with pytest.raises(DatasetError, match=r"nowhere/000000000785.jpg: image file cannot be "):
        validate_images(records, on_error="raise")
    assert validate_images(records) == []
    mpii = json.loads((data_dir / "mpii_mini" / "test_mpii.json").read_text())
    with pytest.raises(DatasetError, match=r"nowhere/004645041.jpg: image file cannot be opened"):
        read_mpii(_dataset(tmp_path, mpii), str(tmp_path / "nowhere"), "mpii")


def _decoded_through_pipeline(tmp_path, coco_json, file_name, height, width):
    records = read_coco(_dataset(tmp_path, _one_image_dataset(coco_json, file_name, height, width),
                                 f"{file_name}.json"), str(tmp_path), "coco")
    assert len(validate_images(records, on_error="raise")) == 1
    ds = source_from_records(records).map(lambda e: decode_image_tf(e["image_bytes"]))
    (image,) = list(ds)
    return image.numpy()


def test_valid_unusual_images_decode_correctly(tmp_path, coco_json, data_dir):
    """PNG with alpha, 16-bit PNG, grayscale JPEG and PNG made from a real image."""
    bgr = cv2.imread(str(data_dir / "coco_mini" / "000000000785.jpg"))
    h, w = bgr.shape[:2]
    alpha = np.linspace(0, 255, w, dtype=np.uint8)[None].repeat(h, 0)
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([bgr, alpha]))
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "gray.jpg"), gray)
    rgb = bgr[..., ::-1]
    np.testing.assert_array_equal(_decoded_through_pipeline(tmp_path, coco_json, "alpha.png", h, w),
                                  rgb)
    np.testing.assert_array_equal(_decoded_through_pipeline(tmp_path, coco_json, "deep.png", h, w),
                                  rgb)
    three = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(_decoded_through_pipeline(tmp_path, coco_json, "gray.png", h, w),
                                  three)
    gray_jpeg = cv2.imread(str(tmp_path / "gray.jpg"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(_decoded_through_pipeline(tmp_path, coco_json, "gray.jpg", h, w),
                                  np.repeat(gray_jpeg[..., None], 3, axis=2))


def test_cmyk_jpeg_colours(tmp_path, coco_json):
    rng = np.random.default_rng(1)
    cmyk = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    (tmp_path / "cmyk.jpg").write_bytes(flat_block_jpeg(cmyk, adobe_transform=0))
    image = _decoded_through_pipeline(tmp_path, coco_json, "cmyk.jpg", 24, 32)
    # Adobe (Photoshop) CMYK JPEGs store inverted inks: R = C * K / 255, and so on.
    expected = cmyk[..., :3].astype(np.float64) * cmyk[..., 3:] / 255.0
    assert image.shape == (24, 32, 3)
    np.testing.assert_allclose(image[::8, ::8], expected, atol=1.0)
    assert (image.reshape(3, 8, 4, 8, 3) == image[::8, ::8][:, None, :, None]).all()  # flat blocks
    opencv = cv2.imread(str(tmp_path / "cmyk.jpg"))[..., ::-1]
    np.testing.assert_allclose(image, opencv, atol=2)
    # Without the Adobe marker TF (like PIL) reads plain CMYK: R = (255 - C) * (255 - K) / 255.
    (tmp_path / "plain.jpg").write_bytes(flat_block_jpeg(cmyk))
    plain = _decoded_through_pipeline(tmp_path, coco_json, "plain.jpg", 24, 32)
    expected = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0
    np.testing.assert_allclose(plain[::8, ::8], expected, atol=1.0)


# --- annotation files ---------------------------------------------------------------------------


def test_annotation_file_not_json(tmp_path, data_dir):
    path = tmp_path / "ann.json"
    path.write_text('{"images": [1, 2,\n oops}')
    with pytest.raises(DatasetError, match=rf"{path}: not valid JSON \(line 2, column 2"):
        read_coco(str(path), str(data_dir / "coco_mini"), "coco")
    with pytest.raises(DatasetError, match=rf"{path}: not valid JSON"):
        read_mpii(str(path), str(data_dir / "mpii_mini"), "mpii")
    with pytest.raises(DatasetError, match="missing.json: annotation file not found"):
        read_coco(str(tmp_path / "missing.json"), str(data_dir / "coco_mini"), "coco")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("images"), r"missing required key 'images'"),
    (lambda d: d["images"][2].pop("file_name"), r"images\[2\]: missing required key 'file_name'"),
    (lambda d: d["images"][1].pop("id"), r"images\[1\]: missing required key 'id'"),
    (lambda d: d["annotations"][4].pop("bbox"),
     r"annotation id 460541: missing required key 'bbox'"),
    (lambda d: d["annotations"][0].pop("keypoints"),
     r"annotation id 442619: missing required key 'keypoints'"),
    (lambda d: [d["annotations"][6].pop("id"), d["annotations"][6].pop("image_id")],
     r"annotations\[6\]: missing required key 'image_id'"),
    (lambda d: d["images"][0].update(height="tall"), r"images\[0\] \(id 785\): height must be"),
    (lambda d: d["annotations"][2]["keypoints"].__setitem__(0, float("nan")),
     r"annotation id 230195: keypoints contain NaN"),
])
def test_missing_or_bad_keys_name_key_and_item(tmp_path, coco_json, data_dir, edit, message):
    data = copy.deepcopy(coco_json)
    edit(data)
    with pytest.raises(DatasetError, match=message) as info:
        read_coco(_dataset(tmp_path, data), str(data_dir / "coco_mini"), "coco")
    assert str(tmp_path / "ann.json") in str(info.value) and "\n" not in str(info.value)


def test_keypoints_outside_image_are_kept_through_the_pipeline(tmp_path, coco_json, data_dir):
    data = copy.deepcopy(coco_json)
    ann = data["annotations"][0]  # image 785, 640x425
    ann["keypoints"][:6] = [-100.0, -20.0, 2, 5000.0, 30.0, 1]
    records = read_coco(_dataset(tmp_path, data), str(data_dir / "coco_mini"), "coco")
    element = next(iter(source_from_records(records[:1])))
    np.testing.assert_array_equal(element["keypoints"].numpy()[0, :2],
                                  [[-100.0, -20.0, 2], [5000.0, 30.0, 1]])


def test_keypoint_count_mismatch(tmp_path, coco_json, data_dir):
    data = copy.deepcopy(coco_json)
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:48]
    with pytest.raises(DatasetError, match=r"annotation id 1202706: 48 keypoint values \(16 "
                                           r"keypoints\), expected 51 \(17 keypoints"):
        read_coco(_dataset(tmp_path, data), str(data_dir / "coco_mini"), "coco")


def test_duplicate_image_ids(tmp_path, coco_json, data_dir):
    data = copy.deepcopy(coco_json)
    data["images"][3]["id"] = data["images"][0]["id"]
    with pytest.raises(DatasetError, match=r"duplicate image id 785 \('000000197388.jpg' and "
                                           r"'000000000785.jpg'\)"):
        read_coco(_dataset(tmp_path, data), str(data_dir / "coco_mini"), "coco")


def test_empty_dataset(tmp_path, coco_json, data_dir):
    data = copy.deepcopy(coco_json)
    data["images"] = []
    with pytest.raises(DatasetError, match="no images"):
        read_coco(_dataset(tmp_path, data), str(data_dir / "coco_mini"), "coco")
    data["images"] = [dict(im, is_labeled=False) for im in coco_json["images"]]
    with pytest.raises(DatasetError, match="no labelled images"):
        read_coco(_dataset(tmp_path, data), str(data_dir / "coco_mini"), "coco")
    with pytest.raises(DatasetError, match="empty"):
        source_from_records([])
