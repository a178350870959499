"""Keypoint specs: built-ins are consistent, custom specs are validated."""

import numpy as np
import pytest

from tfpose.keypoints import BUILTIN_SPECS, CENTER, SpecError, get_spec, spec_from_dict


@pytest.mark.parametrize("name, k", [("coco", 17), ("crowdpose", 14), ("mpii", 16)])
def test_builtin_sizes_and_flips(name, k):
    spec = get_spec(name)
    assert spec.num_keypoints == k == len(spec.sigmas)
    flip = spec.flip_index
    assert np.array_equal(flip[flip], np.arange(k))  # an involution
    for i, j in spec.flip_pairs:  # flip pairs swap left and right names
        a, b = spec.names[i], spec.names[j]
        assert {a.split("_")[0], b.split("_")[0]} == {"left", "right"}
        assert a.split("_", 1)[1] == b.split("_", 1)[1]
    unpaired = [spec.names[i] for i in range(k) if flip[i] == i]
    assert not any(n.startswith(("left", "right")) for n in unpaired)


def test_builtin_specs_match_dataset_files(data_dir):
    import json

    for name, path in (("coco", "coco_mini/test_coco.json"),
                       ("crowdpose", "crowdpose_mini/test_crowdpose.json")):
        category = json.loads((data_dir / path).read_text())["categories"][0]
        assert list(get_spec(name).names) == category["keypoints"]
    coco = json.loads((data_dir / "coco_mini/test_coco.json").read_text())["categories"][0]
    assert {tuple(sorted(p)) for p in get_spec("coco").skeleton} == \
        {tuple(sorted((a - 1, b - 1))) for a, b in coco["skeleton"]}


def test_double_embedding_hierarchy_ends_at_roots():
    for spec in BUILTIN_SPECS.values():
        assert len(spec.root_joints) == 4
        for i in range(spec.num_keypoints):
            j, steps = i, 0
            while j >= 0 and j not in spec.root_joints:
                j, steps = spec.parents[j], steps + 1
            assert steps <= 3
    coco = get_spec("coco")
    ankle = coco.names.index("left_ankle")
    chain = [coco.names[coco.parents[ankle]], coco.names[coco.parents[coco.parents[ankle]]]]
    assert chain == ["left_knee", "left_hip"]  # paper 000: ankle -> knee -> hip
    assert coco.parents[coco.names.index("nose")] == -1  # face joints -> centre


def test_to_dict_round_trip():
    for spec in BUILTIN_SPECS.values():
        assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("patch, needle", [
    ({"sigmas": [0.1]}, "1 sigmas for 3 keypoints"),
    ({"sigmas": [0.1, 0.0, 0.1]}, "sigmas must be positive"),
    ({"flip_pairs": [["a", "a"]]}, "flip_pairs entry"),
    ({"flip_pairs": [["a", "b"], ["b", "c"]]}, "more than one flip pair"),
    ({"skeleton": [[0, 7]]}, "skeleton entry [0, 7]"),
    ({"names": ["a", "a", "c"]}, "duplicate keypoint names"),
    ({"parents": {"c": "b", "b": "c"}}, "has a cycle"),
    ({"parents": {"c": "zz"}}, "unknown keypoint 'zz'"),
    ({"colour": 1}, "unknown key 'colour'"),
])
def test_custom_spec_errors(patch, needle):
    data = {"names": ["a", "b", "c"], "sigmas": [0.1, 0.1, 0.1], **patch}
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    assert needle in str(info.value)


def test_custom_spec_parents_default_to_centre():
    spec = spec_from_dict({"names": ["a", "b", "c"], "sigmas": [0.1] * 3,
                           "root_joints": ["a"], "parents": {"c": "b"}})
    assert spec.parents == (-2, -1, 1)
    assert spec.to_dict()["parents"] == {"b": CENTER, "c": "b"}
