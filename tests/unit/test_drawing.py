"""Drawing: sticks of the spec's skeleton appear where the keypoints are, hidden ones do not."""

import numpy as np

from tfpose.drawing import draw_poses
from tfpose.keypoints import get_spec, spec_from_dict


def test_sticks_are_drawn_between_shown_keypoints():
    spec = spec_from_dict({"names": ["a", "b", "c"], "sigmas": [0.1] * 3,
                           "skeleton": [["a", "b"], ["b", "c"]]})
    image = np.zeros((64, 64, 3), np.uint8)
    pose = np.array([[[10.5, 10.5, 1.0], [50.5, 10.5, 0.9], [50.5, 50.5, 0.0]]], np.float32)
    out = draw_poses(image, pose, spec, keypoint_threshold=0.5, thickness=1)
    assert image.sum() == 0  # the input is not modified
    assert out[10, 30].sum() > 0  # on the a-b stick (pixel centre 30.5, 10.5)
    assert out[30, 50].sum() == 0  # b-c is not drawn: c is below the threshold
    assert out[50, 50].sum() == 0


def test_gray_input_and_many_people():
    spec = get_spec("coco")
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.uniform(0, 100, (5, spec.num_keypoints, 2)),
                            np.ones((5, spec.num_keypoints, 1))], axis=-1)
    out = draw_poses(np.zeros((100, 120), np.uint8), poses, spec, scores=np.ones(5))
    assert out.shape == (100, 120, 3) and out.any()
