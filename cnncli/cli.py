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
    configs: List[Path] = typer.Argument(..., help="Config files to check, or folders of them."),
    set_: Optional[List[str]] = SetOption,
    print_config: bool = typer.Option(False, "--print", help="Print each resolved config as YAML."),
    format_: str = typer.Option("text", "--format", help="text | github (::error annotations for pull requests)"),
    json_output: bool = JsonOption,
) -> None:
    """Check configs (schema, layer arguments, shapes) without training; exit 1 if any fails.

    Example: cnn validate configs/ --format github
    """
    from cnncli.summary import config_files, github_annotations, validate_file

    if format_ not in ("text", "github"):
        err.print(f"Error: --format must be text or github, got `{format_}`", markup=False)
        raise typer.Exit(2)
    _quiet_tensorflow()
    if json_output:
        _keras_logs_off_stdout()
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
    config: List[Path] = typer.Argument(..., help="Config file; several are merged left to right."),
    set_: Optional[List[str]] = SetOption,
    expand: bool = typer.Option(False, "--expand", help="One row per layer, also inside blocks."),
    json_output: bool = JsonOption,
) -> None:
    """Show each layer's output shape, parameters, receptive field and MACs; no training.

    Example: cnn summary configs/mnist_lenet.yaml --json
    """
    from cnncli.summary import summarize_config
    from cnncli.report import print_summary

    with handled(json_output):
        result = summarize_config(config if len(config) > 1 else config[0], set_ or [])
        if json_output:
            emit_json(result.as_json())
        else:
            print_summary(out, result, expand)
            for warning in result.warnings:
                err.print(f"[yellow]warning[/]: {warning}")


@app.command()
def train(
    config: Optional[List[Path]] = typer.Argument(None, help="Config file (omit with --resume); several merge "
                                                             "left to right."),
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
    report: bool = typer.Option(False, "--report", help="Write RUN_DIR/report.html at the end (as cnn report)."),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI",
                                         help="Log the run to this MLflow tracking URI (needs cnncli[mlflow])."),
    json_output: bool = JsonOption,
) -> None:
    """Train a model and write a new run directory (config, history, metrics, model, plots).

    Example: cnn train configs/shapes_cnn.yaml --epochs 3
    """
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import make_reporter

    config = (config if len(config) > 1 else config[0]) if config else None
    with handled(json_output or quiet):  # --quiet too: Keras's "Downloading data from …" would precede the run dir
        if config is None and resume is None:
            raise CnnError("give a config file, or --resume RUN_DIR")
        from cnncli.tracking import LiveRun, requested_by

        tracked = requested_by(config or (resume / "config.yaml" if resume else None), mlflow)
        tracker = LiveRun(tracked) if tracked is not None else None
        reporter = make_reporter(quiet, json_output)
        result = run_training(TrainOptions(config=config, resume=resume, overrides=set_ or [], output=output,
                                           name=name, epochs=epochs, batch_size=batch_size, device=device,
                                           smoke=smoke, profile=profile, tracker=tracker), reporter)
        reporter.train_end()
        if tracker is not None and tracker.run_id is not None:  # the chief's; other workers log nothing
            result.run["mlflow_run_id"] = tracker.run_id
            reporter.message(f"logged to MLflow ({tracked[0]}, experiment {tracked[1]}): run {tracker.run_id}")
        page = _write_report(result.run_dir) if report else None
        if json_output:
            emit_json({"run_dir": str(result.run_dir), "metrics": result.metrics, **result.run,
                       **({"report": str(page)} if page else {})})
            return
        if result.run.get("profile") and not quiet:
            from cnncli.train.profile import format_summary

            for line in format_summary(result.run["profile"]):
                out.print(line, highlight=False, markup=False)
        if page and not quiet:
            out.print(f"report: {page}", markup=False)
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
    errors: Optional[int] = typer.Option(None, "--errors", min=1, metavar="[N]",
                                         help="Also list and draw the N highest-loss images (default 16) "
                                              "and the most confused pairs."),
    json_output: bool = JsonOption,
) -> None:
    """Report loss, accuracy, top-k, per-class precision/recall/F1 and the confusion matrix.

    --errors [N] adds the N images with the highest loss (errors.png, captioned
    true → predicted (probability); file paths for image folders) and examples of
    the most confused pairs (confused_pairs.png).

    Example: cnn evaluate runs/shapes-cnn/20260101-120000 --errors 16 --json
    """
    from cnncli.report import print_evaluation
    from cnncli.runs import evaluate_run

    with handled(json_output):
        if split not in ("test", "val", "train"):
            raise CnnError(f"--split must be test, val or train, got `{split}`")
        report = evaluate_run(run_dir, split, set_ or [], top_k, errors)
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
            if errors:
                from cnncli.report import print_errors

                print_errors(out, report)


