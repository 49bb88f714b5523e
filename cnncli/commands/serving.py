"""`cnn serve` and `cnn benchmark`: a trained model answering HTTP requests (TF Serving's REST API, top-k,
metrics), and its export formats measured side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.commands.common import JsonOption, app, emit_json, err, handled, out, output_option

DEFAULT_MAX_BODY = 10 * 1024 * 1024  # as cnncli.deploy.serve_guard's, not imported: `cnn --help` stays fast
# as cnncli.deploy.benchmark's, not imported, for the same reason
BENCHMARK_FORMATS = "keras, saved_model, tflite, tflite_float16, tflite_int8, onnx"
BENCHMARK_EXAMPLES = 1000
BENCHMARK_REPETITIONS = 50


@app.command()
def serve(
    model: Path = typer.Argument(
        ...,
        metavar="RUN_DIR|EXPORT",
        readable=False,
        help="A run directory, an exported .keras/.tflite/.onnx file or a SavedModel.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on; 0 picks a free one."),
    max_batch: int = typer.Option(
        32, "--max-batch", min=1, help="Most images per model call; 1 runs every request alone."
    ),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", min=0, help="How long a request waits for others to share its batch."
    ),
    max_body: int = typer.Option(DEFAULT_MAX_BODY, "--max-body", min=1, help="Largest request body, in bytes."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="CNN_SERVE_API_KEY",
        show_envvar=True,
        help="Require this key (Authorization: Bearer KEY) on every route but /healthz and the page at /.",
    ),
) -> None:
    """Serve a trained model over HTTP until SIGTERM or Ctrl-C.

    Routes: POST /v1/models/NAME:predict and GET /v1/models/NAME(/metadata), as TF Serving's REST API;
    POST /predict (image files, top-k classes; ?explain=gradcam adds Grad-CAM overlays);
    GET /healthz; GET /metrics (Prometheus); GET / (a page to try the model in a browser).
    NAME is the run's name, or default.

    Needs the extra: pip install "cnncli\\[serve]".

    Example: cnn serve runs/shapes-cnn/20260101-120000 --port 8000
    """
    from cnncli.deploy.serve import ServeOptions
    from cnncli.deploy.serve import serve as run_server
    from cnncli.insight.overlays import gradcam_overlays

    with handled():
        options = ServeOptions(host, port, max_batch, max_wait_ms, max_body, api_key)
        run_server(
            model,
            options,
            say=lambda line: err.print(line, markup=False),
            warn=lambda line: err.print(f"[yellow]warning[/]: {line}"),
            explainer=gradcam_overlays,
        )


@app.command()
def benchmark(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    formats: str | None = typer.Option(
        None, "--formats", metavar="A,B", help=f"Comma-separated, from: {BENCHMARK_FORMATS} (default: all)."
    ),
    examples: int = typer.Option(
        BENCHMARK_EXAMPLES, "--examples", min=1, help="Test images for accuracy and agreement with model.keras."
    ),
    repetitions: int = typer.Option(
        BENCHMARK_REPETITIONS, "--repetitions", min=1, help="Batch-1 calls timed per format for p50/p99."
    ),
    output: Path | None = output_option(
        "Where to draw accuracy against latency (default RUN_DIR/benchmark/benchmark.png).", metavar="PNG"
    ),
    json_output: bool = JsonOption,
) -> None:
    """Measure every export format of a run: size, load time, batch-1 p50/p99 latency, batch-32 images/s,
    test accuracy, and agreement with model.keras (top class and max |Δp|).

    Each format is exported into RUN_DIR/benchmark/ (the run's own files are left as they are)
    and read back with its own runtime. A format whose optional extra is missing is shown as
    skipped, with its install line. The figures also go to RUN_DIR/benchmark/benchmark.json.

    Example: cnn benchmark runs/mnist-lenet/20260101-120000 --formats tflite,tflite_int8
    """
    with handled(json_output):
        from cnncli.deploy.benchmark import benchmark_run

        report = benchmark_run(run_dir, formats, examples, repetitions, output)
        if json_output:
            emit_json(report)
            return
        _print_benchmark(report)


def _print_benchmark(report: dict) -> None:
    from rich import box
    from rich.table import Table

    from cnncli.deploy.benchmark import describe_agreement

    table = Table(
        title=f"{report['run_dir']}: {report['examples']:,} {report['split']} images, "
        f"{report['repetitions']} batch-1 calls",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("format", no_wrap=True)
    for name in ("size", "load s", "p50 ms", "p99 ms", "img/s @32", "accuracy", "agreement", "max |Δp|"):
        table.add_column(name, justify="right")
    for row in report["formats"]:
        if row["status"] != "ok":
            table.add_row(row["format"], "skipped", *["-"] * 7)
            continue
        table.add_row(
            row["format"],
            _size(row["size_bytes"]),
            f"{row['load_seconds']:.2f}",
            f"{row['latency_ms_p50']:.2f}",
            f"{row['latency_ms_p99']:.2f}",
            f"{row['images_per_second']:,.0f}",
            f"{row['accuracy']:.2%}",
            describe_agreement(row),
            f"{row['max_abs_diff']:.1e}",
        )
    out.print(table)
    for row in report["formats"]:
        if row["status"] != "ok":
            out.print(f"{row['format']} skipped: {row['reason']}", markup=False)
    if "plot" in report:
        out.print(f"accuracy against latency: {report['plot']}", markup=False)


def _size(n: int) -> str:
    """Bytes as `812 B`, `45.3 KiB` or `1.2 MiB`."""
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"
