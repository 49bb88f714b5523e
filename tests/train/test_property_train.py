"""The contract between `validate` and `train`, as a property over random configs.

Hypothesis writes configs from the schema's vocabulary (layer stacks, layer
arguments, losses, schedules, callbacks, optimizers, data options on tiny
`shapes` data), with plausible and implausible values alike, and drives the
CLI in-process. Whatever comes in:

- `cnn validate` exit 0 implies `cnn train --smoke` exit 0;
- every failure, of either command, is exit 1 with exactly one `Error:` line and no traceback.

The default run is derandomized and short; `-m slow` searches further.
"""

from __future__ import annotations

import copy
import shutil

import keras
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                     HealthCheck.data_too_large])
# no shrinking: each example trains
DEFAULT = settings(max_examples=24, derandomize=True, phases=[Phase.explicit, Phase.generate], **_COMMON)
LONG = settings(max_examples=300, **_COMMON)

# ---------------------------------------------------------------- the vocabulary, good and bad values

# the chance of each choice being a bad value: about half the configs are valid, most others have one problem
BAD = 0.04


def pick(good: list, bad: list = ()):
    """A chooser of a good value mostly, a bad one with probability BAD (hypothesis's own choices favour
    the ends of a list, so the choice is made with a seeded `random.Random` it draws)."""
    return lambda rnd: rnd.choice(bad) if bad and rnd.random() < BAD else rnd.choice(good)


def mapping(required: dict, optional: dict):
    """A layer dict: every required key, each optional one half the time; values by their choosers."""
    def choose(rnd):
        keys = list(required) + [k for k in optional if rnd.random() < 0.5]
        return {k: v(rnd) if callable(v) else v for k, v in ({**required, **optional}).items() if k in keys}
    return choose


ACTIVATIONS = pick(["relu", "tanh", "swish", None], ["sofmax", 3])
conv = mapping({"type": "Conv2D", "filters": pick([4, 8], ["8", 0, 2.5]),
                "kernel_size": pick([1, 3, [3, 1]], ["3", 30, [3, "x"]])},
               {"padding": pick(["same", "valid"], ["sideways"]), "activation": ACTIVATIONS,
                "strides": pick([1, 2], [-1]), "use_bias": pick([True, False], ["no"]),
                "kernel_initializer": pick(["he_normal", "glorot_uniform"], ["he_nromal"])})
pool = mapping({"type": pick(["MaxPooling2D", "AveragePooling2D"])},
               {"pool_size": pick([2, 3], [0, "2"]), "padding": pick(["same", "valid"])})
other = pick([{"type": "BatchNormalization"}, {"type": "Dropout", "rate": 0.25}, {"type": "ReLU"},
              {"type": "SpatialDropout2D", "rate": 0.1}, {"type": "Dense", "units": 8},
              {"type": "DepthwiseConv2D", "kernel_size": 3, "padding": "same"}],
             [{"type": "Dropout", "rate": 1.5}, {"type": "Dropout"}, {"type": "Conv2D", "filtrs": 4, "kernel_size": 3},
              {"type": "Conv2d", "filters": 4}, {"type": "Lambda"}])
to_vector = pick([[{"type": "Flatten"}], [{"type": "GlobalAveragePooling2D"}], [{"type": "GlobalMaxPooling2D"}],
                  [{"type": "Flatten"}, {"type": "Dense", "units": 8, "activation": "relu"}]],
                 [[], [{"type": "Flaten"}]])
LOSSES = pick(["sparse_categorical_crossentropy", "categorical_crossentropy", "mse", "kl_divergence",
               "categorical_focal_crossentropy", "categorical_hinge", "poisson", "huber",
               {"type": "CategoricalCrossentropy", "label_smoothing": 0.1},
               {"type": "SparseCategoricalCrossentropy", "ignore_class": None}],
              ["categorical_crosentropy", "ctc", {"type": "CategoricalCrossentropy", "label_smoothing": "some"},
               {"from_logits": True}, {"type": "CategoricalCrossentropy", "reduction": "sum"}, 3])
SCHEDULES = pick([None, {"type": "exponential", "initial_learning_rate": 0.01, "decay_steps": 1, "decay_rate": 0.5},
                  {"type": "cosine", "initial_learning_rate": 0.01, "decay_steps": 2},
                  {"type": "cosine", "every": "step", "initial_learning_rate": 0.01, "decay_steps": 5},
                  {"type": "step", "boundaries": [1], "values": [0.01, 0.001]},
                  {"type": "reduce_on_plateau", "monitor": "loss", "patience": 0},
                  {"type": "polynomial", "initial_learning_rate": 0.01, "decay_steps": 2, "end_learning_rate": 0.001},
                  {"type": "inverse_time", "initial_learning_rate": 0.01, "decay_steps": 1, "decay_rate": 0.5}],
                 [{"type": "exponential", "decay_rate": 0.6}, {"type": "step", "boundaries": [1], "values": [0.01]},
                  {"type": "reduce_on_plateau", "patience": "two"}, {"type": "exponentail"},
                  {"type": "exponential", "initial_learning_rate": "high", "decay_steps": 1, "decay_rate": 0.5},
                  {"type": "cosine", "initial_learning_rate": 0.01, "decay_steps": 0}])
