"""`cnn train`, `cnn lr-find`, `cnn evaluate`, `cnn report`, `cnn export`: a run directory made, measured, shipped."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.commands.common import JsonOption, SetOption, app, emit_json, handled, out, output_option
from cnncli.errors import UsageError, did_you_mean


@app.command()
def train(
    config: list[Path] | None = typer.Argument(
        None, readable=False, help="Config file (omit with --resume); several merge left to right."
    ),
    set_: list[str] | None = SetOption,
    resume: Path | None = typer.Option(None, "--resume", readable=False, help="Continue an interrupted run in place."),
    output: Path = typer.Option(
        Path("runs"), "--output", "-o", readable=False, help="Where run directories are created."
    ),
    name: str | None = typer.Option(None, "--name", help="Run name (default: the config's name)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override train.epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Override train.batch_size."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | gpu"),
    smoke: bool = typer.Option(False, "--smoke", help="A couple of batches of every stage, end to end, for CI."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; just the run directory."),
    profile: int = typer.Option(
        0,
        "--profile",
        min=0,
        metavar="STEPS",
        help="Trace STEPS training steps (e.g. 5) into logs/ for TensorBoard's profile tab "
        "and print the top ops and the share of a step spent waiting for input.",
    ),
    report: bool = typer.Option(False, "--report", help="Write RUN_DIR/report.html at the end (as cnn report)."),
    mlflow: str | None = typer.Option(
        None, "--mlflow", metavar="URI", help="Log the run to this MLflow tracking URI (needs cnncli[mlflow])."
    ),
    json_output: bool = JsonOption,
) -> None:
    """Train a model and write a new run directory (config, history, metrics, model, plots).

    Example: cnn train configs/shapes_cnn.yaml --epochs 3
    """
    given = (config if len(config) > 1 else config[0]) if config else None
    with handled(json_output or quiet):  # --quiet too: Keras's "Downloading data from …" would precede the run dir
        from cnncli.config.schema import DEVICES
        from cnncli.train.job import TrainOptions, run_training
        from cnncli.train.progress import make_reporter
        from cnncli.train.resuming import check_sources

        check_sources(given, resume)
        if device is not None and device not in DEVICES:
            raise UsageError(
                f"`{device}` is not a device{did_you_mean(device, DEVICES)}; choose one of: {', '.join(DEVICES)}",
                "--device",
            )
        from cnncli.tune.tracking import LiveRun, requested_by

        tracked = requested_by(given or (resume / "config.yaml" if resume else None), mlflow)
        tracker = LiveRun(tracked) if tracked is not None else None
        reporter = make_reporter(quiet, json_output)
        result = run_training(
            TrainOptions(
                config=given,
                resume=resume,
                overrides=set_ or [],
                output=output,
                name=name,
                epochs=epochs,
                batch_size=batch_size,
                device=device,
                smoke=smoke,
                profile=profile,
                tracker=tracker,
            ),
            reporter,
        )
        if result.untrained is not None:  # a complete run, left as it was
            if json_output:
                emit_json(
                    {
                        "run_dir": str(result.run_dir),
                        "status": "complete",
                        "trained": False,
                        "message": result.untrained,
                        "metrics": result.metrics,
                    }
                )
            else:
                out.print(str(result.run_dir) if quiet else result.untrained, markup=False)
            return
        reporter.train_end()
        # the chief's; other workers log nothing
        if tracked is not None and tracker is not None and tracker.run_id is not None:
            result.run["mlflow_run_id"] = tracker.run_id
            reporter.message(f"logged to MLflow ({tracked[0]}, experiment {tracked[1]}): run {tracker.run_id}")
        page = _write_report(result.run_dir) if report else None
        if json_output:
            emit_json(
                {
                    "run_dir": Path(result.run_dir),
                    "metrics": result.metrics,
                    **result.run,
                    **({"report": Path(page)} if page else {}),
                }
            )
            return
        if result.run.get("profile") and not quiet:
            from cnncli.train.profile import format_summary

            for line in format_summary(result.run["profile"]):
                out.print(line, highlight=False, markup=False)
        if page and not quiet:
            out.print(f"report: {page}", markup=False)
        test = result.metrics.get("test")
        if test and not quiet:
            from cnncli.train.progress import metric_text

            out.print(
                f"test accuracy {test['accuracy']:.4f}  loss {metric_text(test['loss'])}  ({test['examples']:,} images)"
            )
        out.print(str(result.run_dir) if quiet else f"run directory: {result.run_dir}")


@app.command("lr-find")
def lr_find(
    config: list[Path] = typer.Argument(..., readable=False, help="Config file; several merge left to right."),
    set_: list[str] | None = SetOption,
    output: Path | None = output_option(
        "Where lr_find.json and lr_find.png go (default: a new lr_find/<name>/<timestamp>/).", metavar="DIR"
    ),
    start: float = typer.Option(1e-7, "--start", help="The first learning rate."),
    end: float = typer.Option(10.0, "--end", help="The last learning rate, if the loss has not diverged before."),
    steps: int = typer.Option(100, "--steps", min=2, help="Training steps at most, one rate each."),
    json_output: bool = JsonOption,
) -> None:
    """Find a learning rate: the range test (train a few steps at rates growing from --start to --end).

    From the config's initial weights, each step trains one batch at a rate
    exponentially above the last; the smoothed loss is recorded until it
    diverges (4x its best). The suggestion is a tenth of the rate at its
    minimum. Writes lr_find.json and lr_find.png; the config file is left as
    it is. A model whose loss sits on a plateau at first (training from
    scratch) needs more steps to show anything: --steps 300.

    Example: cnn lr-find configs/shapes_cnn.yaml --steps 300
    """
    with handled(json_output):
        from cnncli.train.lr_find import METHOD, LrFindOptions, find_learning_rate
        from cnncli.train.progress import make_reporter

        reporter = make_reporter(False, json_output)
        given = config if len(config) > 1 else config[0]
        test, folder, key = find_learning_rate(LrFindOptions(given, set_ or [], output, start, end, steps), reporter)
        use = f"--set {key}={test.suggested:g}"
        if json_output:
            emit_json(
                {
                    "output": folder,
                    "learning_rates": test.learning_rates,
                    "losses": test.losses,
                    "suggested": test.suggested,
                    "method": METHOD,
                    "stopped": test.stopped,
                    "set": use,
                }
            )
            return
        out.print(f"suggested learning rate {test.suggested:g} ({METHOD})", markup=False)
        out.print(f"to use it: {use}", markup=False)
        out.print(f"wrote {folder / 'lr_find.png'} and {folder / 'lr_find.json'}", markup=False)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    split: str = typer.Option("test", "--split", help="test | val | train"),
    set_: list[str] | None = typer.Option(
        None,
        "--data",
        metavar="KEY.PATH=VALUE",
        help="Evaluate on other data, e.g. --data data.dataset=image_folder "
        "--data data.path=photos/ (classes are matched by name).",
    ),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="k for top-k accuracy (default 5)."),
    errors: int | None = typer.Option(
        None,
        "--errors",
        min=1,
        metavar="[N]",
        help="Also list and draw the N highest-loss images (default 16) and the most confused pairs.",
    ),
    output: Path | None = output_option(
        "Where the pictures go (default: RUN_DIR for its own data, RUN_DIR/evaluations/<data>/ for --data).",
        metavar="DIR",
    ),
    tta: str | None = typer.Option(
        None,
        "--tta",
        metavar="none|flip",
        help="Test-time augmentation: flip also scores the mean prediction of each image and its mirror image "
        "(default: the config's evaluate.tta).",
    ),
    json_output: bool = JsonOption,
) -> None:
    """Report loss, accuracy, top-k, per-class precision/recall/F1 and the confusion matrix.

    --errors [N] adds the N images with the highest loss (errors.png, captioned
    true → predicted (probability); file paths for image folders) and examples of
    the most confused pairs (confused_pairs.png). Other data given with --data is
    scored by class name and its pictures go to RUN_DIR/evaluations/<data>/, so
    the run's own files stay as they are. --tta flip adds the accuracy and loss of
    the mean prediction over each image and its horizontal flip beside the plain
    ones (--json: `tta: {mode, accuracy, loss}`).

    Example: cnn evaluate runs/shapes-cnn/20260101-120000 --errors 16 --json
    """
    with handled(json_output):
        from cnncli.config.loading import Override, check_overrides
        from cnncli.insight.evaluation import evaluate_run
        from cnncli.insight.terminal import print_evaluation

        if split not in ("test", "val", "train"):
            raise UsageError(f"`{split}` is not a split; choose test, val or train", "--split")
        from cnncli.config.schema import TTA_MODES

        if tta is not None and tta not in TTA_MODES:
            raise UsageError(f"`{tta}` is not a test-time augmentation; choose {' or '.join(TTA_MODES)}", "--tta")
        set_ = [Override(item, option="--data") for item in set_ or []]
        check_overrides([item for item in set_ if "=" in item])  # one without `=` gets evaluate's own hint
        report = evaluate_run(
            run_dir, split, set_ or [], top_k, errors, figures=output, confusion_png=not json_output, tta=tta
        )
        if json_output:
            emit_json(report)
        else:
            print_evaluation(out, report, f"{run_dir} · {split} split")
            out.print(f"confusion matrix: {report['confusion_matrix_png']}", markup=False)
            if errors:
                from cnncli.insight.terminal import print_errors

                print_errors(out, report)


def _write_report(run_dir: Path) -> Path:
    from cnncli.insight.html_report import write_report

    return write_report(run_dir)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    output: Path | None = output_option("HTML path (default RUN_DIR/report.html)."),
    json_output: bool = JsonOption,
) -> None:
    """Write one self-contained HTML page of a run: config, model, curves, metrics, mistakes, Grad-CAM.

    Pictures are embedded, so the file opens anywhere (a phone too) with nothing fetched.

    Example: cnn report runs/shapes-cnn/20260101-120000 --output report.html
    """
    with handled(json_output):
        from cnncli.insight.html_report import write_report

        path = write_report(run_dir, output)
        if json_output:
            emit_json({"output": Path(path), "bytes": path.stat().st_size})
        else:
            out.print(f"wrote {path} ({path.stat().st_size:,} bytes)", markup=False)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    format_: str = typer.Option(..., "--format", "-f", help="keras | saved_model | tflite | onnx"),
    output: Path | None = output_option("The artefact's path, or a directory for it (default RUN_DIR/exports/)."),
    quantize: str | None = typer.Option(None, "--quantize", help="tflite only: float16 | int8"),
    force: bool = typer.Option(False, "--force", help="Replace an artefact already at the path."),
    json_output: bool = JsonOption,
) -> None:
    """Export the run's model and prove it computes what model.keras computes.

    The artefact is reloaded with its own runtime and compared with model.keras
    on up to 1,000 test images (float formats: max |Δp| ≤ 1e-4; float16 ≤ 1e-2;
    int8: top class agrees on ≥ 98%). Only a passing artefact is kept; the
    figures, class names and input spec go to export.json beside it. An artefact
    already at the path is kept unless --force is given.
    onnx needs the optional extra: pip install 'cnncli\\[export]'.

    Example: cnn export runs/mnist-lenet/20260101-120000 --format tflite --quantize int8 --output model_int8.tflite
    """
    with handled(json_output):
        from cnncli.deploy.export import describe_check, export_run

        result = export_run(run_dir, format_, output, quantize, force=force)
        if json_output:
            emit_json(result.as_json())
            return
        label = result.format + (f" ({result.quantize})" if result.quantize else "")
        out.print(f"checked {label}: {describe_check(result.check)}", markup=False)
        reference = result.check.get("reference", {})
        if "as_trained_max_abs_diff" in reference:
            out.print(
                f"note: the model trained in {reference['trained_precision']}; exports compute in float32 "
                f"(max |Δp| {reference['as_trained_max_abs_diff']:.2e} from the model as trained)",
                markup=False,
            )
        out.print(f"wrote {result.path} ({result.size_bytes:,} bytes); details in {result.export_json}", markup=False)
