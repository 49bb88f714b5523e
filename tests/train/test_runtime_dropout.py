"""The training step's dropout masks (cnncli/train/dropout.py): Keras's statistics, cheaper draws."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli import compat
from cnncli.train import dropout


def _drop(layer, x):
    with dropout.patched():
        return np.asarray(layer(x, training=True), dtype=np.float32)


@pytest.mark.parametrize("rate", [0.2, 0.25, 0.5, 0.9])
def test_rate_and_expectation_are_kerass(rate):
    import keras

    out = _drop(keras.layers.Dropout(rate, seed=1), np.ones((500, 400), np.float32))
    dropped = np.mean(out == 0)
    assert dropped == pytest.approx(rate, abs=0.005)  # 200,000 units: ±0.005 is > 5 standard deviations
    kept = out[out != 0]
    threshold = round(rate * 65536)
    np.testing.assert_allclose(kept, 65536 / (65536 - threshold), rtol=1e-6)
    assert abs(rate - threshold / 65536) <= 1 / 131072


def test_noise_shape_drops_whole_channels():
    import keras

    out = _drop(keras.layers.SpatialDropout2D(0.5, seed=3), np.ones((8, 6, 6, 64), np.float32))
    per_channel = out.reshape(8, 36, 64)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # a channel is all kept or all dropped
    assert 0.3 < np.mean(per_channel[:, 0, :] == 0) < 0.7


def test_bfloat16_inputs_stay_bfloat16():
    import keras
    import tensorflow as tf

    layer = keras.layers.Dropout(0.5, seed=2, dtype="mixed_bfloat16")
    with dropout.patched():
        out = layer(tf.ones((4, 1000), tf.bfloat16), training=True)
    assert out.dtype == tf.bfloat16
    assert set(np.unique(np.asarray(out, np.float32))) <= {0.0, 2.0}


def test_masks_differ_between_calls_and_follow_the_seed():
    import keras

    x = np.ones((64, 64), np.float32)
    a, b = keras.layers.Dropout(0.5, seed=7), keras.layers.Dropout(0.5, seed=7)
    first, second = _drop(a, x), _drop(a, x)
    assert not np.array_equal(first, second)  # the seed generator moves on
    np.testing.assert_array_equal(first, _drop(b, x))  # same seed, same masks


def test_keras_dropout_is_restored_outside_the_step():
    module = compat.dropout_backend()
    assert module is not None, "keras.src.backend.tensorflow.random moved: the patch is silently off"
    original = module.dropout
    with dropout.patched():
        assert module.dropout is not original
    assert module.dropout is original


def test_rate_zero_and_inference_are_identity():
    import keras

    x = np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32)
    np.testing.assert_array_equal(_drop(keras.layers.Dropout(0.0), x), x)
    with dropout.patched():
        np.testing.assert_array_equal(np.asarray(keras.layers.Dropout(0.5)(x, training=False)), x)
