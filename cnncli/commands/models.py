"""`cnn validate` and `cnn summary`: a config checked, and its model described, before any data."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cnncli.commands.common import JsonOption, SetOption, app, emit_json, err, handled, out
from cnncli.errors import UsageError


@app.command()
def validate(
    configs: list[Path] = typer.Argument(..., readable=False, help="Config files to check, or folders of them."),
    set_: list[str] | None = SetOption,
    print_config: bool = typer.Option(False, "--print", help="Print each resolved config as YAML."),
    format_: str = typer.Option("text", "--format", help="text | github (::error annotations for pull requests)"),
    json_output: bool = JsonOption,
) -> None:
    """Check configs (schema, layer arguments, shapes) without training; exit 1 if any fails.

    Example: cnn validate configs/ --format github
    """
    with handled(json_output):
        from cnncli.summary import config_files, github_annotations, validate_file

        if format_ not in ("text", "github"):
            raise UsageError(f"`{format_}` is not a format; choose text or github", "--format")
        results = [validate_file(path, set_ or []) for path in config_files(configs)]
        if json_output:
            emit_json([r.as_json() for r in results])
        elif format_ == "github":
            for r in results:
                for line in ([f"ok      {r.file}"] if r.ok else []) + github_annotations(r):
                    print(line)
        else:
            for r in results:
                if r.ok:
                    out.print(f"ok      {r.file}  ({r.total_params:,} parameters, input {r.input_shape})")
                    if print_config:
                        out.print(r.config_yaml, markup=False)
                else:
                    for line in r.error.splitlines():
                        print(f"Error: {line.strip()}" if not line.startswith(" ") else line, file=sys.stderr)
                for warning in r.warnings:
                    err.print(f"[yellow]warning[/]: {r.file}: {warning}")
        raise typer.Exit(0 if all(r.ok for r in results) else 1)


@app.command()
def summary(
    config: list[Path] = typer.Argument(..., readable=False, help="Config file; several are merged left to right."),
    set_: list[str] | None = SetOption,
    expand: bool = typer.Option(False, "--expand", help="One row per layer, also inside blocks."),
    json_output: bool = JsonOption,
) -> None:
    """Show each layer's output shape, parameters, receptive field and MACs; no training.

    Example: cnn summary configs/mnist_lenet.yaml --json
    """
    with handled(json_output):
        from cnncli.insight.terminal import print_summary
        from cnncli.summary import summarize_config

        result = summarize_config(config if len(config) > 1 else config[0], set_ or [])
        if json_output:
            emit_json(result.as_json())
        else:
            print_summary(out, result, expand)
            for warning in result.warnings:
                err.print(f"[yellow]warning[/]: {warning}")
