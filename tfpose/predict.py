"""Runs a trained model on image files: drawn poses and one COCO-format predictions file.

    python -m tfpose.predict --config C --checkpoint P --image a.jpg [--image 'dir/*.jpg' ...] \\
        [--out DIR] [--pose_threshold 0.1] [--keypoint_threshold 0.1]

Each image is checked and decoded as in the data pipeline (RGB, alpha dropped, EXIF orientation
ignored), letterboxed to the config's input size (``eval_affine`` + ``warp_image``, as the eval
pipeline), run with ``eval.flip_test`` / ``eval.scales`` (tfpose.inference), decoded by the
codec and mapped back to the image's own pixels. Written to ``--out`` (default
``<train.out_dir>/predict``), each file atomically (temporary file + os.replace):

* ``<stem>.png`` (or ``.jpg`` with ``--format jpg``): the image with the poses drawn (people
  with a pose score >= ``--pose_threshold``, their keypoints scored >= ``--keypoint_threshold``);
  a stem seen twice, or a name that would overwrite an input image, gets ``_1``, ``_2``... appended;
* ``predictions.json``: COCO keypoint results ``{"image_id", "category_id": 1, "keypoints":
  [x1, y1, s1, ...], "score"}`` plus ``"file_name"`` (the image path as given). ``image_id`` is the
  file stem as an integer when every stem is a distinct number (COCO file names), otherwise the
  image's 0-based position in the command line order.

Prints one line per image (people found, people drawn, drawing written), then the predictions
file. Missing, non-image or truncated files end the run with one ``error: <file>: ...`` line
(exit status 2) before anything is written (a file TF cannot decode behind a valid header: when
its turn comes).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from tfpose import cli
from tfpose.fileio import atomic_write

FLAGS = cli.FLAGS

PREDICTIONS_FILE = "predictions.json"


def expand_images(patterns) -> list:
    """Image paths from --image values: globs are expanded (sorted), plain paths kept as given.

    A glob that matches nothing is a DatasetError naming it; duplicates are dropped.
    """
    from tfpose.data.records import DatasetError

    paths = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matched:
                raise DatasetError(f"--image {pattern}: no file matches")
            paths.extend(matched)
        else:
            paths.append(pattern)
    seen, unique = set(), []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise DatasetError("give at least one --image FILE (or glob)")
    return unique


def read_image(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of a JPEG/PNG file, decoded as in the data pipeline.

    Raises DatasetError (one line naming the file) for a missing, non-image, truncated or
    undecodable file.
    """
    import tensorflow as tf

    from tfpose.data.images import decode_image_tf, read_image_header
    from tfpose.data.records import DatasetError

    read_image_header(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode_image_tf(tf.constant(data)).numpy()
    except tf.errors.OpError as e:
        reason = e.message.strip().splitlines()[-1][:120] if e.message.strip() else type(e).__name__
        raise DatasetError(f"{path}: TensorFlow cannot decode the image ({reason})") from None


def letterbox(image: np.ndarray, input_size: int):
    """(float32 [S, S, 3] input, float32 [2, 3] input -> original affine) as the eval pipeline."""
    from tfpose.data import augment

    matrix = augment.eval_affine(np.shape(image)[:2], input_size)
    warped = augment.warp_image(image, matrix, input_size)
    return warped.numpy(), augment.invert_affine(matrix)[:2].numpy()


def image_ids(paths) -> list:
    """COCO image ids: numeric stems when all are distinct numbers, else 0-based positions."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(paths)))


def output_names(paths, extension: str, out_dir: str = "") -> list:
    """``<stem>.<extension>`` per image, made unique with ``_1``, ``_2``... suffixes.

    A name that would overwrite one of the input images (an input inside ``out_dir``) or the
    predictions file gets a suffix as well.
    """
    inputs = {os.path.abspath(p) for p in paths}
    names, used = [], set()
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        name, n = f"{stem}.{extension}", 0
        while (name in used or name == PREDICTIONS_FILE
               or (out_dir and os.path.abspath(os.path.join(out_dir, name)) in inputs)):
            n += 1
            name = f"{stem}_{n}.{extension}"
        used.add(name)
        names.append(name)
    return names


def encode_image(image_bgr: np.ndarray, extension: str) -> bytes:
    import cv2

    ok, buf = cv2.imencode(f".{extension}", image_bgr)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a .{extension} image")
    return buf.tobytes()


def pose_results(poses: dict, index: int, image_id: int, file_name: str,
                 transform: np.ndarray) -> tuple:
    """(keypoints [P, K, 3] original pixels, scores [P], COCO results) of one decoded image."""
    from tfpose.evaluate import to_original_pixels

    n = int(poses["num_people"][index])
    kpts = to_original_pixels(np.asarray(poses["keypoints"][index, :n], np.float32), transform)
    scores = np.asarray(poses["scores"][index, :n], np.float32)
    # Non-finite values (a diverged model) would make invalid JSON: such keypoints get 0, 0, 0.
    bad = ~np.isfinite(kpts).all(axis=-1)
    kpts[bad] = 0.0
    scores = np.where(np.isfinite(scores), scores, 0.0).astype(np.float32)
    results = [{"image_id": int(image_id), "category_id": 1,
                "keypoints": [round(float(v), 3) for v in kpts[p].reshape(-1)],
                "score": round(float(scores[p]), 6), "file_name": file_name}
               for p in range(n)]
    return kpts, scores, results


def predict_images(cfg, checkpoint: str, paths, out_dir: str, extension: str = "png",
                   keypoint_threshold: float = 0.1, pose_threshold: float = 0.1,
                   echo=print) -> dict:
    """Predicts, draws and writes every image; returns {"images": [...], "predictions": path}.

    Every decoded person goes to ``predictions.json`` (AP needs the low-scored ones too); the
    drawings show the people whose pose score is at least `pose_threshold` and, of them, the
    keypoints scored at least `keypoint_threshold`.

    Every file's header is checked (tfpose.data.images.read_image_header: missing, not an image,
    truncated) before the model is built, so a bad file fails fast; a file whose pixels TF
    cannot decode behind a valid header stops the run when its turn comes (DatasetError).
    """
    from tfpose.data.images import read_image_header
    from tfpose.drawing import draw_poses
    from tfpose.inference import predictor, restore_for_inference

    paths = list(paths)
    for p in paths:
        read_image_header(p)
    model, codec = restore_for_inference(cfg, checkpoint)
    predict = predictor(cfg, model, codec)
    size = cfg.data.input_size
    ids, names = image_ids(paths), output_names(paths, extension, out_dir)
    results, written = [], []
    for path, image_id, name in zip(paths, ids, names):
        image = read_image(path)
        warped, transform = letterbox(image, size)
        poses = {k: v.numpy() for k, v in predict(warped[None]).items()}
        kpts, scores, found = pose_results(poses, 0, image_id, path, transform)
        results += found
        # Far-off keypoints (untrained models) are clipped so cv2's fixed-point coordinates
        # cannot overflow; anything within 10 image sizes is drawn as predicted.
        limit = 10.0 * max(image.shape[:2])
        shown = np.concatenate([np.clip(kpts[..., :2], -limit, limit), kpts[..., 2:]], -1)
        confident = scores >= pose_threshold
        num_drawn = int(confident.sum())
        drawn = draw_poses(np.ascontiguousarray(image[..., ::-1]), shown[confident], cfg.spec,
                           scores[confident], keypoint_threshold=keypoint_threshold)
        out_path = atomic_write(os.path.join(out_dir, name), encode_image(drawn, extension))
        written.append({"image": path, "people": len(found), "drawn": num_drawn,
                        "output": out_path})
        echo(f"{path}: {len(found)} {'person' if len(found) == 1 else 'people'}, "
             f"{num_drawn} with pose score >= {pose_threshold:g} drawn -> {out_path}")
    predictions = atomic_write(os.path.join(out_dir, PREDICTIONS_FILE),
                               json.dumps(results, allow_nan=False).encode("utf-8"))
    echo(f"predictions: {predictions}")
    return {"images": written, "predictions": predictions}


def main(argv):
    cfg = cli.load_config_from_flags()
    if not FLAGS.checkpoint:
        raise cli.ConfigError("give --checkpoint PATH (a trained run or checkpoint)")
    paths = expand_images(list(FLAGS.image) + list(argv[1:]))  # --image a.jpg b.jpg works too
    out_dir = FLAGS.out or os.path.join(cfg.train.out_dir, "predict")
    predict_images(cfg, FLAGS.checkpoint, paths, out_dir, FLAGS.format, FLAGS.keypoint_threshold,
                   FLAGS.pose_threshold)


if __name__ == "__main__":
    cli.define_config_flags()
    cli.flags.DEFINE_string("checkpoint", "", "Checkpoint of a trained model (run directory, "
                            "checkpoint directory or prefix).")
    cli.flags.DEFINE_multi_string("image", [], "Image file or glob (quote it), repeatable; "
                                  "several files may also follow one --image.")
    cli.flags.DEFINE_string("out", "", "Output folder (default <train.out_dir>/predict).")
    cli.flags.DEFINE_enum("format", "png", ["png", "jpg"], "Format of the drawn images.")
    cli.flags.DEFINE_float("keypoint_threshold", 0.1, "Keypoints with a lower score are not "
                           "drawn (all are written to predictions.json).")
    cli.flags.DEFINE_float("pose_threshold", 0.1, "People with a lower pose score are not drawn "
                           "(all are written to predictions.json).")
    cli.run(main)
