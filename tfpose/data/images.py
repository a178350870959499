"""Image file checks, decoding inside tf.data, and ignore-mask rasterisation.

Checks are cheap (marker/chunk walks, no pixel decode) so :func:`validate_images` can run over
100k files in a thread pool before a conversion or a training run.

TensorFlow 2.21 decoder behaviour, measured on files written by OpenCV and by hand (see
tests/unit/data/test_images.py, which pins each point):
    * PNG with alpha (RGBA, gray + alpha, palette + tRNS): ``channels=3`` drops alpha (no
      compositing). Native.
    * 16-bit PNG: ``dtype=uint8`` keeps the high byte (``v >> 8``, libpng ``png_set_strip_16``),
      the same as ``cv2.imread(..., IMREAD_COLOR)``. Native.
    * Grayscale JPEG/PNG: ``channels=3`` replicates the channel. Native.
    * CMYK / YCCK JPEG: converted to RGB by TF itself. With an Adobe APP14 marker (what Photoshop
      writes) the channels are taken as inverted, ``R = C * K / 255``, matching OpenCV and PIL;
      without one as plain CMYK, ``R = (255 - C) * (255 - K) / 255``, matching PIL. Native.
    * JPEG without its end-of-image marker, even one byte short: error ("Premature end of JPEG
      data"). Bytes after the EOI marker: fine.
    * JPEG with garbage in the entropy-coded data: decodes (libjpeg only warns), so it is not an
      error here either.
    * PNG without IEND, or with a CRC error in a critical chunk (IHDR, PLTE, IDAT): error.
      Data after IEND: fine.
    * ``tf.io.decode_jpeg``'s default DCT (``INTEGER_FAST``) differs from libjpeg's default
      (used by OpenCV and PIL) by up to ~6 grey levels; :func:`decode_image_tf` asks for
      ``INTEGER_ACCURATE`` so training and cv2-based inference see the same pixels.
EXIF orientation is ignored by TF (and by the size checks here): pixels are used as stored.
"""

from __future__ import annotations

import concurrent.futures
import logging
import struct
import zlib
from typing import Optional, Sequence

import numpy as np

