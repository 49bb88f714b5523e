"""`cnn init`: commented starting configs, shipped inside the package.

Each `<name>.yaml` here is a config with a few markers filled in by
`render`: `@NAME@` (the run name), `@DATA@` (the data section, from
`--data` or the offline `shapes` dataset), `@CLASSES@` (output units),
`@FROM_RUN@` and `@SCHEMA@` (the editor's schema line, pointing at the
schema file installed with the package).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cnncli.errors import CnnError, UsageError, did_you_mean

# What a template needs of the data regardless of the folder: VGG16 was trained on 224×224 colour images.
PRESETS: dict[str, dict] = {
    "vgg16-transfer": {"image_size": (224, 224), "color_mode": "rgb"},
}
DATA_KINDS = ("image_folder",)  # what --data KIND:DIR accepts
SHAPES_DATA = (
    "  dataset: shapes               # built-in synthetic figures, offline; for your images:\n"
    "                                # cnn init --data image_folder:DIR (one sub-folder per class)\n"
    "  shapes: {image_size: 32}"
)
SHAPES_CLASSES = 6


@dataclass
class DataFacts:
    """What `--data` found in a folder."""

    path: str  # as written into the config: relative to the config's folder
    classes: list[str]
    image_size: tuple[int, int]
    color_mode: str


def list_templates() -> list[str]:
    """Templates `cnn init` can write."""
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".yaml"))


def template_text(name: str) -> str:
    """The YAML text of template `name`, or a CnnError listing the templates."""
    names = list_templates()
    if name not in names:
        raise UsageError(
            f"unknown template `{name}`{did_you_mean(name, names)}; choose one of: {', '.join(names)}", "--template"
        )
    return resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def inspect_data(spec: str, config_path: Path) -> DataFacts:
    """`image_folder:DIR` → the classes, image size and colour mode found there."""
    kind, sep, folder = spec.partition(":")
    if not sep or kind not in DATA_KINDS or not folder:
        raise UsageError(f"takes KIND:DIR with KIND one of {', '.join(DATA_KINDS)}, got `{spec}`", "--data")
    from cnncli.config.schema import DataConfig
    from cnncli.data import describe

    info = describe(DataConfig(dataset=kind, path=folder))
    relative = os.path.relpath(os.path.abspath(folder), os.path.abspath(config_path.parent))
    return DataFacts(
        relative,
        info.class_names,
        (info.input_shape[0], info.input_shape[1]),
        "rgb" if info.input_shape[2] == 3 else "grayscale",
    )


def render(template: str, name: str, facts: DataFacts | None, schema: str) -> str:
    """The config text of `template` for `facts` (None: the shapes dataset)."""
    text = template_text(template)
    preset = PRESETS.get(template, {})
    if facts is None:
        data, classes = SHAPES_DATA, SHAPES_CLASSES
        if preset:
            data += f"\n  image_size: {list(preset['image_size'])}\n  color_mode: {preset['color_mode']}"
    else:
        size = preset.get("image_size", facts.image_size)
        shown = ", ".join(facts.classes[:6]) + (", …" if len(facts.classes) > 6 else "")
        data = (
            f"  dataset: image_folder\n"
            f"  path: {facts.path}{' ' * max(1, 22 - len(facts.path))}# relative to this file; "
            f"{len(facts.classes)} classes: {shown}\n"
            f"  image_size: {list(size)}{' ' * max(1, 16 - len(str(list(size))))}# every image is resized to this\n"
            f"  color_mode: {preset.get('color_mode', facts.color_mode)}"
        )
        classes = len(facts.classes)
    values = {
        "@SCHEMA@": f"# yaml-language-server: $schema={schema}",
        "@NAME@": name,
        "@DATA@": data,
        "@CLASSES@": str(classes),
        "@FROM_RUN@": "runs/RUN_NAME/TIMESTAMP   # replace with your run",
    }
    for marker, value in values.items():
        text = text.replace(marker, value)
    return text


def init_config(path: Path, template: str, data: str | None = None, force: bool = False) -> str:
    """Write a config from `template` to `path` (refusing to replace a file unless `force`); return its text."""
    from cnncli.config.schema_export import SCHEMA_FILE

    if path.exists() and (path.is_dir() or not force):
        raise CnnError(f"{path} already exists; choose another path (or --force to replace a file)")
    facts = inspect_data(data, path) if data else None
    text = render(template, path.stem.replace("_", "-"), facts, str(SCHEMA_FILE))
    from cnncli.fileio import write as atomic_write
    from cnncli.fileio import writing

    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return text
