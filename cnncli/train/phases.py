"""Training phases: which weights train, with which optimizer, for how many epochs.

Without `train.phases` a run is one phase training everything with
`train.optimizer`. With phases (transfer learning), each phase freezes or
unfreezes parts of the backbone; the head always trains. Keras needs a fresh
optimizer whenever the set of trainable variables changes, so each phase
builds its own (with per-block rates when the phase sets `layer_lr_decay`,
see cnncli.train.layer_rates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnncli.config.schema import Config, OptimizerSpec
from cnncli.errors import did_you_mean
from cnncli.model.geometry import all_layers


@dataclass
class PhasePlan:
    index: int
    epochs: int
    trainable: str | list[str]  # "all" | "head" | backbone layer-name prefixes
    optimizer: OptimizerSpec
    learning_rate: float | None  # overrides the optimizer's
    layer_lr_decay: float | None = None  # rate multiplier per earlier block (cnncli.train.layer_rates)


def plan_phases(cfg: Config) -> list[PhasePlan]:
    """The training phases: `train.phases`, or one phase of `train.epochs` when there are none."""
    if not cfg.train.phases:
        trainable = "all" if cfg.model.backbone is None or cfg.model.backbone.trainable else "head"
        return [PhasePlan(0, cfg.train.epochs, trainable, cfg.train.optimizer, None)]
    return [
        PhasePlan(i, p.epochs, p.trainable, p.optimizer or cfg.train.optimizer, p.learning_rate, p.layer_lr_decay)
        for i, p in enumerate(cfg.train.phases)
    ]


def backbone_of(model: Any, cfg: Config) -> Any:
    """The nested keras.applications model, if the config has one."""
    if cfg.model.backbone is None:
        return None
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.name not in ("augment",):
            return layer
    return None


def apply_trainable(model: Any, cfg: Config, trainable: str | list[str]) -> None:
    """Set layer.trainable for a phase: `head` freezes the whole backbone, `all` unfreezes it,
    prefixes unfreeze the top-level backbone layers whose names start with one of them.
    BatchNormalization in a frozen or partly frozen backbone stays frozen, so it keeps running
    in inference mode with its pretrained statistics; only `all` trains it."""
    backbone = backbone_of(model, cfg)
    if backbone is None:
        return
    if trainable in ("all", "head"):
        _set_trainable(backbone, trainable == "all")
        return
    _set_trainable(backbone, True)
    for layer in backbone.layers:
        _set_trainable(layer, any(layer.name.startswith(prefix) for prefix in trainable))
    for layer in all_layers(backbone):  # also inside nested models (a from_run base may hold one)
        if type(layer).__name__ == "BatchNormalization":
            layer.trainable = False


def _set_trainable(layer, value: bool) -> None:
    """layer.trainable = value for the layer and everything inside it.

    Keras propagates `trainable` to sublayers only when the value changes, so a
    model left True over layers set False one by one would keep them frozen.
    """
    layer.trainable = value
    for inner in all_layers(layer):
        inner.trainable = value


def check_phases(model: Any, cfg: Config) -> None:
    """Phase settings that need the built model: every prefix in `trainable` names some backbone
    layer, and `layer_lr_decay` goes with an optimizer whose step is proportional to its rate."""
    from cnncli.config.learning import OPTIMIZERS
    from cnncli.errors import Problem
    from cnncli.train.layer_rates import NOT_PROPORTIONAL, block_name

    backbone = backbone_of(model, cfg)
    if backbone is None or not cfg.train.phases:
        return
    names = [layer.name for layer in backbone.layers if type(layer).__name__ != "InputLayer"]
    blocks = list(dict.fromkeys(block_name(n) for n in names))
    problems = []
    for i, phase in enumerate(cfg.train.phases):
        optimizer = OPTIMIZERS.canonical((phase.optimizer or cfg.train.optimizer).type)
        if phase.layer_lr_decay is not None and optimizer in NOT_PROPORTIONAL:
            problems.append(
                Problem(
                    f"layer_lr_decay scales learning rates, but {optimizer}'s step is not "
                    f"proportional to its rate ({NOT_PROPORTIONAL[optimizer]}); use SGD, Adam, "
                    "AdamW or RMSprop in this phase",
                    f"train.phases[{i}].layer_lr_decay",
                )
            )
        if not isinstance(phase.trainable, list):
            continue
        for j, prefix in enumerate(phase.trainable):
            if not any(n.startswith(prefix) for n in names):
                problems.append(
                    Problem(
                        f"no layer of {backbone.name} starts with `{prefix}`{did_you_mean(prefix, blocks)}; "
                        f"its blocks: {', '.join(blocks)}",
                        f"train.phases[{i}].trainable[{j}]",
                    )
                )
    if not problems:
        for i, planned in enumerate(plan_phases(cfg)):
            apply_trainable(model, cfg, planned.trainable)
            if not model.trainable_weights:  # e.g. include_top with no model.layers, and `trainable: head`
                problems.append(
                    Problem(
                        "this phase trains no weights: the backbone is frozen and there is no "
                        "head with weights (model.layers)",
                        f"train.phases[{i}].trainable",
                    )
                )
        apply_trainable(model, cfg, plan_phases(cfg)[0].trainable)
    if problems:
        raise cfg.locate(problems)


def phase_params(model: Any, cfg: Config) -> list[dict]:
    """Trainable and frozen parameter counts of each phase, for `cnn summary` (leaves the model in phase 0's state)."""
    phases = plan_phases(cfg)
    rows = []
    for phase in phases:
        apply_trainable(model, cfg, phase.trainable)
        trainable = int(sum(_size(w) for w in model.trainable_weights))
        rows.append(
            {
                "index": phase.index,
                "epochs": phase.epochs,
                "trainable": phase.trainable,
                "trainable_params": trainable,
                "non_trainable_params": int(model.count_params()) - trainable,
                "learning_rate": phase.learning_rate
                if phase.learning_rate is not None
                else phase.optimizer.args.get("learning_rate"),
                "layer_lr_decay": phase.layer_lr_decay,
            }
        )
    apply_trainable(model, cfg, phases[0].trainable)
    return rows


def _size(weight) -> int:
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n