def _write_report(run_dir: Path) -> Path:
    from cnncli.report_html import write_report

    return write_report(run_dir)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by cnn train."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML path (default RUN_DIR/report.html)."),
    json_output: bool = JsonOption,
) -> None:
    """Write one self-contained HTML page of a run: config, model, curves, metrics, mistakes, Grad-CAM.

    Pictures are embedded, so the file opens anywhere (a phone too) with nothing fetched.

    Example: cnn report runs/shapes-cnn/20260101-120000 --output report.html
    """
    from cnncli.report_html import write_report

    with handled(json_output):
        path = write_report(run_dir, output)
        if json_output:
            emit_json({"output": str(path), "bytes": path.stat().st_size})
        else:
            out.print(f"wrote {path} ({path.stat().st_size:,} bytes)", markup=False)


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


data_app = typer.Typer(no_args_is_help=True, help="Pack a dataset into TFRecord shards, or look inside one.")
app.add_typer(data_app, name="data")


@data_app.command("pack")
def data_pack(
    source: str = typer.Argument(..., metavar="SOURCE",
                                 help="An image folder, a folder written by cnn data pack, or a config file."),
    output: str = typer.Option(..., "--output", "-o", help="The new folder (local, or gs://... etc.)."),
    shards: Optional[int] = typer.Option(None, "--shards", min=1,
                                         help="Shards per split (default: one per ~100 MB)."),
    set_: Optional[List[str]] = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Write a dataset into TFRecord shards of encoded pictures plus index.json, for `dataset: records`.

    Example: cnn data pack photos/ --output photos-records --shards 8
    """
    from cnncli.data.catalogue import progress_display, resolve
    from cnncli.data.pack import pack

    with handled(json_output):
        cfg = resolve(source, set_ or [])
        with progress_display("packing", show=not json_output) as progress:
            result = pack(cfg.data, output, shards, progress, seed=cfg.seed or 0)
        for warning in result.warnings:
            err.print(f"[yellow]warning[/]: {warning}")
        for name, reason in result.skipped:
            err.print(f"[yellow]warning[/]: skipped {name}: {reason}", markup=True, highlight=False)
        if json_output:
            emit_json(result.as_json())
            return
        splits = result.index["splits"]
        counts = " + ".join(f"{e['count']:,} {split}" for split, e in splits.items())
        shard_counts = " + ".join(str(len(e["shards"])) for e in splits.values())
        out.print(f"packed {counts} pictures of {len(result.index['class_names'])} classes into {shard_counts} "
                  f"shards: {result.output}", markup=False)


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(..., metavar="PATH_OR_CONFIG",
                                 help="An image folder, a folder written by cnn data pack, or a config file."),
    set_: Optional[List[str]] = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Count pictures per class and split; show sizes, modes and every unreadable file.

    Example: cnn data inspect photos/ --json
    """
    from cnncli.data.inspection import inspect_source, print_report
    from cnncli.data.catalogue import progress_display, resolve

    with handled(json_output):
        cfg = resolve(source, set_ or [])
        with progress_display("reading", show=not json_output) as progress:
            report = inspect_source(cfg.data, progress, seed=cfg.seed or 0)
        if json_output:
            emit_json(report)
        else:
            print_report(out, report)


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
    method: str = typer.Option("gradient", "--method", help="gradient | smoothgrad | gradcam"),
    samples: int = typer.Option(25, "--samples", min=1, help="smoothgrad: noisy copies averaged."),
    seed: int = typer.Option(0, "--seed", help="smoothgrad: seed of the noise."),
    layer: Optional[str] = typer.Option(None, "--layer",
                                        help="gradcam: a layer with a feature map (default: the last convolution)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="PNG path (default RUN_DIR/saliency/<image>_<class>_<method>.png)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw which pixels move a class's score: |gradient of the logit| beside the image, as a PNG.

    --method gradcam draws Grad-CAM of a convolution layer over the image, beside
    the gradient map; --json then adds the map's peak [row, col] and the share of
    its mass in each quadrant.

    Example: cnn saliency runs/shapes-cnn/20260101-120000 figure.png --method gradcam --output gradcam.png
    """
    from cnncli.explain import draw_saliency, explain_image

    with handled(json_output):
        if layer and method != "gradcam":
            raise CnnError("--layer is for --method gradcam")
        result = explain_image(run_dir, image, class_, method, samples, seed, layer)
        path = draw_saliency(run_dir, image, result, output)
        cam = result.gradcam.summary() if result.gradcam is not None else None
        if json_output:
            emit_json({"output": str(path), "image": str(image), "class": result.class_name,
                       "class_index": result.class_index, "probability": result.probability,
                       "predicted": result.predicted, "method": result.method, "score": result.score,
                       **({"gradcam": cam} if cam else {})})
        else:
            at = f" at {cam['layer']} (peak at row {cam['peak'][0]}, column {cam['peak'][1]})" if cam else ""
            out.print(f"{result.class_name} (p = {result.probability:.3f}; predicted {result.predicted}), "
                      f"{result.method} of the {result.score}{at}: {path}", markup=False)


@app.command()
def activations(
    run_dir: Path = typer.Argument(..., help="A run directory written by cnn train."),
    image: Path = typer.Argument(..., help="An image file: png, jpg, bmp, gif."),
    layer: Optional[List[str]] = typer.Option(None, "--layer",
                                              help="A layer with a feature map (repeatable; default: every "
                                                   "convolution, in order)."),
    max_channels: int = typer.Option(64, "--max", min=1, help="At most this many channels per layer."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Directory for the PNGs (default RUN_DIR/activations/<image>/)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw the feature maps one image produces: one PNG grid per layer, a tile per channel.

    Each tile is stretched to its own range and labelled with the channel index
    and its mean activation.

    Example: cnn activations runs/shapes-cnn/20260101-120000 figure.png --layer conv2d --max 16
    """
    from cnncli.explain_maps import draw_activations

    with handled(json_output):
        maps, paths = draw_activations(run_dir, image, layer, max_channels, output)
        rows = [{"layer": m.layer, "output": str(p), "shape": list(m.maps.shape[:2]), "channels": m.channels,
                 "tiles": m.tiles} for m, p in zip(maps, paths)]
        if json_output:
            emit_json({"image": str(image), "layers": rows})
        else:
            for row in rows:
                out.print(f"{row['layer']}: {row['tiles']} of {row['channels']} channels, "
                          f"{row['shape'][0]}×{row['shape'][1]}: {row['output']}", markup=False)


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


@app.command("config")
def config_(
    configs: List[Path] = typer.Argument(..., help="Config files, merged left to right."),
    set_: Optional[List[str]] = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Print the single resolved config: extends followed, files merged, blocks expanded, defaults filled.

    This is what a run directory stores as config.yaml.

    Example: cnn config base.yaml fashion.yaml --set train.epochs=3
    """
    from cnncli.config import load_config

    with handled(json_output):
        cfg = load_config(configs if len(configs) > 1 else configs[0], set_ or [])
        if json_output:
            emit_json(cfg.to_dict())
        else:
            out.print(cfg.to_yaml(), markup=False, end="")


@app.command()
def schema(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """Write the JSON Schema (2020-12) of a config, for editors and CI.

    VS Code's YAML extension reads it from a first line `# yaml-language-server: $schema=FILE`.

    Example: cnn schema --output cnncli.schema.json
    """
    from cnncli.schema_export import schema_text

    with handled():
        text = schema_text()
        if output is None:
            sys.stdout.write(text)
            return
        from cnncli.fileio import write

        write(output, text)
        out.print(f"wrote {output}", markup=False)


@app.command()
def init(
    path: Path = typer.Argument(Path("config.yaml"), help="The config file to write."),
    template: str = typer.Option("lenet", "--template", "-t", help="A template: see `cnn list templates`."),
    data: Optional[str] = typer.Option(None, "--data", metavar="KIND:DIR",
                                       help="Fill classes, image size and colour mode from data, "
                                            "e.g. image_folder:photos/."),
    force: bool = typer.Option(False, "--force", help="Replace PATH if it exists."),
) -> None:
    """Write a commented config from a template, ready for cnn validate and cnn train.

    Example: cnn init flowers.yaml --template vgg16-transfer --data image_folder:photos/
    """
    from cnncli.templates import init_config

    with handled():
        init_config(path, template, data, force)
        out.print(f"wrote {path} (template {template}); next: cnn summary {path}", markup=False)
@app.command()
def tune(
    config: Path = typer.Argument(..., help="Config file with a `search:` section."),
    set_: Optional[List[str]] = SetOption,
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Trials to run to (default search.trials)."),
    storage: Optional[str] = typer.Option(None, "--storage",
                                          help="Optuna storage URL shared by several processes or machines, "
                                               "e.g. postgresql+psycopg://user@host/db (default OUTPUT/study.db)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the config's name)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="The sweep directory; rerunning with it continues the study "
                                               "(default sweeps/<name>/<timestamp>)."),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI",
                                         help="Log each trial as a child run to this MLflow tracking URI."),
    json_output: bool = JsonOption,
) -> None:
    """Search the config's `search:` section with Optuna; each trial is a run directory under OUTPUT/trials/.

    Writes OUTPUT/study.db, trials.csv, best.yaml and PNG pictures; rerun the same
    command to continue an interrupted sweep, or start it twice to share the work.

    Example: cnn tune configs/shapes_cnn.yaml --trials 16 --output sweeps/shapes
    """
    from cnncli.tune.progress import SweepDisplay
    from cnncli.tune.report import best_trial, nothing_finished, trial_rows
    from cnncli.tune.sweep import TuneOptions, run_sweep

    with handled(json_output):
        opts = TuneOptions(config=config, overrides=set_ or [], trials=trials, storage=storage, study=study,
                           output=output, mlflow=mlflow)
        display = SweepDisplay(out)
        with display if not json_output else contextlib.nullcontext():
            sweep = run_sweep(opts, on_trial=None if json_output else display.trial,
                              on_start=None if json_output else lambda s: out.print(
                                  f"sweep directory: {s.dir} (the same command with --output {s.dir} "
                                  "continues it)", markup=False))
        failure = nothing_finished(sweep)
        if failure:
            raise CnnError(failure)
        best = best_trial(sweep)
        if json_output:
            emit_json({"sweep_dir": str(sweep.dir), "metric": sweep.metric, "trials": trial_rows(sweep),
                       "best": None if best is None else {"number": best.number, "value": best.value,
                                                          "params": best.params,
                                                          "run_dir": str(sweep.dir / best.user_attrs["run_dir"])}})
            return
        if best is not None:
            out.print(f"best trial {best.number}: {sweep.metric} {best.value:.4f}  config: {sweep.dir / 'best.yaml'}",
                      markup=False)


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., metavar="RUN_OR_SWEEP...",
                                      help="Run directories, or sweep directories (all their trials)."),
    output: Path = typer.Option(Path("compare.png"), "--output", "-o", help="PNG of the overlaid curves."),
    json_output: bool = JsonOption,
) -> None:
    """Show runs side by side: final metrics, epochs, time, images/s, parameters, and the config keys that differ.

    Example: cnn compare runs/tiny/20260101-120000 runs/tiny/20260101-130000 --output compare.png
    """
    from cnncli.compare import compare as compare_runs, short_labels

    with handled(json_output):
        report = compare_runs(runs, output)
        if json_output:
            emit_json(report)
            return
        from rich.table import Table

        labels = short_labels([Path(r["run_dir"]) for r in report["runs"]])
        rows = list(dict.fromkeys(k for r in report["runs"] for k in r if k != "run_dir"))
        table = Table(title="runs", title_justify="left")
        table.add_column("", min_width=max(map(len, rows), default=0))  # the names whole; the values fold
        for label in labels:
            table.add_column(label, justify="right", overflow="fold")
        for key in rows:
            table.add_row(key, *[_cell(r.get(key)) for r in report["runs"]])
        out.print(table)
        diff = Table(title="config keys that differ", title_justify="left")
        diff.add_column("key", min_width=min(40, max(map(len, report["differences"]), default=0)), overflow="fold")
        for label in labels:
            diff.add_column(label, justify="right", overflow="fold")
        for key, values in report["differences"].items():
            diff.add_row(key, *map(_cell, values))
        out.print(diff if report["differences"] else "the configs are the same")
        out.print(f"curves: {report['plot']}", markup=False)


def _cell(value) -> str:
    """Four significant digits; whole thousands as `11,800`, never as `1.18e+04`."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return "" if value is None else str(value)


LISTS = {  # what `cnn list` can show: name -> (module, function)
    "layers": ("cnncli.layers", "list_layers"),
    "optimizers": ("cnncli.layers", "list_optimizers"),
    "schedules": ("cnncli.layers", "list_schedules"),
    "backbones": ("cnncli.layers", "list_backbones"),
    "datasets": ("cnncli.data", "list_datasets"),
    "formats": ("cnncli.export", "list_formats"),
    "templates": ("cnncli.templates", "list_templates"),
}


@app.command("list")
def list_names(
    what: str = typer.Argument(..., help=f"One of: {', '.join(LISTS)}."),
    json_output: bool = JsonOption,
) -> None:
    """List the names a config or option accepts: layer types, optimizers, schedules, backbones, datasets,
    formats, and the templates of cnn init.

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


OPTIONAL_VALUES = {"--errors": "16"}  # options whose value may be left out; Typer has no optional values


def fill_optional_values(argv: list[str]) -> list[str]:
    """`--errors` alone (or followed by something other than a count) means `--errors 16`."""
    filled = []
    for i, arg in enumerate(argv):
        filled.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or not argv[i + 1].isdigit()):
            filled.append(OPTIONAL_VALUES[arg])
    return filled


def main() -> None:
    os.umask(os.umask(0o022) | 0o022)  # nothing cnn creates (runs, exports, plots) is group- or world-writable
    app(args=fill_optional_values(sys.argv[1:]))


if __name__ == "__main__":
    main()
