"""`cnn config`, `cnn schema` and `cnn init`: configs resolved, described to editors, and started from templates."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cnncli.commands.common import JsonOption, SetOption, app, emit_json, handled, out, output_option


@app.command("config")
def config_(
    configs: list[Path] = typer.Argument(..., readable=False, help="Config files, merged left to right."),
    set_: list[str] | None = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Print the single resolved config: extends followed, files merged, blocks expanded, defaults filled.

    This is what a run directory stores as config.yaml.

    Example: cnn config base.yaml fashion.yaml --set train.epochs=3
    """
    with handled(json_output):
        from cnncli.config.loading import load_config

        cfg = load_config(configs if len(configs) > 1 else configs[0], set_ or [])
        if json_output:
            emit_json(cfg.to_dict())
        else:
            out.print(cfg.to_yaml(), markup=False, end="")


@app.command()
def schema(
    output: Path | None = output_option("Write to FILE instead of stdout."),
) -> None:
    """Write the JSON Schema (2020-12) of a config, for editors and CI.

    VS Code's YAML extension reads it from a first line `# yaml-language-server: $schema=FILE`.

    Example: cnn schema --output cnncli.schema.json
    """
    with handled():
        from cnncli.config.schema_export import schema_text

        text = schema_text()
        if output is None:
            sys.stdout.write(text)
            return
        from cnncli.fileio import write, writing

        with writing(output):  # its folder is made, as for every other file cnn writes
            output.parent.mkdir(parents=True, exist_ok=True)
        write(output, text)
        out.print(f"wrote {output}", markup=False)


@app.command()
def init(
    path: Path = typer.Argument(Path("config.yaml"), readable=False, help="The config file to write."),
    template: str = typer.Option("lenet", "--template", "-t", help="A template: see `cnn list templates`."),
    data: str | None = typer.Option(
        None,
        "--data",
        metavar="KIND:DIR",
        help="Fill classes, image size and colour mode from data, e.g. image_folder:photos/.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace PATH if it exists."),
) -> None:
    """Write a commented config from a template, ready for cnn validate and cnn train.

    Example: cnn init flowers.yaml --template vgg16-transfer --data image_folder:photos/
    """
    with handled():
        from cnncli.templates import init_config

        init_config(path, template, data, force)
        out.print(f"wrote {path} (template {template}); next: cnn summary {path}", markup=False)
