"""Evaluates a model, or a codec's upper bound, on a config's validation split.

    python -m tfpose.evaluate --config C --oracle            # encode GT -> decode -> metrics
    python -m tfpose.evaluate --config C --checkpoint P      # a trained model

A checkpoint is run with ``eval.flip_test`` and ``eval.scales`` (tfpose.inference) and with the
codec's learned decoding parts of its run directory (``codec.load_assets``, e.g. dekr's scorer).

Prints a table of the metrics and, as its last line, one JSON object with them. Predictions are
written in the COCO results format (``--results``, default ``<train.out_dir>/results_val.json``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfpose import cli

FLAGS = cli.FLAGS


def to_original_pixels(keypoints: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Maps (x, y) of keypoints [P, K, 3] from input pixels to original pixels.

    `transform` is the [2, 3] affine input -> original of the eval pipeline; scores are kept.
    """
    out = keypoints.copy()
    out[..., :2] = keypoints[..., :2] @ transform[:, :2].T + transform[:, 2]
    return out


def poses_to_results(poses: dict, image_ids: np.ndarray, transforms: np.ndarray) -> list:
    """Decoded poses of a batch -> COCO keypoint results (original image pixels)."""
    results = []
    for b, image_id in enumerate(image_ids):
        n = int(poses["num_people"][b])
        kpts = to_original_pixels(np.asarray(poses["keypoints"][b, :n]), transforms[b])
        for p in range(n):
            results.append({"image_id": int(image_id), "category_id": 1,
                            "keypoints": [round(float(v), 3) for v in kpts[p].reshape(-1)],
                            "score": float(poses["scores"][b, p])})
    return results


def collect_results(dataset, outputs_fn, codec, max_images: int = 0) -> tuple:
    """Runs `outputs_fn(batch) -> network outputs` over an eval dataset and decodes.

    Returns:
        (COCO-format results, ids of every image run): metrics must be computed on those images
        only, or a ``max_images`` subset would count the images never run as misses.

    Args:
        dataset: eval tf.data.Dataset of dicts with image, image_id, transform, targets.
        outputs_fn: callable(batch dict) -> dict of network outputs for codec.decode.
        codec: the config's codec.
        max_images: int, stop after this many images (0 = all).
    """
    import tensorflow as tf

    decode = tf.function(codec.decode)
    results, image_ids = [], []
    for batch in dataset:
        poses = {k: v.numpy() for k, v in decode(outputs_fn(batch)).items()}
        ids = batch["image_id"].numpy()
        results += poses_to_results(poses, ids, batch["transform"].numpy())
        image_ids += [int(i) for i in ids]
        if max_images and len(image_ids) >= max_images:
            break
    return results, image_ids


def compute_metrics(cfg, results: list, image_ids=None) -> dict:
    """Metrics of cfg.eval.metric for COCO-format results on cfg.data.val (on the images
    `image_ids` only, when given)."""
    from tfpose import evaluation

    return evaluation.evaluate(cfg.eval.metric, cfg.data.val, results, cfg.spec,
                               image_ids=image_ids)


def evaluate(cfg, oracle: bool = False, checkpoint: str = "", results_path: str = "") -> dict:
    """Evaluates and returns the metrics; writes the results file when `results_path` is set."""
    from tfpose.data.pipeline import build_dataset
    from tfpose.evaluation.coco import write_coco_results
    from tfpose.inference import outputs_function, restore_for_inference
    from tfpose.registry import build_codec

    if oracle:
        codec = build_codec(cfg)
        outputs_fn = lambda batch: codec.oracle_outputs(batch["targets"])  # noqa: E731
    else:
        # The trained model and the codec's learned parts (e.g. a pose scorer) of its run;
        # eval.flip_test / eval.scales as in the paper's testing (tfpose.inference).
        model, codec = restore_for_inference(cfg, checkpoint)
        forward = outputs_function(cfg, model, codec)
        outputs_fn = lambda batch: forward(batch["image"])  # noqa: E731
    # targets are only needed by the oracle
    dataset = build_dataset(cfg, "val", codec if oracle else None, training=False)
    results, image_ids = collect_results(dataset, outputs_fn, codec, cfg.eval.max_images)
    if results_path:
        write_coco_results(results, results_path)
    return compute_metrics(cfg, results, image_ids)


def main(argv):
    del argv
    from tfpose.evaluation.report import format_table

    cfg = cli.load_config_from_flags()
    if not FLAGS.oracle and not FLAGS.checkpoint:
        raise cli.ConfigError("give --checkpoint PATH (a trained model) or --oracle")
    results_path = FLAGS.results or os.path.join(
        cfg.train.out_dir, "results_oracle.json" if FLAGS.oracle else "results_val.json")
    metrics = evaluate(cfg, FLAGS.oracle, FLAGS.checkpoint, results_path)
    print(format_table(metrics))
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))


if __name__ == "__main__":
    cli.define_config_flags()
    cli.flags.DEFINE_bool("oracle", False, "Evaluate the codec's upper bound: encode the ground "
                          "truth, decode it, and evaluate.")
    cli.flags.DEFINE_string("checkpoint", "", "Checkpoint of a trained model.")
    cli.flags.DEFINE_string("results", "", "Where to write COCO-format results.")
    cli.run(main)
