"""What every `cnn` command shares: the Typer app, the consoles, the options, and the error contract.

Each command's docstring is its --help. Library code raises CnnError; `handled`
turns it into one "Error: …" line on stderr and exit 1 (130 for an interrupt).
Exit 2 means the command line itself is malformed: Typer's own usage errors, and
`UsageError` (an option's value no file could make right), shown the same way.
TensorFlow is imported inside the commands that need it, so `cnn --help`
stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console

from cnncli import __version__, faults
from cnncli.errors import CnnError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, inspect, evaluate and export CNN image classifiers from YAML configs.",
    rich_markup_mode="rich",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}

SetOption = typer.Option(
    None, "--set", metavar="KEY.PATH=VALUE", help="Override a config value, e.g. --set train.epochs=3 (repeatable)."
)
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")


def output_option(help: str, metavar: str | None = None) -> Any:
    """`--output`/`-o`, optional: where a command writes (a path the command checks itself, not read)."""
    return typer.Option(None, "--output", "-o", metavar=metavar, readable=False, help=help)


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probes) sent to /dev/null.

    Those lines are written to file descriptor 2 by absl before TF_CPP_MIN_LOG_LEVEL
    is read, so only redirecting the descriptor silences them; --debug keeps them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _state["debug"] or "tensorflow" in sys.modules:
        return
    faults.point("tensorflow_import")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe logs once, here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def handled(json_output: bool = False) -> Iterator[None]:
    """Turn library errors into the CLI's contract: one Error line and exit 1; a UsageError as Typer's own
    usage errors, exit 2; Ctrl-C exit 130, saying what it stopped.

    A command imports its modules inside this block, so an interrupt while TensorFlow loads is reported too.
    """
    try:
        quiet_tensorflow()
        if json_output:
            keras_logs_off_stdout()
    except KeyboardInterrupt:
        raise interrupted("while loading TensorFlow") from None
    try:
        yield
    except UsageError as exc:
        if _state["debug"]:
            raise
        raise usage_error(str(exc), exc.option) from None
    except CnnError as exc:
        if _state["debug"]:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise interrupted() from None


def usage_error(message: str, option: str | None = None) -> typer.BadParameter:
    """A malformed command line, shown with the command's usage line as Typer shows its own (exit 2);
    Typer attaches the command's context to it on the way out."""
    return typer.BadParameter(message, param_hint=f"'{option}'" if option else None)


def interrupted(when: str | None = None) -> typer.Exit:
    """Ctrl-C: one line on stderr (what was stopped, and that nothing was written when it was before any
    work), exit 130. Stops during training say more: they raise errors.Interrupted, a CnnError."""
    print(f"Interrupted {when}; nothing was written." if when else "Interrupted.", file=sys.stderr)
    return typer.Exit(130)


def keras_logs_off_stdout() -> None:
    """Keras prints download progress to stdout; --json reserves stdout for the document."""
    import keras

    keras.utils.disable_interactive_logging()


def emit_json(data: Any) -> None:
    """The one JSON document of --json; a Path in it is written absolute (fileio.absolute)."""
    from pathlib import Path

    from cnncli.fileio import absolute

    def plain(value):
        return absolute(value) if isinstance(value, Path) else str(value)

    sys.stdout.write(json.dumps(data, indent=2, default=plain) + "\n")
    sys.stdout.flush()


def _version(value: bool) -> None:
    if value:
        print(f"cnncli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = debug
