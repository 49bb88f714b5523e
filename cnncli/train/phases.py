"""Training phases: which weights train, with which optimizer, for how many epochs.

Without `train.phases` a run is one phase training everything with
`train.optimizer`. With phases (transfer learning), each phase freezes or
unfreezes parts of the backbone; the head always trains. Keras needs a fresh
optimizer whenever the set of trainable variables changes, so each phase
builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncli.config import Config, OptimizerSpec


@dataclass
class PhasePlan:
    index: int
    epochs: int
    trainable: str | list[str]  # "all" | "head" | backbone layer-name prefixes
    optimizer: OptimizerSpec
    learning_rate: float | None  # overrides the optimizer's


def plan_phases(cfg: Config) -> list[PhasePlan]:
    if not cfg.train.phases:
        trainable = "all" if cfg.model.backbone is None or cfg.model.backbone.trainable else "head"
        return [PhasePlan(0, cfg.train.epochs, trainable, cfg.train.optimizer, None)]
    return [PhasePlan(i, p.epochs, p.trainable, p.optimizer or cfg.train.optimizer, p.learning_rate)
            for i, p in enumerate(cfg.train.phases)]


def backbone_of(model, cfg: Config):
    """The nested keras.applications model, if the config has one."""
    if cfg.model.backbone is None:
        return None
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.name not in ("augment",):
            return layer
    return None


def apply_trainable(model, cfg: Config, trainable: str | list[str]) -> None:
    """Set layer.trainable for a phase. BatchNormalization in a (partly) frozen backbone
    stays frozen, so it keeps running in inference mode with its ImageNet statistics."""
    backbone = backbone_of(model, cfg)
    if backbone is None:
        return
    if trainable == "all":
        backbone.trainable = True
        return
    if trainable == "head":
        backbone.trainable = False
        return
    backbone.trainable = True
    for layer in backbone.layers:
        is_bn = type(layer).__name__ == "BatchNormalization"
        layer.trainable = (not is_bn) and any(layer.name.startswith(prefix) for prefix in trainable)
