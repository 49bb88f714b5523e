"""The model's input shape: from `model.input_shape`, else from the data.

A backbone pretrained on ImageNet needs three channels; a grayscale dataset is
then converted to RGB (with a notice) unless the config pins `color_mode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnncli.config import Config


@dataclass
class InputPlan:
    shape: tuple[int, int, int]
    num_classes: int | None  # None when not known without reading the data
    class_names: list[str] | None
    notes: list[str] = field(default_factory=list)


def plan_input(cfg: Config) -> InputPlan:
    """Decide the input shape; may adjust `cfg.data.color_mode` for a backbone."""
    notes: list[str] = []
    if cfg.model.backbone is not None and cfg.data.color_mode is None and cfg.model.input_shape is None:
        from cnncli.data import describe

        info = describe(cfg.data)
        if info.input_shape[-1] == 1:
            cfg.data.color_mode = "rgb"
            notes.append(f"{cfg.model.backbone.name} expects 3 colour channels; "
                         "the grayscale images are converted to RGB (set data.color_mode to choose)")
    if cfg.model.input_shape:  # stated: no need to look at the data (it may not exist yet)
        return InputPlan(tuple(cfg.model.input_shape), None, None, notes)
    from cnncli.data import describe  # only now: a stated shape needs no data code at all

    info = describe(cfg.data)
    return InputPlan(tuple(info.input_shape), info.num_classes, info.class_names, notes)
