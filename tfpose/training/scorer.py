"""The pose-scorer training stage (DEKR, paper 003 Sec. 3.2 "Scoring"): learn to predict OKS.

    python -m tfpose.train --config C --stage scorer      (after the main training of C)

Steps of :func:`train_scorer`:
    1. restore the trained model of ``train.out_dir`` (``best/`` when present, else the latest
       checkpoint in ``checkpoints/``);
    2. :func:`collect_scorer_data`: run it over the TRAINING split without augmentation
       (letterboxed, with ``eval.flip_test`` and ``eval.scales`` as evaluation runs it:
       tfpose.inference.outputs_function), take the codec's grouped candidates before scoring and pose
       NMS (``codec.decode_candidates``), and label every valid candidate with its OKS against
       the image's ground-truth people (max over the people, COCO OKS with the spec's sigmas and
       the annotated areas, in original-image pixels; 0 for an image without people). The
       scorer's input is :func:`tfpose.postprocess.scoring.pose_features` of the candidate in
       INPUT pixels with scale S, exactly what decode computes;
    3. :func:`fit_scorer`: train :func:`tfpose.postprocess.scoring.build_scorer` on it (Adam, MSE,
       batch 256, 10% of the candidates held out, all randomness seeded by ``cfg.seed``);
    4. write the weights atomically to ``<out_dir>/scorer.weights.h5`` (temp file in the same
       directory + ``os.replace``); the codec's ``load_assets(out_dir)`` picks them up.

The stage is generic: any codec with ``decode_candidates(outputs) -> {"keypoints" [B, M, K, 3],
"center_scores" [B, M], "valid" [B, M]}`` and ``load_assets`` can use it. Reported besides the
MSEs: the Spearman and Pearson correlations between the predicted score and the true OKS on the
held-out candidates, next to those of the naive score ``mean_k(h_k) * center score`` (paper).

Reference implementation facts (HRNet/HRNet-Bottom-Up-Pose-Estimation, lib/core/rescore.py and
experiments/coco/train_rescore_coco.yaml): Adam, lr 1e-3, MSE, 20 epochs, target = the best OKS
of the candidate against the ground truths; the defaults of :func:`train_scorer` follow them.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Callable, Optional

import numpy as np

from tfpose.config import ConfigError
from tfpose.fileio import fsync_path
from tfpose.postprocess.scoring import (SCORER_WEIGHTS, build_scorer, num_pose_features,
                                        pose_features)

log = logging.getLogger(__name__)

BATCH_SIZE = 256
VAL_FRACTION = 0.1


# --- targets ------------------------------------------------------------------------------------


def oks_targets(candidates: np.ndarray, gt_keypoints: np.ndarray, gt_areas: np.ndarray,
                sigmas) -> np.ndarray:
    """The regression target of each candidate: its best OKS over the ground-truth people.

    Args:
        candidates: float [P, K, 2 or 3], candidate poses in original-image pixels.
        gt_keypoints: float [G, K, 3], the image's ground-truth people (x, y, v).
        gt_areas: float [G], their areas (OKS scale s^2).
        sigmas: [K] OKS sigmas of the spec.

    Returns:
        float32 [P]; zeros when G = 0.
    """
    from tfpose.evaluation.oks import oks

    candidates = np.asarray(candidates, np.float64)
    gt_keypoints = np.asarray(gt_keypoints, np.float64).reshape(-1, len(sigmas), 3)
    if candidates.shape[0] == 0 or gt_keypoints.shape[0] == 0:
        return np.zeros([candidates.shape[0]], np.float32)
    return oks(candidates, gt_keypoints, gt_areas, sigmas).max(axis=1).astype(np.float32)


def naive_scores(keypoints: np.ndarray, center_scores: np.ndarray) -> np.ndarray:
    """The paper's naive score (1/K) sum_k h_k(p_k) * o(p): [..., K, 3], [...] -> [...]."""
    return np.asarray(keypoints)[..., 2].mean(axis=-1) * np.asarray(center_scores)


