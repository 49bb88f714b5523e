"""What every `cnn` command shares: the Typer app, the consoles, the options, and the error contract.

Each command's docstring is its --help. Library code raises CnnError; `handled`
turns it into one "Error: …" line on stderr and exit 1 (130 for an interrupt).
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

from cnncli import __version__
from cnncli.errors import CnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, inspect, evaluate and export CNN image classifiers from YAML configs.",
                  rich_markup_mode="rich")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}

SetOption = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                         help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probes) sent to /dev/null.

    Those lines are written to file descriptor 2 by absl before TF_CPP_MIN_LOG_LEVEL
    is read, so only redirecting the descriptor silences them; --debug keeps them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _state["debug"] or "tensorflow" in sys.modules:
        return
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
    """Turn library errors into the CLI's contract: one Error line, exit code."""
    quiet_tensorflow()
    if json_output:
        keras_logs_off_stdout()
    try:
        yield
    except CnnError as exc:
        if _state["debug"]:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        raise typer.Exit(130) from None


def keras_logs_off_stdout() -> None:
    """Keras prints download progress to stdout; --json reserves stdout for the document."""
    import keras

    keras.utils.disable_interactive_logging()


def emit_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _version(value: bool) -> None:
    if value:
        print(f"cnncli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = debug
