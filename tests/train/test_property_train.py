"""The contract between `validate` and `train`, as a property over random configs.

Hypothesis writes configs from the schema's vocabulary (layer stacks, layer
arguments, losses, schedules, callbacks, optimizers, data options on tiny
`shapes` data) and from the registries themselves (every Keras augmentation
layer cnncli accepts, every precision `auto` picks on a CPU, `model.blocks`, and
now and then a small keras.applications backbone with training phases), with
plausible and implausible values alike, and drives the CLI in-process.
Whatever comes in:

- `cnn validate` exit 0 implies `cnn train --smoke` exit 0;
- every failure, of either command, is exit 1 with exactly one `Error:` line and no traceback.

The default run is derandomized and short (about four minutes on two busy cores), with the
configs the search once found wrong pinned as explicit examples; `-m slow` searches further.
"""

from __future__ import annotations

import copy
import inspect
import shutil

import keras
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.vocabulary import LAYERS, list_augmentations

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
               "categorical_focal_crossentropy", "categorical_hinge", "poisson", "huber", "binary_crossentropy",
               {"type": "CategoricalCrossentropy", "label_smoothing": 0.1},
               {"type": "SparseCategoricalCrossentropy", "ignore_class": None}],
              ["categorical_crosentropy", "ctc", {"type": "CategoricalCrossentropy", "label_smoothing": "some"},
               {"from_logits": True}, {"type": "CategoricalCrossentropy", "reduction": "sum"}, 3,
               {"type": "SparseCategoricalCrossentropy", "from_logits": True}])  # bad on a softmax output
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
CLASSES = ["x", "o", "square", "triangle", "plus", "line"]

# ---------------------------------------------------------------- drawn from the registries

def _required(cls) -> list[str]:
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.default is p.empty and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# Values for the arguments Keras's augmentation layers require; `height`/`width` are the image's own side.
AUGMENT_ARGS = {"factor": 0.2, "height_factor": 0.1, "width_factor": 0.1, "max_number": 1, "height": None,
                "width": None}
AUGMENT_OWN = {"RandomPosterization": {"factor": [1, 8]}}  # bits kept: a range of integers
AUGMENTATIONS = {name: _required(LAYERS.get(name)) for name in list_augmentations()}
AUGMENTATIONS = {name: req for name, req in AUGMENTATIONS.items() if set(req) <= set(AUGMENT_ARGS)}


def augmentation(rnd, side: int) -> dict:
    """One of Keras's augmentation layers with its required arguments; now and then a bad value."""
    name = rnd.choice(sorted(AUGMENTATIONS))
    args = dict(AUGMENT_OWN.get(name) or {k: side if AUGMENT_ARGS[k] is None else AUGMENT_ARGS[k]
                                          for k in AUGMENTATIONS[name]})
    if rnd.random() < BAD:
        key = rnd.choice(sorted(args) or ["factr"])
        args[key] = side - 2 if key in ("height", "width") else "big"  # a crop that shrinks; a word
    return {"type": name, **args}


PRECISIONS = pick(["auto", "float32", "mixed_bfloat16"], ["float64"])  # every precision `auto` picks on a CPU
BLOCKS = {"unit": {"params": {"filters": None, "kernel_size": 3},
                   "layers": [{"type": "Conv2D", "filters": "${filters}", "kernel_size": "${kernel_size}",
                               "padding": "same"}, {"type": "ReLU"}]},
          "res": {"params": {"filters": None},  # ResNet's projection shortcut: `proj` is the side branch
                  "layers": [{"type": "Conv2D", "name": "proj", "filters": "${filters}", "kernel_size": 1},
                             {"type": "Conv2D", "filters": "${filters}", "kernel_size": 3, "padding": "same",
                              "activation": "relu"},
                             {"type": "Conv2D", "filters": "${filters}", "kernel_size": 3, "padding": "same"},
                             {"type": "Add", "shortcut": "proj"}]}}


def block_use(rnd) -> dict:
    kind = pick(["unit", "res"], ["unti"])(rnd)
    use = {"type": kind, "filters": pick([1, 2, 4], ["four"])(rnd)}
    if rnd.random() < 0.5:
        use["repeat"] = pick([1, 2], [0])(rnd)
    if kind == "unit" and rnd.random() < 0.5:
        use["kernel_size"] = pick([1, 3], [0])(rnd)
    return use


BACKBONE_CHANCE = 0.08  # a backbone example costs about five plain ones
# keras.applications' smallest: 87 layers, 0.2 M parameters at 32×32, no download (weights: null).
BACKBONE = {"name": "MobileNet", "weights": None, "include_top": False, "pooling": "avg", "alpha": 0.25}
PHASES = pick([None, [{"epochs": 1, "trainable": "head"}, {"epochs": 1, "trainable": "all", "learning_rate": 1e-4}],
               [{"epochs": 1, "trainable": ["conv_pw_13"]}],
               [{"epochs": 1}, {"epochs": 1, "trainable": "all", "layer_lr_decay": 0.8}]],
              [[{"epochs": 1, "trainable": []}], [{"epochs": 1, "layer_lr_decay": 0.5}]])


