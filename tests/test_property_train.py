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

import shutil

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                     HealthCheck.data_too_large])
DEFAULT = settings(max_examples=24, derandomize=True, phases=[Phase.explicit, Phase.generate], **_COMMON)  # no shrinking: each example trains
LONG = settings(max_examples=300, **_COMMON)

# ---------------------------------------------------------------- the vocabulary, good and bad values

ACTIVATIONS = st.sampled_from(["relu", "relu", "tanh", None, "sofmax", 3])
conv = st.fixed_dictionaries(
    {"type": st.just("Conv2D"), "filters": st.sampled_from([4, 4, 8, "8", 0]),
     "kernel_size": st.sampled_from([1, 3, 3, [3, 1], "3", 30])},
    optional={"padding": st.sampled_from(["same", "valid", "sideways"]), "activation": ACTIVATIONS,
              "strides": st.sampled_from([1, 2, -1]), "use_bias": st.sampled_from([True, False, "no"]),
              "filtrs": st.just(4)})
pool = st.fixed_dictionaries({"type": st.sampled_from(["MaxPooling2D", "AveragePooling2D"])},
                             optional={"pool_size": st.sampled_from([2, 2, 3, 0]), "padding": st.just("same")})
other = st.sampled_from([{"type": "BatchNormalization"}, {"type": "Dropout", "rate": 0.25},
                         {"type": "Dropout", "rate": 1.5}, {"type": "Dropout"}, {"type": "ReLU"},
                         {"type": "SpatialDropout2D", "rate": 0.1}, {"type": "Dense", "units": 8}])
body = st.lists(st.one_of(conv, conv, pool, other), min_size=0, max_size=3)
to_vector = st.sampled_from([[{"type": "Flatten"}], [{"type": "GlobalAveragePooling2D"}], [],
                             [{"type": "Flatten"}, {"type": "Dense", "units": 8, "activation": "relu"}],
                             [{"type": "Flaten"}]])
LOSSES = st.sampled_from([
    "sparse_categorical_crossentropy", "categorical_crossentropy", "mse", "kl_divergence",
    "categorical_focal_crossentropy", "categorical_crosentropy", "ctc",
    {"type": "SparseCategoricalCrossentropy", "from_logits": True},
    {"type": "CategoricalCrossentropy", "label_smoothing": 0.1},
    {"type": "CategoricalCrossentropy", "label_smoothing": "some"}, {"from_logits": True}])
SCHEDULES = st.sampled_from([
    None, {"type": "exponential", "initial_learning_rate": 0.01, "decay_steps": 1, "decay_rate": 0.5},
    {"type": "exponential", "decay_rate": 0.6}, {"type": "cosine", "initial_learning_rate": 0.01, "decay_steps": 2},
    {"type": "cosine", "every": "step", "initial_learning_rate": 0.01, "decay_steps": 5},
    {"type": "step", "boundaries": [1], "values": [0.01, 0.001]}, {"type": "step", "boundaries": [1], "values": [0.01]},
    {"type": "reduce_on_plateau", "monitor": "loss", "patience": 1}, {"type": "reduce_on_plateau", "patience": "two"},
    {"type": "polynomial", "initial_learning_rate": 0.01, "decay_steps": 2, "end_learning_rate": 0.001},
    {"type": "exponential", "initial_learning_rate": "high", "decay_steps": 1, "decay_rate": 0.5}])
OPTIMIZERS = st.sampled_from([
    {"type": "Adam", "learning_rate": 0.003}, {"type": "Adam"}, {"type": "SGD", "learning_rate": 0.01, "momentum": 0.9},
    {"type": "RMSprop", "learning_rate": 0.001}, {"type": "AdamW", "weight_decay": 0.01},
    {"type": "Adam", "learning_rate": "fast"}, {"type": "Adam", "learning_rate": -1}, {"type": "Adamm"},
    {"type": "SGD", "nesterov": "yes"}])
EARLY = st.sampled_from([None, {"patience": 1}, {"monitor": "val_accuracy", "patience": 0}, {"monitor": "val_acc"},
                         {"patience": -1}, {"monitor": "loss", "mode": "min", "restore_best_weights": False}])
CHECKPOINT = st.sampled_from([None, {"save_best_only": True}, {"monitor": "accuracy", "mode": "max"},
                              {"monitor": "val_accuracy", "save_best_only": True}])
METRICS = st.sampled_from([None, ["accuracy"], ["accuracy", "top_5_accuracy"], ["acuracy"]])
AUGMENT = st.sampled_from([None, [{"type": "RandomFlip", "mode": "horizontal"}], [{"type": "RandomRotation"}],
                           [{"type": "RandomTranslation", "height_factor": 0.1, "width_factor": 0.1}],
                           [{"type": "RandomFlip", "mode": "sideways"}]])
CLASSES = ["x", "o", "square", "triangle", "plus", "line"]


@st.composite
def configs(draw) -> dict:
    classes = draw(st.sampled_from([CLASSES, CLASSES[:2], CLASSES[:3], ["x", "x"], ["x", "circle"]]))
    size = draw(st.sampled_from([8, 12, 16, 16, 6]))
    units = draw(st.sampled_from([len(classes), len(classes), len(classes) + 1, 1, "six"]))
    last = draw(st.sampled_from([{"activation": "softmax"}, {"activation": "softmax"}, {}]))
    layers = draw(body) + draw(to_vector) + [{"type": "Dense", "units": units, **last}]
    data = {"dataset": "shapes", "shapes": {"image_size": size, "classes": classes, "train_examples": 40,
                                            "test_examples": 10}}
    data["validation_split"] = draw(st.sampled_from([0.1, 0.25, 0.0, 1.0]))
    augment = draw(AUGMENT)
    if augment is not None:
        data["augment"] = augment
    if draw(st.booleans()):
        data["limit"] = draw(st.sampled_from([24, 30, 0]))
    train = {"epochs": draw(st.sampled_from([1, 2, 0, "two"])), "batch_size": draw(st.sampled_from([8, 16, 0])),
             "optimizer": draw(OPTIMIZERS), "loss": draw(LOSSES)}
    for key, strategy in (("lr_schedule", SCHEDULES), ("early_stopping", EARLY), ("checkpoint", CHECKPOINT),
                          ("metrics", METRICS)):
        value = draw(strategy)
        if value is not None:
            train[key] = value
    config = {"name": "prop", "seed": draw(st.integers(0, 3)), "data": data, "model": {"layers": layers},
              "train": train}
    if draw(st.integers(0, 9)) == 0:
        config[draw(st.sampled_from(["colour", "trian"]))] = 1
    return config


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
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    note(path.read_text())
    validated = _invoke("validate", path)
    trained = _invoke("train", path, "--smoke", "-q", "-o", folder / "runs")
    note(f"validate: {validated.output}\ntrain: {trained.output}")
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
