"""`train.optimizer.exclude_from_weight_decay`: Keras's own exclusion, through make_optimizer, the fused
update, per-layer rates, and the config checks."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.config.learning import make_optimizer, optimizer_problems
from cnncli.config.schema import OptimizerSpec
from cnncli.errors import ConfigError

LR, DECAY = 0.1, 0.5
SPEC = {"type": "AdamW", "learning_rate": LR, "weight_decay": DECAY, "exclude_from_weight_decay": ["bias"]}


def _model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"),
                             keras.layers.BatchNormalization(name="batch_normalization")])


def _steps(optimizer, model, gradients, fused: bool = False, steps: int = 3):
    """`steps` updates with fixed gradients, inside a tf.function as the training loop runs them."""
    import tensorflow as tf

    from cnncli.train.fused import use_fused_update

    variables = model.trainable_variables
    optimizer.build(variables)
    if fused:
        assert use_fused_update(optimizer) == "ResourceApplyAdam"
    grads = [tf.constant(g(v)) for g, v in zip(gradients, variables, strict=True)]

    @tf.function
    def step():
        optimizer.apply(grads, variables)

    for _ in range(steps):
        step()
    return {v.path.split("/", 1)[1]: v.numpy() for v in variables}  # without the model's numbered name


@pytest.mark.parametrize("fused", [False, True])
def test_zero_gradient_decays_kernels_not_biases(fused):
    model = _model()
    start = {v.path.split("/", 1)[1]: v.numpy() for v in model.trainable_variables}
    zeros = [lambda v: np.zeros(v.shape, "float32")] * 4
    after = _steps(make_optimizer(OptimizerSpec.model_validate(SPEC)), model, zeros, fused, steps=1)
    # Adam's own step is 0 for a zero gradient: what moved is the decoupled decay, w − lr·wd·w.
    np.testing.assert_allclose(after["dense/kernel"], start["dense/kernel"] * (1 - LR * DECAY),
                               rtol=1e-6)
    np.testing.assert_array_equal(after["dense/bias"], start["dense/bias"])
    np.testing.assert_allclose(after["batch_normalization/gamma"],
                               start["batch_normalization/gamma"] * (1 - LR * DECAY), rtol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_steps_equal_keras_own_apply(fused):
    rng = np.random.default_rng(3)
    gradients = [lambda v, r=rng: r.normal(size=v.shape).astype("float32")] * 4
    spec = OptimizerSpec.model_validate({**SPEC, "exclude_from_weight_decay": ["bias", "gamma", "beta"]})
    ours = _steps(make_optimizer(spec), _model(), gradients, fused)
    rng = np.random.default_rng(3)
    gradients = [lambda v, r=rng: r.normal(size=v.shape).astype("float32")] * 4
    import keras

    keras_optimizer = keras.optimizers.AdamW(learning_rate=LR, weight_decay=DECAY)
    keras_optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    theirs = _steps(keras_optimizer, _model(), gradients)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5, err_msg=name)  # fused rounds


def test_per_layer_rates_keep_the_exclusion():
    from cnncli.config.learning import excluded_from_decay
    from cnncli.train.layer_rates import layerwise

    spec = OptimizerSpec.model_validate(SPEC)
    model = _model()
    variables = model.trainable_variables
    start = {v.path.split("/", 1)[1]: v.numpy() for v in variables}
    copy = layerwise(make_optimizer(spec), variables, (1.0,) * len(variables), excluded_from_decay(spec))
    after = _steps(copy, model, [lambda v: np.zeros(v.shape, "float32")] * 4, steps=1)
    np.testing.assert_array_equal(after["dense/bias"], start["dense/bias"])
    assert not np.allclose(after["dense/kernel"], start["dense/kernel"])


def test_a_typo_suggests_the_key():
    spec = OptimizerSpec.model_validate({**SPEC, "exclude_from_weight_deacy": ["bias"]})
    spec.model_extra.pop("exclude_from_weight_decay")
    (problem,) = optimizer_problems(spec, "train.optimizer")
    assert problem.path == "train.optimizer.exclude_from_weight_deacy"
    assert "AdamW takes no argument `exclude_from_weight_deacy` (did you mean `exclude_from_weight_decay`?)" in (
        problem.message
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "Adam", "exclude_from_weight_decay": ["bias"]},
         "Adam has no weight decay to exclude variables from; set weight_decay (e.g. 0.05) or remove "
         "exclude_from_weight_decay"),
        ({**SPEC, "exclude_from_weight_decay": "bias"},
         "expected a list of parts of variable names, e.g. [bias, gamma, beta], got 'bias'"),
        ({**SPEC, "exclude_from_weight_decay": ["bias("]}, "`bias(` is not a regular expression"),
    ],
)
def test_wrong_exclusions_are_config_errors(spec, message):
    with pytest.raises(ConfigError) as caught:
        make_optimizer(OptimizerSpec.model_validate(spec))
    (problem,) = caught.value.problems
    assert problem.path == "train.optimizer.exclude_from_weight_decay"
    assert message in problem.message


def test_adamw_default_decay_takes_an_exclusion():
    spec = OptimizerSpec.model_validate({"type": "AdamW", "exclude_from_weight_decay": ["bias"]})  # Keras's 0.004
    assert optimizer_problems(spec, "train.optimizer") == []
