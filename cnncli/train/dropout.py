"""Dropout masks from 16 random bits per unit instead of a random float.

Keras 3 (TensorFlow backend) draws one uniform float per dropped-out unit
(`tf.nn.experimental.stateless_dropout`); on a CPU the Philox generator behind
it costs ~3 ns per 32-bit draw, and in bfloat16 the float conversion doubles
that. For the course's small CNN (Dropout on 13×13×32 maps at batch 32) that
was a fifth of a training step. Here two units share one 32-bit draw: the mask
keeps a unit when its 16 bits are ≥ round(rate·65536), and kept units are
scaled by the exact inverse of that keep fraction, so the expected activation
is unchanged and the rate is off by at most 1/131072.

Only cnncli's training step uses it, while that step is traced (`patched()`);
`keras.layers.Dropout` itself, its saved form and every other caller are
untouched. Keras's own seed generator still supplies the seeds, so a run
remains a function of its seed. If Keras's backend module changes shape
(compat.py checks), the patch steps aside and Keras's dropout runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cnncli import compat

BITS = 16


def _dropout(module, keras_dropout):
    import tensorflow as tf

    def dropout(inputs, rate, noise_shape=None, seed=None):
        if not isinstance(rate, (int, float)) or rate <= 0.0 or rate >= 1.0:
            return keras_dropout(inputs, rate, noise_shape=noise_shape, seed=seed)
        threshold = round(rate * 2**BITS)
        if threshold == 0:  # a rate below 1/131072 drops nothing, as it would in expectation
            return inputs
        seed = module._cast_seed(module.draw_seed(seed))
        shape = module._get_concrete_noise_shape(inputs, noise_shape)
        n = tf.reduce_prod(shape)
        words = tf.random.stateless_uniform([(n + 1) // 2], seed, dtype=tf.int32, minval=None, maxval=None)
        draws = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:n]
        keep = tf.reshape(draws >= threshold, shape)  # broadcast over inputs when noise_shape is narrower
        scale = tf.cast(2**BITS / (2**BITS - threshold), inputs.dtype)
        return tf.where(keep, inputs * scale, tf.zeros((), inputs.dtype))

    return dropout


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """While a training step is traced, Keras's Dropout layers draw their masks here."""
    module = compat.dropout_backend()
    if module is None:  # this Keras moved its dropout: its own runs
        yield
        return
    compat.used("fast_dropout")
    keras_dropout = module.dropout
    module.dropout = _dropout(module, keras_dropout)
    try:
        yield
    finally:
        module.dropout = keras_dropout
