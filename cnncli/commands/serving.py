"""`cnn serve`: a trained model answering HTTP requests (TF Serving's REST API, top-k, metrics)."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.commands.common import app, err, handled

DEFAULT_MAX_BODY = 10 * 1024 * 1024  # as cnncli.deploy.serve_guard's, not imported: `cnn --help` stays fast


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
