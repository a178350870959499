"""tfpose.layers.normalize.ImageNormalization."""

import keras
import numpy as np
import pytest

from tfpose.layers.normalize import IMAGENET_MEAN, IMAGENET_STD, ImageNormalization


def test_uint8_and_float_pixels_give_imagenet_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    expected = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    layer = ImageNormalization()
    for x in (pixels, pixels.astype(np.float32)):
        y = layer(x)
        assert y.dtype == "float32"
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
    inputs = keras.Input((4, 5, 3), dtype="uint8")
    model = keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(model(pixels).numpy(), expected, atol=1e-5)


def test_config_round_trip_and_validation():
    layer = ImageNormalization(mean=(0.5,), std=(0.25,), max_pixel_value=1.0, name="norm")
    clone = ImageNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(np.ones((1, 2, 2, 1), np.float32)).numpy(), 2.0)
    with pytest.raises(ValueError, match="Received: std="):
        ImageNormalization(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="equal length"):
        ImageNormalization(mean=(0.1, 0.2), std=(0.2,))
    with pytest.raises(ValueError, match="normalises 3 channels"):
        ImageNormalization()(np.zeros((1, 2, 2, 4), np.float32))
