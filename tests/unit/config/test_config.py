"""Config loading: every shipped YAML validates; bad values name the file and the key."""

import math

import pytest
import yaml

from tfpose.config import ConfigError, apply_overrides, config_from_dict, load_config, to_dict


def _configs(repo_dir):
    return sorted((repo_dir / "configs").rglob("*.yaml"))


def test_every_shipped_config_loads(repo_dir):
    paths = _configs(repo_dir)
    assert paths, "no configs shipped"
    for path in paths:
        cfg = load_config(str(path))
        assert cfg.source == str(path)
        assert cfg.codec is not None
        assert cfg.spec.num_keypoints == len(cfg.spec.names)


def test_round_trip_through_dict(repo_dir):
    for path in _configs(repo_dir):
        cfg = load_config(str(path))
        again = config_from_dict(to_dict(cfg), source=str(path))
        assert to_dict(again) == to_dict(cfg)


def _write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BASE = {"codec": {"type": "ae"}, "data": {"keypoints": "coco"}}


@pytest.mark.parametrize("patch, needle", [
    ({"data": {"keypoints": "coco", "augmnt": {}}}, "unknown key 'data.augmnt'"),
    ({"codec": {"type": "ae", "sigma": math.nan}}, "codec.sigma must be finite"),
    ({"codec": {"type": "ae", "sigma": "two"}}, "codec.sigma must be a number"),
    ({"codec": {"type": "ae", "max_people": 0}}, "codec.max_people = 0 is out of range"),
    ({"codec": {"type": "ae", "nms_kernel": 4}}, "nms_kernel = 4 must be odd"),
    ({"codec": {"type": "nope"}}, "codec.type = 'nope'"),
    ({"data": {"input_size": 512.5}}, "data.input_size must be an integer"),
    ({"data": {"augment": {"flip": 1.5}}}, "data.augment.flip = 1.5 is out of range"),
    ({"data": {"augment": {"scale_min": 2.0, "scale_max": 1.0}}}, "scale_min = 2.0 is larger"),
    ({"data": {"keypoints": "coco18"}}, "unknown keypoint spec 'coco18'"),
    ({"data": {"train": {"format": "voc"}}}, "data.train.format = 'voc'"),
    ({"eval": {"scales": [1.0, math.inf]}}, "eval.scales[1] must be finite"),
    ({"train": {"lr_steps": [90, 200], "epochs": 140}}, "go past epochs"),
    ({"method": "nosuch"}, "method = 'nosuch'"),
    ({"data": {"deterministic": "yes"}}, "data.deterministic must be true or false"),
])
def test_bad_values_name_file_and_key(tmp_path, patch, needle):
    data = {**BASE, **patch}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path + ":"), message
    assert needle in message, message
    assert "\n" not in message


def test_overrides_apply_and_are_validated(tmp_path):
    path = _write(tmp_path, BASE)
    cfg = load_config(path, ["data.batch_size=3", "codec.strides=[4, 2]", "data.keypoints=mpii"])
    assert cfg.data.batch_size == 3 and cfg.codec.strides == [4, 2]
    assert cfg.spec.num_keypoints == 16
    with pytest.raises(ConfigError, match=r"c.yaml \(--set\): override 'data.batch_size' is not"):
        load_config(path, ["data.batch_size"])
    with pytest.raises(ConfigError, match="unknown key 'data.batchsize'"):
        load_config(path, ["data.batchsize=3"])
    with pytest.raises(ConfigError, match="data.batch_size must be an integer"):
        load_config(path, ["data.batch_size=.nan"])


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_inline_custom_spec(tmp_path):
    spec = {"names": ["a", "b", "c", "d", "e"], "sigmas": [0.05] * 5,
            "flip_pairs": [["b", "c"]], "skeleton": [["a", "b"], ["a", "c"]]}
    cfg = load_config(_write(tmp_path, {**BASE, "data": {"keypoints": spec}}))
    assert cfg.spec.num_keypoints == 5
    assert list(cfg.spec.flip_index) == [0, 2, 1, 3, 4]
    bad = {**spec, "flip_pairs": [["b", "zz"]]}
    with pytest.raises(ConfigError, match="data.keypoints: .*unknown keypoint 'zz'"):
        load_config(_write(tmp_path, {**BASE, "data": {"keypoints": bad}}))


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML at line"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
