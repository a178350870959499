"""Fixtures of the training-engine tests: the toy method registered for one test only."""

import pytest

from tfpose import config as config_module
from tfpose import registry

import toy_method


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Registers the toy codec for one test; returns a factory of Trainer keyword arguments."""
    codec_cls = toy_method.make_codec_class()
    monkeypatch.setitem(registry.CODECS, "toy", codec_cls)
    monkeypatch.setitem(config_module._SECTIONS["codec"], "toy", toy_method.ToyCodecConfig)

    def trainer_kwargs(cfg, **overrides):
        kwargs = dict(method=toy_method.make_method(),
                      codec=codec_cls(cfg.codec, cfg.spec, cfg.data.input_size),
                      train_dataset_fn=toy_method.train_dataset_fn(cfg.seed),
                      eval_dataset_fn=toy_method.eval_dataset_fn)
        kwargs.update(overrides)
        return kwargs

    return trainer_kwargs
