"""Image checks, TF decoding of unusual but valid files, and ignore-mask rasterisation."""

import logging
import struct
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from tfpose.data.images import (check_image, decode_image_tf, ignore_mask, image_size,
                                read_image_header, validate_images)
from tfpose.data.records import DatasetError, ImageRecord


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(pixels, color_type, bit_depth=8, palette=None, trns=None) -> bytes:
    """A minimal PNG written by hand (filter 0 rows), independent of OpenCV's encoder."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + pixels[r].astype(dtype).tobytes() for r in range(height))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                              bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", bytes(trns))
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def decode(data: bytes) -> np.ndarray:
    return decode_image_tf(tf.constant(data)).numpy()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def jpeg_bytes(data_dir):
    return (data_dir / "coco_mini" / "000000000785.jpg").read_bytes()


# --- decoding ---------------------------------------------------------------------------------


def test_real_jpeg_matches_opencv_exactly(data_dir):
    # INTEGER_ACCURATE DCT = libjpeg's default, what cv2 uses; TF's default DCT is not exact.
    path = str(data_dir / "coco_mini" / "000000000785.jpg")
    data = open(path, "rb").read()
    reference = cv2.imread(path)[..., ::-1]
    decoded = decode(data)
    assert decoded.dtype == np.uint8 and decoded.shape == reference.shape
    np.testing.assert_array_equal(decoded, reference)
    default = tf.io.decode_image(data, channels=3).numpy()
    assert np.abs(default.astype(int) - reference).max() > 2


def test_rgba_png_drops_alpha(rng):
    bgra = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    data = cv2.imencode(".png", bgra)[1].tobytes()
    np.testing.assert_array_equal(decode(data), bgra[..., 2::-1])


def test_gray_alpha_and_palette_png(rng):
    gray = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    out = decode(png_bytes(np.dstack([gray, 255 - gray]), color_type=4))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    index = rng.integers(0, 4, (6, 5), dtype=np.uint8)
    out = decode(png_bytes(index, color_type=3, palette=palette, trns=[0, 128, 255, 10]))
    np.testing.assert_array_equal(out, palette[index])


def test_16bit_png_keeps_high_byte(rng):
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    data = png_bytes(rgb16, color_type=2, bit_depth=16)
    out = decode(data)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))
    # Same as OpenCV's 8-bit read of the same file.
    np.testing.assert_array_equal(out, cv2.imdecode(np.frombuffer(data, np.uint8),
                                                    cv2.IMREAD_COLOR)[..., ::-1])
    rgba16 = rng.integers(0, 65536, (4, 3, 4), dtype=np.uint16)
    out = decode(png_bytes(rgba16, color_type=6, bit_depth=16))
    np.testing.assert_array_equal(out, (rgba16[..., :3] >> 8).astype(np.uint8))


def test_grayscale_png_and_jpeg_become_three_channels(rng):
    gray = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    out = decode(cv2.imencode(".png", gray)[1].tobytes())
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    data = cv2.imencode(".jpg", gray)[1].tobytes()
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    out = decode(data)
    assert out.shape == (16, 24, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], reference)


def test_decode_inside_tf_data(tmp_path, rng):
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    items = [cv2.imencode(".png", gray)[1].tobytes(), cv2.imencode(".jpg", gray)[1].tobytes()]
    ds = tf.data.Dataset.from_tensor_slices(items).map(decode_image_tf)
    assert ds.element_spec.shape.as_list() == [None, None, 3]
    assert [tuple(x.shape) for x in ds] == [(8, 8, 3), (8, 8, 3)]


# --- cheap checks -----------------------------------------------------------------------------


def _tf_fails(data: bytes) -> bool:
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        return True
    return False


def test_good_files_pass_and_report_size(tmp_path, jpeg_bytes, rng):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes)
    check_image(str(path), (425, 640))
    assert image_size(str(path)) == (425, 640)
    png = tmp_path / "b.png"
    png.write_bytes(cv2.imencode(".png", rng.integers(0, 256, (7, 5), dtype=np.uint8))[1])
    assert read_image_header(str(png)) == (7, 5, 1)
    check_image(str(png))


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot be opened"),
    ("empty", "empty file"),
    ("text", "not a JPEG or PNG"),
    ("jpeg_cut_half", "truncated JPEG"),
    ("jpeg_no_eoi", "truncated JPEG"),
    ("jpeg_header_only", "truncated JPEG header"),
    ("jpeg_12bit", "12-bit"),
    ("jpeg_arithmetic", "unsupported JPEG coding"),
    ("jpeg_zero_height", "corrupt JPEG header"),
    ("png_no_iend", "truncated PNG"),
    ("png_cut_half", "truncated PNG"),
    ("png_crc", "CRC error in chunk IDAT"),
    ("png_bad_depth", "bit depth"),
])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, jpeg_bytes, case, message):
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), 1))[1].tobytes()
    sof = jpeg_bytes.index(b"\xff\xc0")
    data = {
        "empty": b"",
        "text": b'{"not": "an image"}',
        "jpeg_cut_half": jpeg_bytes[: len(jpeg_bytes) // 2],
        "jpeg_no_eoi": jpeg_bytes[:-2],
        "jpeg_header_only": jpeg_bytes[:sof],
        "jpeg_12bit": jpeg_bytes[:sof + 4] + b"\x0c" + jpeg_bytes[sof + 5:],
        "jpeg_arithmetic": jpeg_bytes[:sof + 1] + b"\xc9" + jpeg_bytes[sof + 2:],
        "jpeg_zero_height": jpeg_bytes[:sof + 5] + b"\x00\x00" + jpeg_bytes[sof + 7:],
        "png_no_iend": png[:-12],
        "png_cut_half": png[: len(png) // 2],
        "png_crc": png[:-40] + bytes([png[-40] ^ 0xFF]) + png[-39:],
        "png_bad_depth": png[:8] + _chunk(b"IHDR", png[16:24] + b"\x03" + png[25:29]) + png[33:],
    }.get(case)
    path = tmp_path / f"{case}.img"
    if data is not None:
        path.write_bytes(data)
        if case not in ("jpeg_arithmetic",):  # TF's own verdict on the same bytes
            assert _tf_fails(data), case
    with pytest.raises(DatasetError, match=message) as info:
        check_image(str(path))
    text = str(info.value)
    assert str(path) in text and "\n" not in text


def test_tolerated_like_tf(tmp_path, jpeg_bytes):
    # Data after EOI and garbage inside the entropy-coded data: TF decodes both.
    for name, data in [("trailing.jpg", jpeg_bytes + b"trailing bytes" * 100),
                       ("garbage.jpg", jpeg_bytes[:50000] + bytes(3000) + jpeg_bytes[53000:])]:
        path = tmp_path / name
        path.write_bytes(data)
        assert not _tf_fails(data)
        check_image(str(path))


def test_size_mismatch_and_decode_check(tmp_path, jpeg_bytes):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes)
    with pytest.raises(DatasetError, match=r"425x640 \(HxW\) but the annotation says 640x425"):
        check_image(str(path), (640, 425))
    check_image(str(path), decode=True)


def _record(path, image_id, h=425, w=640, regions=()):
    return ImageRecord(image_id, str(path), h, w, np.zeros((0, 17, 3), np.float32),
                       np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), list(regions))


def test_validate_images_skips_with_one_counted_warning(tmp_path, jpeg_bytes, caplog):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg_bytes[:-100])
    records = [_record(good, 1), _record(cut, 2), _record(tmp_path / "missing.jpg", 3),
               _record(good, 4)]
    with caplog.at_level(logging.WARNING):
        kept = validate_images(records, on_error="skip", num_threads=3)
    assert [r.image_id for r in kept] == [1, 4]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 of 4" in warnings[0].getMessage()
    assert str(cut) in warnings[0].getMessage()
    with pytest.raises(DatasetError, match="cut.jpg: truncated JPEG"):
        validate_images(records, on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        validate_images(records, on_error="ignore")


# --- ignore masks ------------------------------------------------------------------------------


def test_ignore_mask_none_without_regions(tmp_path):
    assert ignore_mask(_record(tmp_path / "x.jpg", 1, 30, 40)) is None
    # A polygon entirely outside the image covers nothing.
    assert ignore_mask(_record(tmp_path / "x.jpg", 1, 30, 40,
                               [[[100, 100, 120, 100, 120, 120]]])) is None


def test_ignore_mask_polygon_and_rle(tmp_path, rng):
    h, w = 30, 40
    rect = [[10, 5, 20, 5, 20, 12, 10, 12]]  # integer rectangle -> rows 5..11, columns 10..19
    blob = (rng.random((h, w)) > 0.8).astype(np.uint8)
    # Uncompressed RLE: column-major run lengths starting with zeros, written independently.
    flat = blob.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    uncompressed = {"counts": runs, "size": [h, w]}
    compressed = mask_utils.encode(np.asfortranarray(np.eye(h, w, dtype=np.uint8)))
    compressed["counts"] = compressed["counts"].decode("ascii")
    mask = ignore_mask(_record(tmp_path / "x.jpg", 1, h, w, [rect, uncompressed, compressed]))
    expected = blob.copy()
    expected[5:12, 10:20] = 1
    expected[np.eye(h, w, dtype=bool)] = 1
    assert mask.dtype == np.uint8 and mask.shape == (h, w)
    np.testing.assert_array_equal(mask, expected)


def test_ignore_mask_rle_size_mismatch(tmp_path):
    rle = {"counts": [0, 5], "size": [5, 1]}
    with pytest.raises(DatasetError, match=r"image 7 .*RLE size \[5, 1\]"):
        ignore_mask(_record(tmp_path / "x.jpg", 7, 30, 40, [rle]))
