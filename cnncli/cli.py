"""The `cnn` command: the app of cnncli/commands/, with `cnn list` and the entry point.

Each command's docstring is its --help; the modules under cnncli/commands/ hold
them by area, and importing them here registers them in the order `cnn --help`
lists them. Library code raises CnnError; `commands.common.handled` turns it
into one "Error: …" line on stderr and exit 1 (130 for an interrupt); exit 2 is
a malformed command line, shown as Typer shows its own usage errors.
"""

from __future__ import annotations

import importlib
import os
import sys

from cnncli import faults

try:  # Ctrl-C while cnn starts (its imports take a moment) is one line and exit 130, not a traceback
    faults.point("cli_start")
    import typer

    from cnncli.commands.common import JsonOption, app, emit_json, handled, out

    # Registered in the order `cnn --help` lists them.
    from cnncli.commands import models  # noqa: E402, F401  isort: skip
    from cnncli.commands import training  # noqa: E402, F401  isort: skip
    from cnncli.commands import data  # noqa: E402, F401  isort: skip
    from cnncli.commands import explain  # noqa: E402, F401  isort: skip
    from cnncli.commands import serving  # noqa: E402, F401  isort: skip
    from cnncli.commands import configs  # noqa: E402, F401  isort: skip
    from cnncli.commands import experiments  # noqa: E402, F401  isort: skip
    from cnncli.errors import UsageError  # noqa: E402  isort: skip
except KeyboardInterrupt:
    print("Interrupted while cnn was starting; nothing was written.", file=sys.stderr)
    sys.exit(130)

LISTS = {  # what `cnn list` can show: name -> (module, function)
    "layers": ("cnncli.config.vocabulary", "list_layers"),
    "augmentations": ("cnncli.config.vocabulary", "list_augmentations"),
    "optimizers": ("cnncli.config.learning", "list_optimizers"),
    "schedules": ("cnncli.config.learning", "list_schedules"),
    "backbones": ("cnncli.config.vocabulary", "list_backbones"),
    "datasets": ("cnncli.data", "list_datasets"),
    "formats": ("cnncli.deploy.export", "list_formats"),
    "templates": ("cnncli.templates", "list_templates"),
}


@app.command("list")
def list_names(
    what: str = typer.Argument(..., help=f"One of: {', '.join(LISTS)}."),
    json_output: bool = JsonOption,
) -> None:
    """List the names a config or option accepts: layer types, the augmentation layers of data.augment,
    optimizers, schedules, backbones, datasets, formats, and the templates of cnn init.

    Example: cnn list backbones
    """
    with handled(json_output):
        if what not in LISTS:
            from cnncli.errors import did_you_mean

            raise UsageError(
                f"cannot list `{what}`{did_you_mean(what, LISTS)}; choose one of: {', '.join(LISTS)}", "WHAT"
            )
        module, function = LISTS[what]
        names = getattr(importlib.import_module(module), function)()
        if json_output:
            emit_json(names)
        else:
            out.print("\n".join(names))


OPTIONAL_VALUES = {"--errors": "16"}  # options whose value may be left out; Typer has no optional values


def fill_optional_values(argv: list[str]) -> list[str]:
    """`--errors` alone (or followed by something other than a number) means `--errors 16`.

    A number that is no count (`-1`, `0`, `2.5`) stays the option's value, so Typer's own check
    names the option and the range it takes, rather than reading `-1` as an unknown option.
    """
    filled = []
    for i, arg in enumerate(argv):
        filled.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or not _number(argv[i + 1])):
            filled.append(OPTIONAL_VALUES[arg])
    return filled


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> None:
    """Run the `cnn` command line: the entry point the package installs."""
    os.umask(os.umask(0o022) | 0o022)  # nothing cnn creates (runs, exports, plots) is group- or world-writable
    app(args=fill_optional_values(sys.argv[1:]))


if __name__ == "__main__":
    main()