@st.composite
def configs(draw) -> dict:
    rnd = draw(st.randoms(use_true_random=True))
    classes = pick([CLASSES, CLASSES[:2], CLASSES[2:5]], [["x", "x"], ["x", "circle"], ["x"]])(rnd)
    units = pick([len(classes)], [len(classes) + 1, max(1, len(classes) - 1), "six"])(rnd)
    last = pick([{"activation": "softmax"}], [{}, {"activation": "softmaks"}, {"activation": "sigmoid"}])(rnd)
    head = [{"type": "Dense", "units": units, **last}]
    if rnd.random() < 0.1:  # softmax as its own layer
        head = [{"type": "Dense", "units": units}, {"type": "Softmax"}]
    loss = LOSSES(rnd)
    if rnd.random() < 0.1:  # logits, and a loss told so: right
        head, loss = [{"type": "Dense", "units": units}], {"type": "SparseCategoricalCrossentropy", "from_logits": True}
    model: dict = {}
    backbone = rnd.random() < BACKBONE_CHANCE
    if backbone:
        side = pick([32], [16])(rnd)  # MobileNet takes 32×32 and up
        model["backbone"] = dict(BACKBONE)
        layers = pick([[], [{"type": "Dropout", "rate": 0.2}]])(rnd) + head
    else:
        side = pick([8, 12, 16], [6, "16"])(rnd)
        body = [_layer(rnd) for _ in range(rnd.randint(0, 3))]
        if rnd.random() < 0.3:
            body.insert(rnd.randint(0, len(body)), block_use(rnd))
            model["blocks"] = BLOCKS
        layers = body + to_vector(rnd) + head
    model["layers"] = layers
    data = {"dataset": "shapes", "shapes": {"image_size": side, "classes": classes,
                                            "train_examples": 40, "test_examples": 10},
            "validation_split": pick([0.1, 0.25, 0.0], [1.0, -0.1])(rnd)}
    if rnd.random() < 0.5 and isinstance(side, int):
        data["augment"] = [augmentation(rnd, side) for _ in range(rnd.randint(1, 3))]
    for key, chooser in (("limit", pick([None, 24, 30], [0, "all"])), ("color_mode", pick([None, None, "rgb"]))):
        value = chooser(rnd)
        if value is not None:
            data[key] = value
    train = {"epochs": pick([1, 2], [0, "two"])(rnd), "batch_size": pick([8, 16], [0, 2.5])(rnd),
             "optimizer": OPTIMIZERS(rnd), "loss": loss}
    for key, chooser in (("lr_schedule", SCHEDULES), ("early_stopping", EARLY), ("checkpoint", CHECKPOINT),
                         ("metrics", METRICS)):
        value = chooser(rnd)
        if value is not None:
            train[key] = value
    phases = PHASES(rnd) if backbone else pick([None], [[{"epochs": 1}]])(rnd)  # phases need a backbone
    if phases is not None:
        train["phases"] = phases
        del train["epochs"]
    config = {"name": "prop", "seed": rnd.randint(0, 3), "data": data, "model": model, "train": train,
              "runtime": {"precision": PRECISIONS(rnd)}}
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
    for feature in _features(config):
        event(f"{feature}, {'valid' if validated.exit_code == 0 else 'invalid'}")
    if validated.exit_code == 0:
        assert trained.exit_code == 0, f"validate passed but train failed:\n{trained.stderr}"
    shutil.rmtree(folder, ignore_errors=True)


def _features(config: dict) -> list[str]:
    """What a config draws from beyond a plain layer stack, for hypothesis's statistics."""
    precision = config.get("runtime", {}).get("precision")
    augment = config["data"].get("augment") or []
    return ([f"precision {precision}"] + [f"augment under {precision}"] * bool(augment)
            + ["blocks"] * ("blocks" in config["model"]) + ["backbone"] * ("backbone" in config["model"])
            + ["phases"] * ("phases" in config["train"]))


def _found(changes: dict) -> dict:
    """A config the search once found wrong, as a change of a small valid one."""
    config = {"name": "prop", "seed": 0,
              "data": {"dataset": "shapes", "validation_split": 0.0,
                       "shapes": {"image_size": 8, "classes": ["x", "o"], "train_examples": 8, "test_examples": 4}},
              "model": {"layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3, "strides": 2},
                                   {"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}]},
              "train": {"epochs": 1, "batch_size": 4}}
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    return config


@DEFAULT
@example(config=_found({"data": {"augment": [{"type": "CutMix"}]}, "runtime": {"precision": "mixed_bfloat16"}}))
@example(config=_found({"model": {"layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3, "strides": 2},
                                             {"type": "MaxPooling2D", "pool_size": "2"}, {"type": "Flatten"},
                                             {"type": "Dense", "units": 2, "activation": "softmax"}]}}))
@given(config=configs())
def test_validate_ok_means_train_smoke_ok_and_every_failure_is_one_error_line(tmp_path_factory, config):
    _check(config, tmp_path_factory)


@pytest.mark.slow
@LONG
@given(config=configs())
def test_validate_ok_means_train_smoke_ok_long(tmp_path_factory, config):
    _check(config, tmp_path_factory)