# --- data collection ----------------------------------------------------------------------------


def _train_records(cfg):
    from tfpose.data.readers import read_split

    split = cfg.data.train
    if not split.annotations:
        raise ConfigError(f"{cfg.source or '<config>'}: the scorer stage needs "
                          f"data.train.annotations (ground-truth areas for the OKS targets; "
                          f"TFRecord shards do not carry them)")
    return read_split(split, cfg.spec)


def collect_scorer_data(cfg, codec, outputs_fn: Callable, max_images: int = 0, *,
                        records: Optional[list] = None, encode_targets: bool = False) -> dict:
    """Candidate poses of the training split, their features and their OKS targets.

    Args:
        cfg: Config (data.train, data.input_size, eval.batch_size, spec).
        codec: a codec with ``decode_candidates`` (see the module docstring).
        outputs_fn: callable(batch dict) -> network outputs (what ``decode_candidates`` takes);
            the batch has ``image`` [B, S, S, 3], ``image_id``, ``transform`` and, with
            ``encode_targets``, ``targets``.
        max_images: int, stop after this many images (0 = all).
        records: optional ImageRecord list of the training split (default: read data.train).
        encode_targets: bool, build the dataset with the codec so that batches carry its
            ``targets`` (oracle outputs in tests); the real stage only needs images.

    Returns:
        dict of numpy arrays over the N valid candidates: ``features`` float32 [N, F],
        ``oks`` float32 [N] (targets), ``naive_scores`` float32 [N], ``image_ids`` int64 [N];
        and ``num_images`` (int, images seen).
    """
    import tensorflow as tf

    from tfpose.data.pipeline import build_dataset
    from tfpose.evaluate import to_original_pixels

    spec = cfg.spec
    sigmas = spec.sigmas_array
    if records is None:
        records = _train_records(cfg)
    ground_truth = {int(r.image_id): r for r in records}
    dataset = build_dataset(cfg, "train", codec if encode_targets else None, training=False,
                            records=records)
    scale = float(cfg.data.input_size)

    @tf.function
    def candidates_of(outputs):
        cand = codec.decode_candidates(outputs)
        return cand, pose_features(cand["keypoints"], spec, scale)

    features, targets, naive, image_ids = [], [], [], []
    seen = 0
    for batch in dataset:
        cand, feats = candidates_of(outputs_fn(batch))
        keypoints = cand["keypoints"].numpy()
        valid = cand["valid"].numpy().astype(bool)
        naive_batch = naive_scores(keypoints, cand["center_scores"].numpy())
        feats = feats.numpy()
        transforms = batch["transform"].numpy()
        for b, image_id in enumerate(batch["image_id"].numpy()):
            if max_images and seen >= max_images:
                break
            seen += 1
            keep = valid[b]
            record = ground_truth[int(image_id)]
            original = to_original_pixels(keypoints[b][keep], transforms[b])
            targets.append(oks_targets(original, record.keypoints, record.areas, sigmas))
            features.append(feats[b][keep])
            naive.append(naive_batch[b][keep])
            image_ids.append(np.full([int(keep.sum())], int(image_id), np.int64))
            if seen % 1000 == 0:
                log.info("scorer stage: %d images, %d candidates", seen,
                         sum(len(t) for t in targets))
        if max_images and seen >= max_images:
            break
    num_features = num_pose_features(spec)

    def cat(parts, dtype, shape):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    return {"features": cat(features, np.float32, [0, num_features]),
            "oks": cat(targets, np.float32, [0]),
            "naive_scores": cat(naive, np.float32, [0]),
            "image_ids": cat(image_ids, np.int64, [0]),
            "num_images": seen}


# --- fitting ------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties getting their mean rank (as scipy.stats.rankdata - 1)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def pearson(a, b) -> float:
    """Pearson correlation; NaN for fewer than 2 values or a constant input."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson of the tie-averaged ranks)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return float("nan")
    return pearson(_ranks(a), _ranks(b))


def split_train_val(n: int, seed: int, val_fraction: float = VAL_FRACTION):
    """Seeded permutation of range(n) cut into (train, val) index arrays; val has
    round(n * val_fraction) items (at least 1 when n >= 2, none when n < 2)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if n < 2 else min(n - 1, max(1, int(round(n * val_fraction))))
    return order[n_val:], order[:n_val]


