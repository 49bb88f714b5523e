"""Augmentation that changes labels: MixUp and CutMix mix each image with another and its label
in the same proportion, the loss takes the soft labels, the metrics the mixed label's largest class.

Batches are real `shapes` images taken through the Trainer's own `augment_batch`, the first thing a
training step does; the mixing weight of each image is read back from its pixels.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import small_config
from typer.testing import CliRunner

from cnncli import compat
from cnncli.cli import app
from cnncli.config.learning import LOSSES, make_loss, make_metric
from cnncli.config.loading import config_from_dict
from cnncli.config.vocabulary import LAYERS, list_augmentations
from cnncli.train.augment import augmentation_problems, build_augmentation
from cnncli.train.loop import Trainer

runner = CliRunner()
SIDE = 16  # image side in pixels
CLASSES = ["x", "o", "square", "triangle"]


def shapes_batch(n: int = 16, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`n` real shapes images (uint8, SIDE×SIDE×1) and their class indices."""
    from cnncli.config.schema import DataConfig, ShapesSpec
    from cnncli.data import load

    data = load(DataConfig(dataset="shapes", validation_split=0,
                           shapes=ShapesSpec(image_size=SIDE, classes=CLASSES, train_examples=n, test_examples=1)),
                seed=seed)
    return data.x_train, data.y_train.astype(np.int32)


def trainer(augment: list[dict], loss: str | dict = "sparse_categorical_crossentropy", batch: int = 16,
            precision: str = "float32", channels: int = 1) -> Trainer:
    """A Trainer of a small dense model on SIDE×SIDE images with the augmentation `augment`."""
    cfg = config_from_dict({"seed": 5, "model": {"input_shape": [SIDE, SIDE, channels],
                                                 "layers": [{"type": "Flatten"}]},
                            "data": {"augment": augment}})
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        inputs = keras.Input((SIDE, SIDE, channels))
        hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Rescaling(1 / 255)(
            keras.layers.Flatten()(inputs)))
        outputs = keras.layers.Dense(len(CLASSES), activation="softmax", dtype="float32")(hidden)
        model = keras.Model(inputs, outputs)
        return Trainer(model, keras.optimizers.SGD(0.01), loss_of(loss), [make_metric("accuracy")],
                       tf.distribute.get_strategy(), batch, 5, build_augmentation(cfg))
    finally:
        keras.config.set_dtype_policy(before)


def loss_of(loss: str | dict):
    """The step's loss for `train.loss: loss`."""
    return make_loss(config_from_dict({"model": {"layers": [{"type": "Flatten"}]}, "train": {"loss": loss}}).train.loss)


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.float32)[y]


# ---------------------------------------------------------------- the labels are mixed as the images are

def test_mixup_mixes_each_label_with_the_weight_its_image_was_mixed_with():
    x, y = shapes_batch()
    images, soft, metric_labels = (t.numpy() for t in trainer([{"type": "MixUp", "alpha": 1.0}]).augment_batch(
        tf.constant(x), tf.constant(y)))
    a = x.reshape(len(x), -1).astype(np.float64)
    mixed = images.reshape(len(x), -1).astype(np.float64)
    assert soft.shape == (len(x), len(CLASSES)) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    weights = []
    for i in range(len(x)):
        # image i = lam·a_i + (1 - lam)·a_j for one partner j: lam by least squares for each j, the best fit
        fits = []
        for j in range(len(x)):
            d = a[i] - a[j]
            lam = 1.0 if not d.any() else float((mixed[i] - a[j]) @ d / (d @ d))
            fits.append((np.abs(lam * a[i] + (1 - lam) * a[j] - mixed[i]).max(), lam, j))
        residual, lam, j = min(fits)
        assert residual < 1e-3, (i, residual)  # pixels 0..255: the image is exactly such a mix
        np.testing.assert_allclose(soft[i], lam * one_hot(y[i]) + (1 - lam) * one_hot(y[j]), atol=1e-4)
        weights.append(lam)
    assert sum(0.1 < w < 0.9 for w in weights) >= 4  # really mixed, not just copied
    np.testing.assert_array_equal(metric_labels, soft.argmax(axis=1))  # the class the image shows most of


def test_cutmix_label_weight_is_the_fraction_of_pixels_the_image_keeps():
    x, y = shapes_batch(32)
    # Each image lifted by its own offset: a pasted pixel shows which image it came from.
    lifted = x.astype(np.float32) + 1000.0 * np.arange(len(x), dtype=np.float32)[:, None, None, None]
    images, soft, metric_labels = (t.numpy() for t in trainer([{"type": "CutMix"}], batch=32).augment_batch(
        tf.constant(lifted), tf.constant(y)))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    source = np.floor(images / 1000.0 + 1e-6).astype(int)  # which image each pixel came from
    # Keras weighs the labels by the pasted box's real-valued area and pastes the whole pixels inside
    # it: the two differ by at most one row and one column of pixels.
    edge = (2 * SIDE + 1) / SIDE**2
    mixed = 0
    for i in range(len(x)):
        partners = set(np.unique(source[i])) - {i}
        assert len(partners) <= 1, (i, partners)  # one image pasted in
        kept = float((source[i] == i).mean())
        others = set(np.flatnonzero(soft[i])) - {y[i]}  # a box with no whole pixel in it still weighs
        if partners:
            j = partners.pop()
            assert others == ({y[j]} if y[j] != y[i] else set()), (i, others)
        assert len(others) <= 1
        assert abs(float(soft[i][y[i]]) - kept) <= edge or not others, (i, soft[i], kept)
        mixed += 0.1 < kept < 0.9
    assert mixed >= 6
    np.testing.assert_array_equal(metric_labels, soft.argmax(axis=1))


