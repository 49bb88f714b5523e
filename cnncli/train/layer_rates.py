"""Per-layer learning rates (`train.phases[].layer_lr_decay`): earlier blocks learn more slowly.

Blocks are the backbone's layers grouped by name prefix before the first `_`
(VGG16: block1 … block5; ResNet50: conv1 … conv5), in order of depth, counting
only blocks with trainable weights; the head is the last group. The head gets
the phase's rate, the last trainable backbone block rate × decay, the one
before rate × decay², and so on (the lecture's "each earlier layer group at a
3–10× smaller rate than the next": decay 0.1–0.33).

How: the optimizer's own `update_step(gradient, variable, learning_rate)` —
the method every Keras 3 optimizer implements — receives the rate multiplied
by its variable's factor. The step is then exactly the one a separate
optimizer at that rate would take, for SGD (with or without momentum) and for
the adaptive optimizers alike (Adam, AdamW, RMSprop, Adagrad, Nadam, Lion …),
while everything that reads or sets `optimizer.learning_rate` (schedules,
ReduceLROnPlateau, the logged rate) keeps working on the one base rate.

Alternatives not taken:
- scaling gradients before `optimizer.apply`: exact for SGD, but Adam divides
  the gradient by its own running magnitude, so a constant gradient scale
  cancels out and the rates would not change at all;
- keras.optimizers.MultiOptimizer (one optimizer per group, Keras ≥ 3.13):
  its `learning_rate` raises AttributeError, which breaks epoch schedules,
  ReduceLROnPlateau and the learning_rate column of history.csv.
Decoupled weight decay (AdamW's `weight_decay`) is applied by Keras with the
base rate, outside update_step, so it is not scaled per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cnncli import compat

# Optimizers whose step is not proportional to the rate: a factor on the rate would not mean "k× slower".
NOT_PROPORTIONAL = {
    "Ftrl": "its step depends on the rate through a power law",
    "Adafactor": "it caps the rate at 1/sqrt(step)",
    "ScheduleFreeAdamW": "it averages iterates with rate-dependent weights",
}


@dataclass
class RateGroup:
    name: str  # block prefix, or "head"
    multiplier: float
    variables: list

    def as_json(self, base_rate: float | None) -> dict:
        """The group as run.json records it, with its rate when the base rate is known."""
        params = int(sum(_size(v) for v in self.variables))
        out = {"group": self.name, "multiplier": round(self.multiplier, 12), "trainable_params": params}
        if base_rate is not None:  # 7 digits: what a float32 rate holds, without 0.0010000000474974513
            out["learning_rate"] = float(f"{float(base_rate) * self.multiplier:.7g}")
        return out


def block_name(layer_name: str) -> str:
    """VGG16's `block5_conv3` → `block5`; a name without `_` is its own block."""
    return layer_name.split("_", 1)[0]


def rate_groups(model: Any, backbone: Any, decay: float) -> list[RateGroup]:
    """The trainable variables in blocks, earliest first, the head last, with their rate multipliers."""
    blocks: dict[str, list] = {}
    in_backbone: set[int] = set()
    for layer in backbone.layers:
        variables = layer.trainable_variables
        if variables:
            blocks.setdefault(block_name(layer.name), []).extend(variables)
            in_backbone.update(id(v) for v in variables)
    head = [v for v in model.trainable_variables if id(v) not in in_backbone]
    named = list(blocks.items()) + ([("head", head)] if head else [])
    last = len(named) - 1
    return [RateGroup(name, float(decay) ** (last - i), variables) for i, (name, variables) in enumerate(named)]


def multipliers_for(variables: Sequence[Any], groups: list[RateGroup]) -> tuple[float, ...]:
    """One multiplier per variable of `variables` (the list the optimizer is built with)."""
    by_id = {id(v): g.multiplier for g in groups for v in g.variables}
    return tuple(by_id.get(id(v), 1.0) for v in variables)


_CLASSES: dict[type, type] = {}


def layerwise(
    optimizer: Any, variables: Sequence[Any], multipliers: tuple[float, ...], exclude_from_decay: Sequence[str] = ()
) -> Any:
    """A copy of `optimizer` (same class and config) that scales the rate of variables[i] by multipliers[i].

    The copy is built on `variables`, so the multipliers line up with the
    optimizer's own variable indices. A config does not carry the names excluded from weight
    decay (`exclude_from_weight_decay`): they are given again, before the copy is built.
    """
    base: Any = type(optimizer)  # a keras.optimizers.Optimizer subclass
    cls: Any = _CLASSES.get(base)
    if cls is None:
        cls = type(base.__name__, (base,), {"update_step": _scaled_update_step, "__doc__": base.__doc__})
        # Serialised (model.keras's compile config) as the Keras class it extends; the factors
        # belong to this run's phase and are recorded in run.json instead.
        cls.__module__, cls.__qualname__ = base.__module__, base.__qualname__
        _CLASSES[base] = cls
    copy = cls.from_config(optimizer.get_config())
    if exclude_from_decay:
        copy.exclude_from_weight_decay(var_names=list(exclude_from_decay))
    copy.build(list(variables))
    copy._lr_multipliers = tuple(float(m) for m in multipliers)
    copy._variable_paths = tuple(v.path for v in variables)  # compat.variable_index's fallback (strings: untracked)
    return copy


def _scaled_update_step(self, gradient, variable, learning_rate):
    factor = self._lr_multipliers[compat.variable_index(self, variable)]
    if factor != 1.0:
        learning_rate = learning_rate * factor
    return super(type(self), self).update_step(gradient, variable, learning_rate)


def _size(variable) -> int:
    n = 1
    for d in variable.shape:
        n *= int(d)
    return n
