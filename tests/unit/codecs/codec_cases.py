"""Helpers shared by the codec tests: encoding in numpy terms, batching, people on a grid,
matching decoded people to ground truth, and the oracle evaluation of a shipped config."""

import numpy as np
import tensorflow as tf


def encode(codec, keypoints, mask=None):
    """codec.encode on numpy keypoints [N, K, 3] (mask: all valid), as numpy arrays."""
    kp = np.asarray(keypoints, np.float32).reshape(-1, codec.num_keypoints, 3)
    if mask is None:
        mask = np.ones((codec.input_size, codec.input_size), np.float32)
    return {k: v.numpy() for k, v in codec.encode(kp, mask).items()}


def batch(*targets):
    return {k: tf.stack([t[k] for t in targets]) for k in targets[0]}


def synthetic_people(rng, size, k, cell=64, jitter=20.0, unlabelled=0):
    """One person per cell of a grid: same-type keypoints of two people >= cell - 2 jitter apart."""
    people = []
    for cy in range(cell // 2, size, cell):
        for cx in range(cell // 2, size, cell):
            kp = np.zeros((k, 3), np.float32)
            kp[:, 0] = cx + rng.uniform(-jitter, jitter, k)
            kp[:, 1] = cy + rng.uniform(-jitter, jitter, k)
            kp[:, 2] = 2
            people.append(kp)
    people = np.stack(people)
    if unlabelled:
        people[0, rng.choice(k, unlabelled, replace=False), 2] = 0
    return people


def match_people(decoded, n, gt, tol):
    """Every GT person is decoded exactly once, with every labelled keypoint within tol."""
    assert n == len(gt)
    used = set()
    for person in gt:
        lab = person[:, 2] > 0
        errs = [np.abs(decoded[p, lab, :2] - person[lab, :2]).max() for p in range(n)]
        best = int(np.argmin(errs))
        assert errs[best] < tol, (errs[best], best)
        assert best not in used
        used.add(best)
        assert (decoded[best, lab, 2] > 0.5).all()


def oracle_metrics(repo_dir, monkeypatch, name, overrides=()):
    """Metrics of ``python -m tfpose.evaluate --config configs/oracle/<name>.yaml --oracle``."""
    from tfpose.config import load_config
    from tfpose.evaluate import evaluate

    monkeypatch.chdir(repo_dir)  # the shipped configs name ../shared/data relative to the repo
    cfg = load_config(str(repo_dir / "configs" / "oracle" / f"{name}.yaml"), list(overrides))
    return evaluate(cfg, oracle=True)
