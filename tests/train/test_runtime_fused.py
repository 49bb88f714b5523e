"""Fused optimizer kernels (cnncli/train/fused.py) take exactly Keras's steps."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.train.fused import use_fused_update

STEPS = 5


def _model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])


def _train(make_optimizer, fused: bool):
    import keras
    import tensorflow as tf

    model = _model(0)
    optimizer = make_optimizer()
    optimizer.build(model.trainable_variables)
    kernel = use_fused_update(optimizer) if fused else None
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(16, 6)).astype("float32"))
    y = tf.constant(rng.integers(0, 3, 16))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for _ in range(STEPS):
        step()
    return [v.numpy() for v in model.weights], [v.numpy() for v in optimizer.variables], kernel


OPTIMIZERS = {
    "adam": ("Adam", {"learning_rate": 0.01}, "ResourceApplyAdam"),
    "adamw": ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}, "ResourceApplyAdam"),
    "adam-eps": ("Adam", {"learning_rate": 0.01, "beta_1": 0.5, "epsilon": 1e-3}, "ResourceApplyAdam"),
    "sgd": ("SGD", {"learning_rate": 0.1}, "ResourceApplyGradientDescent"),
    "momentum": ("SGD", {"learning_rate": 0.1, "momentum": 0.9}, "ResourceApplyKerasMomentum"),
    "nesterov": ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, "ResourceApplyKerasMomentum"),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_steps_equal_keras_steps(name):
    import keras

    cls, kwargs, expected_kernel = OPTIMIZERS[name]
    make = lambda: getattr(keras.optimizers, cls)(**kwargs)  # noqa: E731
    keras_weights, keras_slots, _ = _train(make, fused=False)
    fused_weights, fused_slots, kernel = _train(make, fused=True)
    assert kernel == expected_kernel
    for a, b in zip(keras_weights + keras_slots, fused_weights + fused_slots, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_through_loss_scaling():
    import keras

    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01))
    assert use_fused_update(optimizer) == "ResourceApplyAdam"
    assert "update_step" in vars(optimizer.inner_optimizer)  # the wrapped optimizer does the update


@pytest.mark.parametrize("make", [
    lambda keras: keras.optimizers.Adam(amsgrad=True),  # a fourth slot the kernel lacks
    lambda keras: keras.optimizers.RMSprop(),
    lambda keras: type("Custom", (keras.optimizers.Adam,), {"update_step": lambda self, g, v, lr: None})(),
])
def test_other_updates_stay_keras(make):
    import keras

    optimizer = make(keras)
    assert use_fused_update(optimizer) is None
    assert "update_step" not in vars(optimizer)


def test_fused_optimizer_saves_as_keras_class(tmp_path):
    import keras

    model = _model(0)
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    use_fused_update(optimizer)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is keras.optimizers.Adam