def _predict(model, x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 0:
        return np.zeros([0], np.float32)
    out = [model(x[i:i + 4096], training=False).numpy()[:, 0] for i in range(0, len(x), 4096)]
    return np.concatenate(out)


def fit_scorer(features: np.ndarray, targets: np.ndarray, spec, *, epochs: int,
               learning_rate: float, seed: int, batch_size: int = BATCH_SIZE,
               val_fraction: float = VAL_FRACTION, naive: Optional[np.ndarray] = None):
    """Trains a fresh scorer (Adam, MSE) on features [N, F] -> targets [N].

    Args:
        features, targets: the training data (from :func:`collect_scorer_data`).
        spec: KeypointSpec (network input size).
        epochs: int >= 1, passes over the training part (the last batch may be smaller).
        learning_rate: float, Adam's learning rate.
        seed: int, seeds the initialisation, the train/val split and the shuffling.
        batch_size: int.
        val_fraction: float, share of the candidates held out for the validation metrics.
        naive: optional float [N], naive scores, correlated with the targets on the held-out part
            for comparison.

    Returns:
        (keras model, dict of metrics: train/val counts, ``train_mse`` (final weights, whole
        training part), ``val_mse``, ``val_spearman``, ``val_pearson`` and, with ``naive``,
        ``naive_val_spearman``, ``naive_val_pearson``, plus ``initial_train_mse``).
    """
    import keras
    import tensorflow as tf

    features = np.asarray(features, np.float32)
    targets = np.asarray(targets, np.float32).reshape(-1)
    if features.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(f"features [N, F] and targets [N] disagree: {features.shape} vs "
                         f"{targets.shape}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    train_idx, val_idx = split_train_val(features.shape[0], seed, val_fraction)
    x_train, y_train = features[train_idx], targets[train_idx]
    x_val, y_val = features[val_idx], targets[val_idx]

    model = build_scorer(spec, seed=seed)
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)
    signature = [tf.TensorSpec([None, features.shape[1]], tf.float32),
                 tf.TensorSpec([None], tf.float32)]

    @tf.function(input_signature=signature)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)[:, 0] - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def mse(x, y):
        return float(np.mean((_predict(model, x) - y) ** 2)) if len(y) else float("nan")

    initial = mse(x_train, y_train)
    rng = np.random.default_rng([seed, 1])
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        losses = [float(train_step(x_train[order[i:i + batch_size]],
                                   y_train[order[i:i + batch_size]]))
                  for i in range(0, len(order), batch_size)]
        log.info("scorer epoch %d/%d: train MSE %.5f", epoch + 1, epochs,
                 float(np.mean(losses)) if losses else float("nan"))

    predicted = _predict(model, x_val)
    stats = {
        "train_candidates": int(len(y_train)),
        "val_candidates": int(len(y_val)),
        "initial_train_mse": initial,
        "train_mse": mse(x_train, y_train),
        "val_mse": float(np.mean((predicted - y_val) ** 2)) if len(y_val) else float("nan"),
        "val_spearman": spearman(predicted, y_val),
        "val_pearson": pearson(predicted, y_val),
    }
    if naive is not None:
        naive_val = np.asarray(naive, np.float64).reshape(-1)[val_idx]
        stats["naive_val_spearman"] = spearman(naive_val, y_val)
        stats["naive_val_pearson"] = pearson(naive_val, y_val)
    return model, stats


# --- the stage ----------------------------------------------------------------------------------


