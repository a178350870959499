"""The posedet method learns on the real coco_mini images: codec targets from the training
pipeline, the network and the loss of tfpose.methods.posedet, a few optimizer steps."""

import numpy as np
import tensorflow as tf

from training_cases import first_batch, tiny_config, train_on_batch


def test_training_loss_decreases_on_coco_mini(data_dir):
    cfg = tiny_config(data_dir, "posedet",
                      model={"backbone": "mobilenetv3", "width": 8, "fpn_channels": 16,
                             "head_channels": 16, "head_convs": 1, "bypass_convs": 1},
                      codec={"level_boundaries": [32.0, 64.0], "max_people": 8})
    images, targets = first_batch(cfg)
    assert int(tf.reduce_sum(tf.cast(targets["assigned"] >= 0, tf.int32))) > 0  # people
    history = train_on_batch(cfg, images, targets)
    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for h in history for v in h.values())
    for name in ("coarse", "heatmap"):
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])
    # At the start no coarse pose is near a person (OKS < 0.52): no refinement positives, and
    # the focal loss of the negatives alone is tiny. Once the coarse poses fit, candidates pass
    # the OKS thresholds and both terms switch on (Sec. 3.2: assignment on the coarse poses).
    assert first["refine"] == 0.0 and first["cls"] < 1e-2
    assert max(h["refine"] for h in history[-5:]) > 0 and max(h["cls"] for h in history) > 0.1
