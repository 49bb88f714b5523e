"""Does the loss read the model's output as the model makes it: probabilities or logits?

A cross-entropy loss takes `from_logits` (false unless written, and a plain name
such as `sparse_categorical_crossentropy` means false). When the last layer and
that flag disagree, Keras trains without an error and without learning, so the
pairing is checked with the model's other shapes, by `cnn validate` and before
`cnn train` reads any data.

These are errors, not warnings: none of the pairings is ever what a user means.
A probability loss fed logits clips them into [1e-7, 1 - 1e-7], so most
gradients are zero and accuracy stays near chance; fed another activation's
values (sigmoid, relu, ...) a categorical loss only pushes the true class up,
as nothing makes the outputs sum to 1. A logits loss fed probabilities squashes
twice and cannot bring the loss near zero. A linear output with
`from_logits: true` is right and passes (though `cnn predict` then shows logits
where it shows probabilities: softmax in the model is the form cnncli expects).
"""

from __future__ import annotations

import inspect
from typing import Any

from cnncli.config.schema import Config
from cnncli.errors import Problem

# Layers whose output, at inference, holds the values the layer before made: the activation is that layer's.
_SAME_VALUES = {
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
}
_LOGITS = {"linear", "log_softmax"}  # activations whose outputs are logits (softmax of them is the distribution)
_PROBABILITIES = {"softmax", "sigmoid", "hard_sigmoid"}


def loss_output_problems(cfg: Config, model: Any, names: list[str]) -> list[Problem]:
    """The disagreement between `train.loss`'s `from_logits` and the model's last activation, if any.

    `names`: the names of `model.layers` in the model (cnncli.model.builder.layer_names).
    """
    from cnncli.config.learning import LOSSES, loss_spec

    name, args = loss_spec(cfg.train.loss)
    cls = LOSSES.get(name)
    params = inspect.signature(cls).parameters
    if "from_logits" not in params:
        return []  # mse, hinge, ...: no flag to disagree with
    from_logits = bool(args.get("from_logits", params["from_logits"].default))
    found = _last_activation(cfg, model, names)
    if found is None:
        return []  # a layer whose outputs cnncli cannot tell (a normalization, a merge): no claim
    activation, what, path = found
    categorical = "Categorical" in cls.__name__  # one distribution over the classes; else Binary: one per output
    loss_path = "train.loss.from_logits" if "from_logits" in args else "train.loss"
    written = ("train", "loss") in (cfg._lines or {})
    where = loss_path if written else path
    if where == path:  # the message's own place: the layer needs no second mention of its line
        what = what.split(" (")[0]
    shown = name if isinstance(cfg.train.loss, str) else cls.__name__
    as_logits = f"{{type: {cls.__name__}, from_logits: true}}"
    if not from_logits and activation in _LOGITS:
        message = (
            f"{shown} reads the model's output as probabilities (from_logits: false), but {what} outputs "
            f"logits ({'no activation' if activation == 'linear' else activation}), so training stalls "
            f"near chance; add `activation: {'softmax' if categorical else 'sigmoid'}` to that layer, "
            f"or write the loss as {as_logits}"
        )
    elif not from_logits and categorical and activation != "softmax":
        classes = int(model.outputs[0].shape[-1])
        message = (
            f"{shown} reads the model's output as one probability distribution over the {classes} "
            f"classes, but {what} applies `{activation}`, whose outputs are no distribution (they need not "
            "sum to 1), so the loss does not measure the classification; use `activation: softmax` on that "
            "layer"
        )
    elif not from_logits and not categorical and activation not in _PROBABILITIES:
        message = (
            f"{shown} reads each output as a probability in [0, 1], but {what} applies `{activation}`, "
            "whose outputs are not; use `activation: sigmoid` (or softmax) on that layer"
        )
    elif from_logits and activation in _PROBABILITIES:
        message = (
            f"{shown} with from_logits: true applies {'softmax' if categorical else 'sigmoid'} to the "
            f"model's output itself, but {what} already applies `{activation}`, so the output is "
            "squashed twice and the loss cannot fall near zero; remove `from_logits: true` "
            "(cnn predict and evaluate read the output as probabilities)"
        )
    else:
        return []
    return [Problem(message, where)]


def _last_activation(cfg: Config, model, names: list[str]) -> tuple[str, str, str] | None:
    """(activation name, "the last layer `x` (model.layers[i], line n)", its key path) of the model's output.

    None when the output's last activation cannot be told from the layers.
    """
    import keras

    specs = cfg.model.layers
    i = len(specs) - 1
    while i >= 0 and _same_values(specs[i].type):
        inputs = specs[i].inputs
        if inputs and (len(inputs) != 1 or inputs[0] not in names):
            return None
        i = names.index(inputs[0]) if inputs else i - 1
    if i < 0:  # the backbone is the output: its own classifier top, if it has one
        if cfg.model.backbone is None or not cfg.model.backbone.include_top:
            return None
        base = next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)
        if base is None:
            return None
        activation = _activation_of(base.layers[-1])
        path = "model.backbone"
        return (activation, "the backbone's classifier (`classifier_activation`)", path) if activation else None
    layer = model.get_layer(names[i])
    activation = _activation_of(layer)
    if activation is None:
        return None
    path = f"model.layers[{i}]"
    line = cfg.line_of(("model", "layers", i))
    what = f"the last layer `{names[i]}` ({path}{f', line {line}' if line else ''})"
    if "activation" in specs[i].args:
        path += ".activation"
    return activation, what, path


def _same_values(type_name: str) -> bool:
    from cnncli.config.vocabulary import LAYERS

    return type_name in LAYERS and LAYERS.get(type_name).__name__ in _SAME_VALUES


def _activation_of(layer) -> str | None:
    """The activation a layer applies last, by name ("linear" for none); None for a layer that is not told."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU)):
        return type(layer).__name__.lower()
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)
