"""The dekr method's cross-field config checks: one ConfigError naming the key at fault."""

import pytest

from method_cases import raw_config

from tfpose.config import ConfigError, config_from_dict

_BASE = {"method": "dekr", "model": {"type": "dekr", "width": 8}, "codec": {"type": "dekr"},
         "loss": {"type": "dekr"}, "data": {"keypoints": "coco", "input_size": 128}}


def _raw(**changes):
    return raw_config(_BASE, **changes)


def test_valid_config_passes():
    cfg = config_from_dict(_raw())
    assert cfg.method == "dekr" and cfg.codec.stride == 4


@pytest.mark.parametrize("changes, message", [
    ({"codec": {"type": "ae"}}, "needs 'codec.type: dekr'"),
    ({"loss": None}, "needs 'loss.type: dekr'"),
    ({"codec__stride": 2}, "codec.stride = 2"),
    ({"data__input_size": 100}, "data.input_size = 100 must be a multiple of 32"),
])
def test_cross_field_errors_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict(_raw(**changes))
