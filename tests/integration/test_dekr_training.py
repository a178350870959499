"""The dekr method learns on the real coco_mini images: codec targets from the training pipeline,
the network and the loss of tfpose.methods.dekr, a few optimizer steps."""

import numpy as np
import tensorflow as tf

from training_cases import first_batch, tiny_config, train_on_batch


def test_training_loss_decreases_on_coco_mini(data_dir):
    cfg = tiny_config(data_dir, "dekr",
                      model={"width": 8, "stem_channels": 16, "regression_channels": 16,
                             "offset_branch_channels": 4},
                      codec={})
    images, targets = first_batch(cfg)
    assert float(tf.reduce_sum(targets["offset_weights"])) > 0  # people with centre regions
    history = train_on_batch(cfg, images, targets)
    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for h in history for v in h.values())
    assert sum(last.values()) < 0.7 * sum(first.values())
    for name in ("heatmap", "center", "offset"):
        assert last[name] < first[name], (name, first[name], last[name])