from tfpose.data.records import DatasetError, ImageRecord

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers libjpeg-turbo decodes as 8-bit Huffman images: baseline, extended
# sequential, progressive. Lossless (C3), hierarchical (C5-C7) and arithmetic (C9-CF) are refused.
_JPEG_SOF_OK = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_JPEG_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Valid (colour type -> bit depths) pairs of the PNG specification, section 11.2.2.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _open(path: str):
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def _read_exact(f, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DatasetError(f"{path}: truncated {what}")
    return data


def _jpeg_header(f, path: str) -> tuple:
    """Walks JPEG markers up to the first SOS; returns (height, width, channels, sos_offset)."""
    size = None
    pos = 2
    while True:
        f.seek(pos)
        head = f.read(4)
        if len(head) < 2:
            raise DatasetError(f"{path}: truncated JPEG header (no start-of-scan marker)")
        if head[0] != 0xFF:
            raise DatasetError(f"{path}: corrupt JPEG header (expected a marker at byte {pos})")
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x00 or marker == 0xD8:
            raise DatasetError(f"{path}: corrupt JPEG header (invalid marker 0xFF{marker:02X} at "
                               f"byte {pos})")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        if marker == 0xD9:
            raise DatasetError(f"{path}: corrupt JPEG (end-of-image marker before any image data)")
        if len(head) < 4:
            raise DatasetError(f"{path}: truncated JPEG header")
        (length,) = struct.unpack(">H", head[2:4])
        if length < 2:
            raise DatasetError(f"{path}: corrupt JPEG header (segment length {length} at "
                               f"byte {pos})")
        if marker in _JPEG_SOF_OK:
            body = _read_exact(f, 6, path, "JPEG frame header")
            precision, height, width, channels = struct.unpack(">BHHB", body)
            if precision != 8:
                raise DatasetError(f"{path}: unsupported {precision}-bit JPEG (8-bit expected)")
            if height == 0 or width == 0:
                raise DatasetError(f"{path}: corrupt JPEG header (size {height}x{width})")
            if channels not in (1, 3, 4):
                raise DatasetError(f"{path}: unsupported JPEG with {channels} components")
            size = (height, width, channels)
        elif marker in _JPEG_SOF_OTHER:
            raise DatasetError(f"{path}: unsupported JPEG coding process (marker 0xFF{marker:02X})")
        elif marker == 0xDA:
            if size is None:
                raise DatasetError(f"{path}: corrupt JPEG header (scan before frame header)")
            return size + (pos,)
        pos += 2 + length


def _check_jpeg(f, path: str, file_size: int) -> tuple:
    height, width, channels, sos = _jpeg_header(f, path)
    f.seek(file_size - 2)
    if f.read(2) != b"\xff\xd9":
        # Rare: data after the end-of-image marker. Look for EOI anywhere after the first scan.
        f.seek(sos)
        if f.read().find(b"\xff\xd9") < 0:
            raise DatasetError(f"{path}: truncated JPEG (no end-of-image marker)")
    return height, width, channels


def _check_png(f, path: str) -> tuple:
    """Walks all PNG chunks, checking critical-chunk CRCs as libpng does; returns (h, w, c)."""
    f.seek(8)
    size = None
    seen_idat = seen_plte = False
    first = True
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise DatasetError(f"{path}: truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", head)
        if length > 2 ** 31 - 1:
            raise DatasetError(f"{path}: corrupt PNG (chunk length {length})")
        data = f.read(length)
        crc = f.read(4)
        if len(data) < length or len(crc) < 4:
            raise DatasetError(f"{path}: truncated PNG (chunk {kind!r} cut short, no IEND chunk)")
        critical = not (kind[0] & 0x20)
        if critical and struct.unpack(">I", crc)[0] != zlib.crc32(kind + data) & 0xFFFFFFFF:
            raise DatasetError(f"{path}: corrupt PNG (CRC error in chunk {kind.decode('latin-1')})")
        if first:
            if kind != b"IHDR" or length != 13:
                raise DatasetError(f"{path}: corrupt PNG (first chunk is not IHDR)")
            width, height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", data)
            if width == 0 or height == 0 or width > 2 ** 31 - 1 or height > 2 ** 31 - 1:
                raise DatasetError(f"{path}: corrupt PNG header (size {height}x{width})")
            if depth not in _PNG_DEPTHS.get(ctype, ()):
                raise DatasetError(f"{path}: corrupt PNG header (colour type {ctype}, "
                                   f"bit depth {depth})")
            if comp != 0 or filt != 0 or interlace not in (0, 1):
                raise DatasetError(f"{path}: corrupt PNG header (compression {comp}, filter "
                                   f"{filt}, interlace {interlace})")
            size = (height, width, {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[ctype])
            palette = ctype == 3
            first = False
        elif kind == b"PLTE":
            seen_plte = True
        elif kind == b"IDAT":
            if palette and not seen_plte:
                raise DatasetError(f"{path}: corrupt PNG (palette image without PLTE chunk)")
            seen_idat = True
        elif kind == b"IEND":
            if not seen_idat:
                raise DatasetError(f"{path}: corrupt PNG (no IDAT chunk)")
            return size


def read_image_header(path: str) -> tuple:
    """Checks one JPEG/PNG file cheaply and returns its stored size.

    Args:
        path: str, image file.

    Returns:
        (height, width, channels) as stored in the file (EXIF orientation ignored).

    Raises:
        DatasetError: one line naming the file, for a missing file, a file that is not a JPEG or
            PNG, a corrupt or truncated header, a JPEG without end-of-image marker, a PNG without
            IEND or with a critical-chunk CRC error, or a coding TF cannot decode (12-bit,
            lossless, arithmetic-coded JPEG).
    """
    try:
        f = _open(path)
    except Exception as e:  # OSError locally, tf.errors.OpError for remote paths
        raise DatasetError(f"{path}: image file cannot be opened ({type(e).__name__})") from None
    with f:
        magic = f.read(8)
        f.seek(0, 2)
        file_size = f.tell()
        if magic[:3] == b"\xff\xd8\xff":
            return _check_jpeg(f, path, file_size)
        if magic == _PNG_SIGNATURE:
            return _check_png(f, path)
        if not magic:
            raise DatasetError(f"{path}: empty file, not an image")
        raise DatasetError(f"{path}: not a JPEG or PNG image (starts with {magic[:4]!r})")


def image_size(path: str) -> tuple:
    """(height, width) of a JPEG/PNG file from its header; DatasetError naming the file if bad."""
    height, width, _ = read_image_header(path)
    return height, width


def check_image(path: str, expected_size: Optional[Sequence[int]] = None,
                decode: bool = False) -> None:
    """Raises DatasetError (one line naming the file) if TF could not decode the image.

    Args:
        path: str, JPEG or PNG file.
        expected_size: optional (height, width) from the annotation file; a different stored size
            is an error (annotations would not fit the pixels).
        decode: also decode the pixels with :func:`decode_image_tf` (slow, exact); the cheap
            checks already catch every failure measured in TF 2.21 except corrupt PNG
            compressed data behind valid CRCs.
    """
    height, width, _ = read_image_header(path)
    if expected_size is not None and (height, width) != tuple(int(v) for v in expected_size):
        raise DatasetError(f"{path}: image is {height}x{width} (HxW) but the annotation says "
                           f"{int(expected_size[0])}x{int(expected_size[1])}")
    if decode:
        import tensorflow as tf

        with _open(path) as f:
            data = f.read()
        try:
            decode_image_tf(tf.constant(data))
        except tf.errors.OpError as e:
            reason = e.message.strip().splitlines()[-1][:120]
            raise DatasetError(f"{path}: TensorFlow cannot decode the image ({reason})") from None


def validate_images(records: Sequence[ImageRecord], on_error: str = "skip",
                    num_threads: int = 16, decode: bool = False) -> list:
    """Checks every record's image with :func:`check_image` in a thread pool.

    Args:
        records: list of ImageRecord.
        on_error: 'skip' drops bad images and logs one warning counting them and naming the first
            bad file; 'raise' raises the first DatasetError (in record order).
        num_threads: int, worker threads.
        decode: passed to :func:`check_image`.

    Returns:
        list of ImageRecord whose images are usable, in the input order.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', received: on_error={on_error!r}")

    def check(record):
        try:
            check_image(record.path, (record.height, record.width), decode=decode)
        except DatasetError as e:
            return e
        return None

    records = list(records)
    if not records:
        return []
    workers = max(1, min(int(num_threads), len(records)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        errors = list(pool.map(check, records))
    bad = [e for e in errors if e is not None]
    if bad and on_error == "raise":
        raise bad[0]
    if bad:
        logger.warning("skipped %d of %d images that cannot be decoded; first: %s",
                       len(bad), len(records), bad[0])
    return [r for r, e in zip(records, errors) if e is None]


def decode_image_tf(image_bytes):
    """Decodes an image file's bytes (JPEG; anything else via tf.io.decode_image) inside tf.data.

    Alpha is dropped, 16-bit PNG keeps its high byte, grayscale is replicated to 3 channels,
    CMYK/YCCK JPEG is converted by TF (see the module docstring); JPEG uses the accurate integer
    DCT so pixels match OpenCV/PIL.

    Args:
        image_bytes: string scalar tensor, the encoded file.

    Returns:
        uint8 tensor [H, W, 3], RGB.
    """
    import tensorflow as tf

    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8,
                                   expand_animations=False))
    return tf.ensure_shape(image, [None, None, 3])


def _region_rles(region, height: int, width: int, where: str) -> list:
    from pycocotools import mask as mask_utils

    if isinstance(region, dict):
        if "counts" not in region or "size" not in region:
            raise DatasetError(f"{where}: RLE segmentation without 'counts'/'size'")
        if [int(v) for v in region["size"]] != [height, width]:
            raise DatasetError(f"{where}: RLE size {list(region['size'])} does not match the "
                               f"image size {[height, width]}")
        if isinstance(region["counts"], list):
            return [mask_utils.frPyObjects(region, height, width)]
        return [region]
    polygons = [[float(v) for v in p] for p in region
                if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0]
    if not polygons:
        return []
    return mask_utils.frPyObjects(polygons, height, width)


def ignore_mask(record: ImageRecord) -> Optional[np.ndarray]:
    """Rasterises ``record.ignore_regions`` with pycocotools.

    Regions are COCO segmentations: polygon lists (polygons with fewer than 3 points are
    skipped), uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string).

    Args:
        record: ImageRecord.

    Returns:
        uint8 [H, W] with 1 = ignore, or None when nothing is ignored (no regions, or regions
        that cover no pixel).
    """
    from pycocotools import mask as mask_utils

    if not record.ignore_regions:
        return None
    height, width = int(record.height), int(record.width)
    where = f"image {record.image_id} ({record.path})"
    rles = []
    for region in record.ignore_regions:
        rles.extend(_region_rles(region, height, width, where))
    if not rles:
        return None
    mask = mask_utils.decode(mask_utils.merge(rles, intersect=0)).astype(np.uint8)
    if not mask.any():
        return None
    return mask
