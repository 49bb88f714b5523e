"""The model's input shape: from `model.input_shape`, else from the data.

A backbone pretrained on ImageNet needs three channels; a grayscale dataset is
then converted to RGB (with a notice) unless the config pins `color_mode`. A
`from_run` backbone takes the input of the run it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnncli.config.schema import Config


@dataclass
class InputPlan:
    shape: tuple[int, ...]  # (h, w, c) for images; a model of Dense layers may take (h, w)
    num_classes: int | None  # None when not known without reading the data
    class_names: list[str] | None
    notes: list[str] = field(default_factory=list)


def plan_input(cfg: Config) -> InputPlan:
    """Decide the input shape; may adjust `cfg.data.color_mode` for a backbone."""
    notes: list[str] = []
    backbone = cfg.model.backbone
    if backbone is not None and backbone.from_run is not None and cfg.model.input_shape is None:
        # The earlier model's input is fixed (its Flatten/Dense sizes depend on it): the data is converted to it.
        from cnncli.data import describe
        from cnncli.model.backbones import source_input_shape

        shape = source_input_shape(cfg)
        info = describe(cfg.data)
        if tuple(info.input_shape) != shape:
            notes.append(
                f"the model of run `{backbone.from_run}` takes {shape[0]}×{shape[1]}×{shape[2]} images; "
                f"the {info.input_shape[0]}×{info.input_shape[1]}×{info.input_shape[2]} images are "
                "converted to that"
            )
        return InputPlan(shape, info.num_classes, info.class_names, notes)
    if (
        backbone is not None
        and backbone.name is not None
        and cfg.data.color_mode is None
        and cfg.model.input_shape is None
    ):
        from cnncli.data import describe

        info = describe(cfg.data)
        if info.input_shape[-1] == 1:
            cfg.data.color_mode = "rgb"
            notes.append(
                f"{backbone.name} expects 3 colour channels; "
                "the grayscale images are converted to RGB (set data.color_mode to choose)"
            )
    if cfg.model.input_shape:  # stated: no need to look at the data (it may not exist yet)
        return InputPlan(tuple(cfg.model.input_shape), None, None, notes)
    from cnncli.data import describe  # only now: a stated shape needs no data code at all

    info = describe(cfg.data)
    return InputPlan(tuple(info.input_shape), info.num_classes, info.class_names, notes)
