"""The `cnn` command: parse, call, print.

Each command's docstring is its --help. Library code raises CnnError; here it
becomes one "Error: …" line on stderr and exit 1 (130 for an interrupt).
TensorFlow is imported inside the commands that need it, so `cnn --help`
stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

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


def _quiet_tensorflow() -> None:
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
    _quiet_tensorflow()
    if json_output:
        _keras_logs_off_stdout()
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


def _keras_logs_off_stdout() -> None:
    """Keras prints download progress to stdout; --json reserves stdout for the document."""
    import keras

    keras.utils.disable_interactive_logging()


def emit_json(data) -> None:
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


@app.command()
def validate(
    configs: List[Path] = typer.Argument(..., help="Config files to check."),
    set_: Optional[List[str]] = SetOption,
    print_config: bool = typer.Option(False, "--print", help="Print each resolved config as YAML."),
    json_output: bool = JsonOption,
) -> None:
    """Check configs (schema, layer arguments, shapes) without training; exit 1 if any fails.

    Example: cnn validate configs/*.yaml
    """
    from cnncli.summary import validate_file

    _quiet_tensorflow()
    if json_output:
        _keras_logs_off_stdout()
    results = [validate_file(path, set_ or []) for path in configs]
    if json_output:
        emit_json([r.as_json() for r in results])
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
    config: Path = typer.Argument(..., help="Config file."),
    set_: Optional[List[str]] = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Show each layer's output shape, parameters, receptive field and MACs; no training.

    Example: cnn summary configs/mnist_lenet.yaml --json
    """
    from cnncli.summary import summarize_config
    from cnncli.report import print_summary

    with handled(json_output):
        result = summarize_config(config, set_ or [])
        if json_output:
            emit_json(result.as_json())
        else:
            print_summary(out, result)
            for warning in result.warnings:
                err.print(f"[yellow]warning[/]: {warning}")


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="Config file (omit with --resume)."),
    set_: Optional[List[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run in place."),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Where run directories are created."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override train.epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Override train.batch_size."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | gpu"),
    smoke: bool = typer.Option(False, "--smoke", help="A couple of batches of every stage, end to end, for CI."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; just the run directory."),
    profile: int = typer.Option(0, "--profile", min=0, metavar="STEPS",
                                help="Trace STEPS training steps (e.g. 5) into logs/ for TensorBoard's profile tab "
                                     "and print the top ops and the share of a step spent waiting for input."),
    json_output: bool = JsonOption,
) -> None:
    """Train a model and write a new run directory (config, history, metrics, model, plots).

    Example: cnn train configs/shapes_cnn.yaml --epochs 3
    """
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import make_reporter

    with handled(json_output or quiet):  # --quiet too: Keras's "Downloading data from …" would precede the run dir
        if config is None and resume is None:
            raise CnnError("give a config file, or --resume RUN_DIR")
        reporter = make_reporter(quiet, json_output)
        result = run_training(TrainOptions(config=config, resume=resume, overrides=set_ or [], output=output,
                                           name=name, epochs=epochs, batch_size=batch_size, device=device,
                                           smoke=smoke, profile=profile), reporter)
        reporter.train_end()
        if json_output:
            emit_json({"run_dir": str(result.run_dir), "metrics": result.metrics, **result.run})
            return
        if result.run.get("profile") and not quiet:
            from cnncli.train.profile import format_summary

            for line in format_summary(result.run["profile"]):
                out.print(line, highlight=False, markup=False)
        test = result.metrics.get("test")
        if test and not quiet:
            out.print(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  "
                      f"({test['examples']:,} images)")
        out.print(str(result.run_dir) if quiet else f"run directory: {result.run_dir}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by cnn train."),
    split: str = typer.Option("test", "--split", help="test | val | train"),
    set_: Optional[List[str]] = typer.Option(None, "--data", metavar="KEY.PATH=VALUE",
                                             help="Evaluate on other data, e.g. --data data.dataset=mnist."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="k for top-k accuracy (default 5)."),
    json_output: bool = JsonOption,
) -> None:
    """Report loss, accuracy, top-k, per-class precision/recall/F1 and the confusion matrix.

    Example: cnn evaluate runs/shapes-cnn/20260101-120000 --json
    """
    from cnncli.report import print_evaluation
    from cnncli.runs import evaluate_run

    with handled(json_output):
        if split not in ("test", "val", "train"):
            raise CnnError(f"--split must be test, val or train, got `{split}`")
        report = evaluate_run(run_dir, split, set_ or [], top_k)
        if json_output:
            emit_json(report)
        else:
            print_evaluation(out, report, f"{run_dir} · {split} split")
            from cnncli.plots import plot_confusion_matrix
            import numpy as np

            png = Path(run_dir) / f"confusion_matrix_{split}.png" if set_ or split != "test" else \
                Path(run_dir) / "confusion_matrix.png"
            plot_confusion_matrix(np.array(report["confusion_matrix"]), [c["class"] for c in report["per_class"]], png)
            out.print(f"confusion matrix: {png}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by cnn train."),
    format_: str = typer.Option(..., "--format", "-f", help="keras | saved_model | tflite | onnx"),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="The artefact's path, or a directory for it (default RUN_DIR/exports/)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="tflite only: float16 | int8"),
    json_output: bool = JsonOption,
) -> None:
    """Export the run's model and prove it computes what model.keras computes.

    The artefact is reloaded with its own runtime and compared with model.keras
    on up to 1,000 test images (float formats: max |Δp| ≤ 1e-4; float16 ≤ 1e-2;
    int8: top class agrees on ≥ 98%). Only a passing artefact is kept; the
    figures, class names and input spec go to export.json beside it.
    onnx needs the optional extra: pip install 'cnncli\\[export]'.

    Example: cnn export runs/mnist-lenet/20260101-120000 --format tflite --quantize int8 --output model_int8.tflite
    """
    from cnncli.export import describe_check, export_run

    with handled(json_output):
        result = export_run(run_dir, format_, output, quantize)
        if json_output:
            emit_json(result.as_json())
            return
        label = result.format + (f" ({result.quantize})" if result.quantize else "")
        out.print(f"checked {label}: {describe_check(result.check)}", markup=False)
        reference = result.check.get("reference", {})
        if "as_trained_max_abs_diff" in reference:
            out.print(f"note: the model trained in {reference['trained_precision']}; exports compute in float32 "
                      f"(max |Δp| {reference['as_trained_max_abs_diff']:.2e} from the model as trained)",
                      markup=False)
        out.print(f"wrote {result.path} ({result.size_bytes:,} bytes); details in {result.export_json}", markup=False)


@app.command()
def predict(
    model: Path = typer.Argument(..., metavar="RUN_DIR",
                                 help="A run directory, an exported .keras/.tflite/.onnx file or a SavedModel directory."),
    images: List[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files: png, jpg, bmp, gif."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    json_output: bool = JsonOption,
) -> None:
    """Show the most probable classes for each image, with their probabilities.

    Images are converted to the model's colour mode and size as in training.

    Example: cnn predict runs/shapes-cnn/20260101-120000 figure.png --top-k 3
    """
    from cnncli.predict import predict_files, predictions_table

    with handled(json_output):
        result = predict_files(model, images, top_k)
        for warning in result.warnings:
            err.print(f"[yellow]warning[/]: {warning}")
        if json_output:
            emit_json(result.as_json())
        else:
            out.print(predictions_table(result))


@app.command()
def saliency(
    run_dir: Path = typer.Argument(..., help="A run directory written by cnn train."),
    image: Path = typer.Argument(..., help="An image file: png, jpg, bmp, gif."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class name or index (default: the predicted one)."),
    method: str = typer.Option("gradient", "--method", help="gradient | smoothgrad"),
    samples: int = typer.Option(25, "--samples", min=1, help="smoothgrad: noisy copies averaged."),
    seed: int = typer.Option(0, "--seed", help="smoothgrad: seed of the noise."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="PNG path (default RUN_DIR/saliency/<image>_<class>_<method>.png)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw which pixels move a class's score: |gradient of the logit| beside the image, as a PNG.

    Example: cnn saliency runs/shapes-cnn/20260101-120000 figure.png --method smoothgrad --output saliency.png
    """
    from cnncli.explain import draw_saliency, explain_image

    with handled(json_output):
        result = explain_image(run_dir, image, class_, method, samples, seed)
        path = draw_saliency(run_dir, image, result, output)
        if json_output:
            emit_json({"output": str(path), "image": str(image), "class": result.class_name,
                       "class_index": result.class_index, "probability": result.probability,
                       "predicted": result.predicted, "method": result.method, "score": result.score})
        else:
            out.print(f"{result.class_name} (p = {result.probability:.3f}; predicted {result.predicted}), "
                      f"{result.method} of the {result.score}: {path}", markup=False)


@app.command()
def filters(
    run_dir: Path = typer.Argument(..., help="A run directory written by cnn train."),
    layer: Optional[str] = typer.Option(None, "--layer", help="A Conv2D layer's name (default: the first)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="PNG path (default RUN_DIR/filters_<layer>.png)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw a convolution layer's learned kernels as a grid (RGB for 3 input channels, else grey per channel).

    Example: cnn filters runs/shapes-cnn/20260101-120000 --layer conv2d --output filters.png
    """
    from cnncli.explain import draw_filters

    with handled(json_output):
        result, path = draw_filters(run_dir, layer, output)
        if json_output:
            emit_json({"output": str(path), "layer": result.layer, "kernel_shape": list(result.kernel_shape),
                       "filters_shown": result.shown_filters, "channels_shown": result.shown_channels,
                       "mode": result.mode})
        else:
            kh, kw, cin, cout = result.kernel_shape
            shown = f"{result.shown_filters} of {cout} filters"
            if result.mode == "channels" and cin > 1:
                shown += f" × {result.shown_channels} of {cin} input channels (one row per filter)"
            out.print(f"{result.layer}: {kh}×{kw} kernels, {shown}: {path}", markup=False)


LISTS = {  # what `cnn list` can show: name -> (module, function)
    "layers": ("cnncli.layers", "list_layers"),
    "optimizers": ("cnncli.layers", "list_optimizers"),
    "schedules": ("cnncli.layers", "list_schedules"),
    "backbones": ("cnncli.layers", "list_backbones"),
    "datasets": ("cnncli.data", "list_datasets"),
    "formats": ("cnncli.export", "list_formats"),
}


@app.command("list")
def list_names(
    what: str = typer.Argument(..., help=f"One of: {', '.join(LISTS)}."),
    json_output: bool = JsonOption,
) -> None:
    """List the names a config or option accepts: layer types, optimizers, schedules, backbones, datasets, formats.

    Example: cnn list backbones
    """
    import importlib

    with handled(json_output):
        if what not in LISTS:
            from cnncli.errors import did_you_mean

            raise CnnError(f"cannot list `{what}`{did_you_mean(what, LISTS)}; choose one of: {', '.join(LISTS)}")
        module, function = LISTS[what]
        names = getattr(importlib.import_module(module), function)()
        if json_output:
            emit_json(names)
        else:
            out.print("\n".join(names))


def main() -> None:
    os.umask(os.umask(0o022) | 0o022)  # nothing cnn creates (runs, exports, plots) is group- or world-writable
    app()


if __name__ == "__main__":
    main()