def trained_model_path(out_dir: str) -> str:
    """Where the trained model of a run is read: ``<out_dir>/best`` when it holds a checkpoint,
    else ``out_dir`` (its ``checkpoints/``); CheckpointError naming out_dir when neither does."""
    from tfpose.training.checkpoint import POINTER, CheckpointError

    best = os.path.join(out_dir, "best")
    if os.path.isfile(os.path.join(best, POINTER)):
        return best
    if os.path.isfile(os.path.join(out_dir, "checkpoints", POINTER)):
        return out_dir
    raise CheckpointError(f"{out_dir}: no trained model for the scorer stage (neither best/ nor "
                          f"checkpoints/ holds a checkpoint); run the main training first")


def save_weights_atomic(model, path: str) -> str:
    """``model.save_weights`` to a temporary file next to ``path``, fsync, then ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.weights.h5")
    try:
        model.save_weights(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_path(directory)
    return path


def train_scorer(cfg, args=None, *, epochs: int = 20, learning_rate: float = 1e-3,
                 max_images: int = 0) -> dict:
    """The scorer stage (module docstring); returns and logs its summary.

    Args:
        cfg: Config of a trained run (``method``, ``train.out_dir``, ``data.train``).
        args: tfpose.training.loop.RunArgs (only its strategy is used: non-chief workers of a
            multi-worker run do not write the weights file).
        epochs: int, passes over the candidates.
        learning_rate: float, Adam's learning rate.
        max_images: int, training images to collect candidates from (0 = all).

    Returns:
        dict: ``candidates``, ``images``, ``train_candidates``, ``val_candidates``,
        ``train_mse``, ``val_mse``, ``val_spearman``, ``val_pearson``, ``naive_val_spearman``,
        ``naive_val_pearson``, ``initial_train_mse``, ``checkpoint`` (the prefix restored) and
        ``weights`` (the file written, "" on non-chief workers).
    """
    from tfpose.inference import outputs_function
    from tfpose.registry import METHODS, build_codec
    from tfpose.training import strategy as strategy_lib
    from tfpose.training.checkpoint import restore_model

    if not cfg.method:
        raise ConfigError(f"{cfg.source or '<config>'}: the scorer stage needs a 'method'")
    codec = build_codec(cfg)
    if not hasattr(codec, "decode_candidates"):
        raise ConfigError(f"{cfg.source or '<config>'}: codec '{codec.name}' has no "
                          f"decode_candidates; the scorer stage cannot use it")
    out_dir = cfg.train.out_dir
    model = METHODS[cfg.method].build_model(cfg)
    prefix = restore_model(model, trained_model_path(out_dir))
    log.info("scorer stage: model restored from %s", prefix)

    # the outputs decode sees at test time: eval.flip_test and eval.scales as in evaluation
    forward = outputs_function(cfg, model, codec)
    data = collect_scorer_data(cfg, codec, lambda batch: forward(batch["image"]), max_images)
    n = int(data["oks"].shape[0])
    if n == 0:
        raise ConfigError(f"{cfg.source or '<config>'}: the model produced no candidate pose on "
                          f"{data['num_images']} training images; nothing to train the scorer on")
    log.info("scorer stage: %d candidates from %d images (mean OKS %.3f, %.1f%% with OKS > 0.5)",
             n, data["num_images"], float(data["oks"].mean()),
             100.0 * float((data["oks"] > 0.5).mean()))

    scorer, stats = fit_scorer(data["features"], data["oks"], cfg.spec, epochs=epochs,
                               learning_rate=learning_rate, seed=cfg.seed,
                               naive=data["naive_scores"])
    weights = ""
    strategy = getattr(args, "strategy", None)
    if strategy is None or strategy_lib.is_chief(strategy):
        weights = save_weights_atomic(scorer, os.path.join(out_dir, SCORER_WEIGHTS))
    result = {"candidates": n, "images": int(data["num_images"]), **stats,
              "checkpoint": prefix, "weights": weights}
    log.info("scorer stage: train MSE %.5f, val MSE %.5f; val Spearman %.3f (naive score %.3f), "
             "Pearson %.3f (naive %.3f); weights %s", stats["train_mse"], stats["val_mse"],
             stats["val_spearman"], stats["naive_val_spearman"], stats["val_pearson"],
             stats["naive_val_pearson"], weights or "-")
    return result
