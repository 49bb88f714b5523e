"""`data.augment`: the Keras layers that perturb each training batch, and the trial that proves they run.

The layers run on the raw float32 pixels before the model, in float32 whatever
the run's precision: a layer built under a mixed policy computes in bfloat16 or
float16, which several Keras augmentations do not take (CutMix mixes a float32
image with a bfloat16 one and fails in the first step), and the pixels lose
nothing by staying float32 until the model's first layer casts them.

The layers that change labels (MixUp, CutMix: `compat.changes_labels` tells
them apart) get one-hot float32 labels with the images and mix both; the
training step (loop.py `Trainer.augment_batch`) then hands the loss soft
targets. Every other layer sees the images only, and without such a layer the
step keeps its class indices.

What a layer does only when it runs (a hue shift on one grey channel, a crop
that leaves the images smaller than the model's input) is found by running the
layers once on a tiny batch, as the training step runs them, labels included:
`cnn validate` does so under every precision `auto` may choose, `cnn train`
under its own, before any data is read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cnncli.config.schema import Config
from cnncli.errors import ConfigError, Problem

AUTO_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # what train/decisions.py's `auto` may pick
TRIAL_BATCH = 2  # images in the trial: enough for the layers that mix two images (MixUp, CutMix)


class Augmentation:
    """The augmentation layers, applied in order (not a keras.Sequential: Keras builds a Sequential
    as a functional graph on its first call, in which Equalization's output is its own input, a cycle).

    The layers that change labels (MixUp and CutMix mix two images and their labels in the same
    proportion) get the labels with the images, as Keras's {"images", "labels"} dict; every other
    layer gets the images alone.
    """

    def __init__(self, layers: list):
        from cnncli import compat

        self.layers = layers
        self.mixes = [compat.changes_labels(layer) for layer in layers]  # per layer: it gets the labels

    @property
    def changes_labels(self) -> bool:
        """Whether a layer changes the labels: the step then trains on soft labels, one-hot and mixed."""
        return any(self.mixes)

    def __call__(self, images: Any, labels: Any = None, training: bool = True) -> Any:
        """Run the layers in order on a batch of images, or on images and their one-hot float labels
        (then return both: `labels` mixed as the images were)."""
        for layer, mixes in zip(self.layers, self.mixes, strict=True):
            if mixes and labels is not None:
                out = layer({"images": images, "labels": labels}, training=training)
                images, labels = out["images"], out["labels"]
            else:
                images = layer(images, training=training)
        return images if labels is None else (images, labels)

    @property
    def variables(self) -> list:
        """Their random-generator states, in the config's order: checkpointed with the model for exact resume."""
        return [v for layer in self.layers for v in layer.variables]


def build_augmentation(cfg: Config, seed: int | None = None) -> Augmentation | None:
    """The layers of `data.augment` (None without any), float32 unless a layer sets its own `dtype`."""
    from cnncli.config.vocabulary import make_layer
    from cnncli.model.builder import layer_names

    if not cfg.data.augment:
        return None
    seed = cfg.seed if seed is None else seed
    names = layer_names(cfg.data.augment)
    layers = []
    for i, (spec, name) in enumerate(zip(cfg.data.augment, names, strict=True)):
        extra = _seed_for(spec, (seed or 0) + i)
        if "dtype" not in spec.args:
            extra["dtype"] = "float32"
        try:
            layers.append(make_layer(spec, f"augment_{name}", f"data.augment[{i}]", **extra))
        except ConfigError as exc:
            raise cfg.locate(exc.problems) from None
    return Augmentation(layers)


def _seed_for(spec, seed: int) -> dict:
    """Random augmentation layers follow the run's seed unless the config sets their own."""
    from cnncli.config.vocabulary import LAYERS, accepted_args

    takes_seed = "seed" in accepted_args(LAYERS.get(spec.type))
    return {"seed": seed} if takes_seed and "seed" not in spec.args else {}


def augmentation_problems(
    cfg: Config, input_shape: Sequence[int], precisions: Sequence[str] | None = None
) -> list[Problem]:
    """What goes wrong when `data.augment` runs on a batch of `input_shape` images, under each precision.

    `precisions`: those the run may get (default: the config's, or every one `auto` may choose).
    Each layer is called on the previous one's output, eagerly and then traced with an unknown
    batch size as the training step traces it; the images must leave with the shape they came in,
    the one the model takes.
    """
    import keras

    if not cfg.data.augment:
        return []
    if precisions is None:
        precisions = AUTO_PRECISIONS if cfg.runtime.precision == "auto" else (cfg.runtime.precision,)
    before = keras.config.dtype_policy()
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # each layer's trial traces a tf.function of its own: TF's retracing warning
    try:
        for n, precision in enumerate(precisions):
            keras.config.set_dtype_policy(precision)
            problems = _trial(cfg, tuple(input_shape), precision, n > 0)  # the first failing would fail them all
            if problems:
                return problems  # one precision's problems: the others would repeat them
    finally:
        keras.config.set_dtype_policy(before)
        tf_log.setLevel(level)
    return []


def check_augmentation(cfg: Config, precision: str | None = None) -> None:
    """Raise what `augmentation_problems` finds, with lines, for the run's precision (default: all it may get)."""
    if not cfg.data.augment:
        return
    from cnncli.model.inputs import plan_input

    problems = augmentation_problems(cfg, plan_input(cfg).shape, (precision,) if precision else None)
    if problems:
        raise cfg.locate(problems)


def _trial(cfg: Config, shape: tuple, precision: str, say_precision: bool) -> list[Problem]:
    import numpy as np
    import tensorflow as tf

    from cnncli.config.vocabulary import keras_message

    augmentation = build_augmentation(cfg, seed=cfg.seed or 0)
    under = f" (under precision {precision}, which `runtime.precision: auto` may choose)" if say_precision else ""
    x = tf.constant(
        np.linspace(0, 255, TRIAL_BATCH * int(np.prod(shape)), dtype="float32").reshape((TRIAL_BATCH, *shape))
    )
    # One class per image, as the step gives a layer that mixes labels: one-hot float32.
    y = tf.one_hot(tf.range(TRIAL_BATCH), TRIAL_BATCH, dtype="float32")
    changed = None  # the first layer that changes the image shape
    assert augmentation is not None  # the config has augmentation layers
    for i, (layer, mixes) in enumerate(zip(augmentation.layers, augmentation.mixes, strict=True)):
        one = Augmentation([layer])  # the layer as the step calls it: with the labels when it mixes them
        try:
            one(x, y if mixes else None, training=True)  # eagerly first: Keras's own message, not tf.function's
            signature = [tf.TensorSpec((None, *x.shape[1:]), x.dtype)]
            if mixes:
                signature.append(tf.TensorSpec((None, y.shape[1]), y.dtype))
                x, _ = tf.function(lambda t, u, one=one: one(t, u, training=True), input_signature=signature)(x, y)
            else:
                x = tf.function(lambda t, one=one: one(t, training=True), input_signature=signature)(x)
        except Exception as exc:  # whatever Keras raises, it comes from this layer on these images
            reason = _reason(exc, keras_message)
            if x.shape[-1] == 1 and "channels" in reason:
                reason += "; `data.color_mode: rgb` gives the images 3 channels"
            return [
                Problem(
                    f"{type(layer).__name__} cannot run on {_shown(x.shape[1:])} images{under}: {reason}",
                    f"data.augment[{i}]",
                )
            ]
        if changed is None and tuple(x.shape[1:]) != shape:
            changed = i
    if tuple(x.shape[1:]) != shape and changed is not None:
        return [
            Problem(
                f"{cfg.data.augment[changed].type} turns the {_shown(shape)} training images into "
                f"{_shown(x.shape[1:])}, but the model takes {_shown(shape)} (and evaluation does not "
                "augment); augmentation must keep the image size: resize with data.image_size, or pad "
                "before cropping",
                f"data.augment[{changed}]",
            )
        ]
    return []


def _shown(shape) -> str:
    return "×".join(str(d) for d in shape)


def _reason(exc: BaseException, keras_message) -> str:
    """The sentence of an error, without tf.function's wrapping ("in user code: ... ValueError: ...")
    or a TensorFlow op's decorations ("{{function_node ...}} ... [Op:RGBToHSV] name:")."""
    import re

    text = str(exc)
    found = [line.strip() for line in text.splitlines() if line.strip().split(":")[0].endswith(("Error", "Exception"))]
    reason = found[-1].split(": ", 1)[-1] if "in user code:" in text and found else keras_message(exc)
    reason = re.sub(r"\{\{[^}]*\}\}\s*", "", reason)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", reason).strip().rstrip(".")