OPTIMIZERS = pick([{"type": "Adam", "learning_rate": 0.003}, {"type": "Adam"}, {"type": "SGD", "momentum": 0.9},
                   {"type": "RMSprop", "learning_rate": 0.001}, {"type": "AdamW", "weight_decay": 0.01},
                   {"type": "Nadam"}, {"type": "SGD", "learning_rate": 0.05, "nesterov": True, "momentum": 0.5}],
                  [{"type": "Adam", "learning_rate": "fast"}, {"type": "Adam", "learning_rate": -1}, {"type": "Adamm"},
                   {"type": "SGD", "nesterov": "yes"}, {"type": "Adam", "clipnorm": 1.0, "global_clipnorm": 1.0}])
EARLY = pick([None, {"patience": 1}, {"monitor": "loss", "mode": "min", "restore_best_weights": False}],
             [{"monitor": "val_acc"}, {"patience": -1}, {"patiense": 1}])
CHECKPOINT = pick([None, {"save_best_only": True}, {"monitor": "accuracy", "mode": "max"}],
                  [{"monitor": "acc"}, {"save_best": True}])
METRICS = pick([None, ["accuracy"], ["accuracy", "top_5_accuracy"]], [["acuracy"], "accuracy"])
AUGMENT = pick([None, [{"type": "RandomFlip", "mode": "horizontal"}],
                [{"type": "RandomTranslation", "height_factor": 0.1, "width_factor": 0.1}],
                [{"type": "RandomRotation", "factor": [-0.1, 0.1]}]],
               [[{"type": "RandomRotation"}], [{"type": "RandomFlip", "mode": "sideways"}],
                [{"type": "RandomZoom", "height_factor": "big"}]])
CLASSES = ["x", "o", "square", "triangle", "plus", "line"]


@st.composite
def configs(draw) -> dict:
    rnd = draw(st.randoms(use_true_random=True))
    classes = pick([CLASSES, CLASSES[:2], CLASSES[2:5]], [["x", "x"], ["x", "circle"], ["x"]])(rnd)
    units = pick([len(classes)], [len(classes) + 1, max(1, len(classes) - 1), "six"])(rnd)
    last = pick([{"activation": "softmax"}], [{}, {"activation": "softmaks"}])(rnd)
    body = [_layer(rnd) for _ in range(rnd.randint(0, 3))]
    layers = body + to_vector(rnd) + [{"type": "Dense", "units": units, **last}]
    data = {"dataset": "shapes", "shapes": {"image_size": pick([8, 12, 16], [6, "16"])(rnd), "classes": classes,
                                            "train_examples": 40, "test_examples": 10},
            "validation_split": pick([0.1, 0.25, 0.0], [1.0, -0.1])(rnd)}
    for key, chooser in (("augment", AUGMENT), ("limit", pick([None, 24, 30], [0, "all"]))):
        value = chooser(rnd)
        if value is not None:
            data[key] = value
    train = {"epochs": pick([1, 2], [0, "two"])(rnd), "batch_size": pick([8, 16], [0, 2.5])(rnd),
             "optimizer": OPTIMIZERS(rnd), "loss": LOSSES(rnd)}
    for key, chooser in (("lr_schedule", SCHEDULES), ("early_stopping", EARLY), ("checkpoint", CHECKPOINT),
                         ("metrics", METRICS)):
        value = chooser(rnd)
        if value is not None:
            train[key] = value
    config = {"name": "prop", "seed": rnd.randint(0, 3), "data": data, "model": {"layers": layers}, "train": train}
    extra = pick([None], ["colour", "trian"])(rnd)
    if extra:
        config[extra] = 1
    return config


def _layer(rnd) -> dict:
    kind = rnd.choice(["conv", "conv", "pool", "other"])
    return conv(rnd) if kind == "conv" else pool(rnd) if kind == "pool" else other(rnd)


# ---------------------------------------------------------------- the property

def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"escaped: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and result.stderr.startswith("Error: "), result.stderr
    return result


def _check(config: dict, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("prop")
    path = folder / "prop.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(config), sort_keys=False))  # shared dicts would become YAML aliases
    note(path.read_text())
    validated = _invoke("validate", path)
    policy = keras.config.dtype_policy()  # each example starts from the same global policy
    try:
        trained = _invoke("train", path, "--smoke", "-q", "-o", folder / "runs")
    finally:
        keras.config.set_dtype_policy(policy)
    note(f"validate: {validated.output}\ntrain: {trained.output}")
    event("valid" if validated.exit_code == 0 else "invalid")
    if validated.exit_code == 0:
        assert trained.exit_code == 0, f"validate passed but train failed:\n{trained.stderr}"
    shutil.rmtree(folder, ignore_errors=True)


@DEFAULT
@given(config=configs())
def test_validate_ok_means_train_smoke_ok_and_every_failure_is_one_error_line(tmp_path_factory, config):
    _check(config, tmp_path_factory)


@pytest.mark.slow
@LONG
@given(config=configs())
def test_validate_ok_means_train_smoke_ok_long(tmp_path_factory, config):
    _check(config, tmp_path_factory)