def test_without_a_label_changing_layer_the_step_keeps_the_class_indices():
    x, y = shapes_batch(4)
    images, targets, metric_labels = trainer([{"type": "RandomFlip"}], batch=4).augment_batch(
        tf.constant(x), tf.constant(y))
    assert targets.dtype == tf.int32 and targets.shape == (4,)  # no one-hot
    np.testing.assert_array_equal(targets.numpy(), y)
    np.testing.assert_array_equal(metric_labels.numpy(), y)


def test_only_the_layers_that_change_labels_get_them():
    names = list_augmentations()
    mixers = {n for n in names if compat.changes_labels(_layer(n))}
    assert mixers == {"MixUp", "CutMix"}


def _layer(name: str):
    cls = LAYERS.get(name)
    return cls(**AUGMENT_OWN.get(name, {k: v for k, v in AUGMENT_ARGS.items() if k in _required(cls)}))


# ---------------------------------------------------------------- the loss on soft targets

LOSS_NAMES = sorted({cls.__name__ for cls in LOSSES._table().values()})


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_takes_soft_targets_as_it_takes_class_indices(name):
    """On one-hot targets the soft path gives the class-index loss; a mixed row beside them changes nothing
    of theirs (Keras's hinge losses read the whole batch to decide the form of its targets)."""
    loss = loss_of(name)
    pred = tf.constant([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    y = tf.constant([0, 2, 3], tf.int32)
    by_index = loss(y, pred).numpy()
    hard = tf.one_hot(y, 4)
    np.testing.assert_allclose(loss(hard, pred).numpy(), by_index, rtol=1e-5, atol=1e-6)
    beside_mixed = tf.concat([hard, [[0.3, 0.7, 0.0, 0.0]]], axis=0)
    with_mixed = loss(beside_mixed, tf.concat([pred, [[0.4, 0.4, 0.1, 0.1]]], axis=0)).numpy()
    if by_index.ndim:  # one value per example (Dice and Tversky give one for the batch)
        np.testing.assert_allclose(with_mixed[:3], by_index, rtol=1e-5, atol=1e-6)
    assert np.isfinite(with_mixed).all()


def test_sparse_crossentropy_on_soft_targets_is_the_expected_loss_with_the_same_from_logits():
    logits = tf.constant([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    soft = tf.constant([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]])
    for from_logits, pred in ((True, logits), (False, tf.nn.softmax(logits))):
        loss = loss_of({"type": "SparseCategoricalCrossentropy", "from_logits": from_logits})
        log_p = tf.nn.log_softmax(logits).numpy()
        np.testing.assert_allclose(loss(soft, pred).numpy(), -(soft.numpy() * log_p).sum(axis=1), rtol=1e-5)
    ignoring = loss_of({"type": "SparseCategoricalCrossentropy", "from_logits": True, "ignore_class": 1})
    np.testing.assert_allclose(ignoring(soft, logits).numpy(),
                               -(soft.numpy() * log_p * [1, 0, 1]).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(ignoring(tf.constant([1, 2]), logits).numpy(), [0.0, -log_p[1, 2]], rtol=1e-5)


def test_label_smoothing_applies_to_class_indices_and_to_mixed_labels():
    loss = loss_of({"type": "CategoricalCrossentropy", "label_smoothing": 0.1})
    pred = tf.constant([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    log_p = np.log(pred.numpy())

    def smoothed(t):  # Keras's label smoothing: (1 - 0.1)·t + 0.1 / classes
        return -((0.9 * t + 0.1 / 3) * log_p).sum(axis=1)

    np.testing.assert_allclose(loss(tf.constant([0, 2]), pred).numpy(), smoothed(np.eye(3)[[0, 2]]), rtol=1e-5)
    mixed = np.array([[0.6, 0.4, 0.0], [0.0, 0.1, 0.9]], np.float32)
    np.testing.assert_allclose(loss(tf.constant(mixed), pred).numpy(), smoothed(mixed), rtol=1e-5)


def test_generalized_crossentropy_on_soft_targets_has_finite_gradients_where_a_class_has_no_probability():
    loss = loss_of({"type": "CategoricalGeneralizedCrossEntropy", "q": 0.5})
    pred = tf.Variable([[0.5, 0.5, 0.0]])
    with tf.GradientTape() as tape:
        value = loss(tf.constant([[0.25, 0.75, 0.0]]), pred)
    np.testing.assert_allclose(value.numpy(), [0.25 * 2 * (1 - 0.5**0.5) + 0.75 * 2 * (1 - 0.5**0.5)], rtol=1e-5)
    assert np.isfinite(tape.gradient(value, pred).numpy()).all()


def test_mixup_with_label_smoothing_trains_a_step_to_a_finite_loss():
    x, y = shapes_batch(8)
    t = trainer([{"type": "MixUp"}], {"type": "CategoricalCrossentropy", "label_smoothing": 0.1}, batch=8)
    t.set_data(x, y)
    result = t.train_epoch(0)
    assert result.steps == 1 and np.isfinite(result.logs["loss"])


# ---------------------------------------------------------------- every layer trains, under both precisions

def _required(cls) -> list[str]:
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.default is p.empty and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


AUGMENT_ARGS = {"factor": 0.2, "height_factor": 0.1, "width_factor": 0.1, "max_number": 1, "height": SIDE,
                "width": SIDE}
AUGMENT_OWN = {"RandomPosterization": {"factor": [1, 8]}}  # bits kept: a range of integers


def _spec(name: str) -> dict:
    return {"type": name, **AUGMENT_OWN.get(name, {k: v for k, v in AUGMENT_ARGS.items()
                                                   if k in _required(LAYERS.get(name))})}


def test_every_augmentation_layer_has_test_arguments():
    assert all(set(_required(LAYERS.get(n))) <= set(AUGMENT_ARGS) for n in list_augmentations())


# The label mixers and the two layers of the shipped recipe run by default; the other layers with the slow tests.
DEFAULT_RUN = {"MixUp", "CutMix", "RandomFlip", "RandomTranslation"}


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in list_augmentations()]
)
def test_every_augmentation_layer_trains_a_step_with_mixed_labels(name, precision):
    """Each layer before a label mixer (MixUp; CutMix after MixUp), so that every one meets soft labels."""
    x, y = shapes_batch(8)
    x = np.repeat(x, 3, axis=-1)  # colour: RandomHue and the like take nothing else
    mixer = "CutMix" if name == "MixUp" else "MixUp"
    t = trainer([_spec(name), {"type": mixer}], batch=8, precision=precision, channels=3)
    t.set_data(x, y)
    result = t.train_epoch(0)
    assert result.steps == 1 and np.isfinite(result.logs["loss"]), result.logs


# ---------------------------------------------------------------- validate runs the label path

def test_validate_runs_a_label_mixer_on_labels(monkeypatch):
    def broken(self, labels, transformation, training=True):
        raise ValueError("labels must be one-hot")

    monkeypatch.setattr(keras.layers.MixUp, "transform_labels", broken)
    cfg = config_from_dict({"model": {"input_shape": [8, 8, 1], "layers": [{"type": "Flatten"}]},
                            "data": {"augment": [{"type": "RandomFlip"}, {"type": "MixUp"}]}})
    problems = augmentation_problems(cfg, (8, 8, 1), ("float32",))
    assert [(p.path, p.message) for p in problems] == [
        ("data.augment[1]", "MixUp cannot run on 8×8×1 images: labels must be one-hot")]


# ---------------------------------------------------------------- the command

@pytest.mark.slow
def test_cnn_train_with_mixup_learns_the_shapes(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(small_config({"data.augment": [{"type": "MixUp"}], "train.epochs": 5,
                                    "train.optimizer": {"type": "Adam", "learning_rate": 0.01},
                                    "data.shapes": {"image_size": 16, "train_examples": 300, "test_examples": 60,
                                                    "classes": ["x", "o", "square"]},
                                    "model.layers": [{"type": "Conv2D", "filters": 8, "kernel_size": 3,
                                                      "activation": "relu"}, {"type": "MaxPooling2D"},
                                                     {"type": "Flatten"},
                                                     {"type": "Dense", "units": 3, "activation": "softmax"}]}))
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    assert len((run_dir / "history.csv").read_text().splitlines()) == 1 + 5
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert test["accuracy"] > 0.6, test  # three classes: chance is 1/3


@pytest.mark.slow
def test_a_run_with_mixup_resumed_after_an_interrupt_repeats_the_uninterrupted_history(tmp_path):
    """The layers' random states are checkpointed with the model: the resumed epoch mixes as the
    uninterrupted one did, so the two histories are the same to the last digit."""
    from cnncli.errors import Interrupted
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    text = small_config({"deterministic": True, "train.epochs": 2,
                         "data.augment": [{"type": "MixUp"}, {"type": "RandomFlip"}, {"type": "CutMix"}]})

    def ctrl_c(row: dict) -> None:
        raise KeyboardInterrupt

    run_dirs = []
    for name, stop in (("whole", None), ("interrupted", ctrl_c)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(text)
        try:
            run_training(TrainOptions(config=config, output=tmp_path / name, on_epoch=stop), Reporter())
        except Interrupted:
            pass
        (run_dir,) = (tmp_path / name).glob("*/*")
        run_dirs.append(run_dir)
    whole, interrupted = run_dirs
    assert len((interrupted / "history.csv").read_text().splitlines()) == 1 + 1
    result = runner.invoke(app, ["train", "--resume", str(interrupted), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (interrupted / "history.csv").read_text() == (whole / "history.csv").read_text()
