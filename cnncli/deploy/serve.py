"""`cnn serve`: a trained model behind HTTP, on FastAPI and uvicorn (the optional extra `cnncli[serve]`).

Routes (TF Serving's REST API, so its clients work unchanged, plus a few of our own):

    POST /v1/models/NAME:predict    {"instances": [pixel arrays | {"b64": ...}]} -> {"predictions": [[p0, ...]]}
    GET  /v1/models/NAME            model status, as TF Serving answers it
    GET  /v1/models/NAME/metadata   input shape, class names and the signature
    POST /predict?k=5               multipart image files -> top-k classes, as `cnn predict --json`
                                    (&explain=gradcam: and Grad-CAM of the top class over each, as a PNG)
    GET  /                          a page to try the model: drop a picture, see the top-k as bars
    GET  /healthz                   liveness, never behind the API key
    GET  /metrics                   Prometheus text: requests, errors, latency, batch sizes

NAME is the run's config `name` (an export's file stem), or `default`. Pictures
are read by `cnncli.images` and every batch goes through `Predictor.predict`, so
a picture gets the probabilities `cnn predict` gives it. `Guard` sits in front
of every route: the API key, the body limit, and the metrics. Errors are JSON
`{"error": "..."}` with a 4xx status; none of them stops the server.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request,
# imported inside build_app so the module imports without the extra) when they are declared.
import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.deploy.batcher import MicroBatcher
from cnncli.deploy.predict import DEFAULT_TOP_K, top_k
from cnncli.deploy.serve_guard import DEFAULT_MAX_BODY, Guard, error
from cnncli.deploy.serve_inputs import MAX_PIXELS, RequestError, instances_to_pixels, read_picture
from cnncli.deploy.serve_metrics import CONTENT_TYPE, Metrics
from cnncli.images import model_view

# a predict body this small is parsed on the event loop (~0.5 ms), in arrival order; a larger one on a thread
INLINE_BODY = 64 * 1024  # bytes
PAGE = Path(__file__).with_name("serve_page.html")  # GET /: drop a picture, see the top-k as bars
# the page may talk to this server only: no scripts, styles or images from anywhere else
PAGE_POLICY = (
    "default-src 'none'; connect-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass
class ServedModel:
    """What the routes need to know of the model; its batches go through `batcher`."""

    name: str
    kind: str
    class_names: list[str]
    input_shape: tuple[int, ...]
    batcher: MicroBatcher
    metrics: Metrics
    max_pixels: int = MAX_PIXELS
    explain: Callable[[np.ndarray, list[int]], list[bytes]] | None = None  # Grad-CAM PNGs, on the model's thread
    no_explain: str = "this server was started without Grad-CAM"  # why explain is None


# ---------------------------------------------------------------- the app


def build_app(model: ServedModel, max_body: int = DEFAULT_MAX_BODY, api_key: str | None = None) -> Any:
    """The FastAPI app serving `model`."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    app = FastAPI(title=f"cnn serve: {model.name}", docs_url=None, redoc_url=None, openapi_url=None)
    view = model_view(model.input_shape)

    @app.exception_handler(RequestError)
    async def refused(request, exc: RequestError):
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = (
            "no such route; see GET /v1/models/NAME, POST /v1/models/NAME:predict, POST /predict, "
            "GET /healthz, GET /metrics"
            if exc.status_code == 404
            else str(exc.detail)
        )
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def failed(request, exc: Exception):  # the request fails, the server goes on
        return error(500, f"the server failed on this request: {type(exc).__name__}: {exc}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error(400, problems)

    def check_name(name: str) -> None:
        if name not in (model.name, "default"):
            raise RequestError(404, f"no model `{name}` here; this server has `{model.name}` (or say `default`)")

    async def probabilities(pixels: np.ndarray) -> np.ndarray:
        return await model.batcher.submit_async(pixels)

    async def tf_predict(request: Request):
        check_name(request.path_params["name"])
        body = await request.body()
        if len(body) <= INLINE_BODY:  # parsed here, in arrival order: a thread would cost more than the parse
            pixels = instances_to_pixels(body, model.input_shape, view)
        else:
            pixels = await run_in_threadpool(instances_to_pixels, body, model.input_shape, view)
        return JSONResponse({"predictions": (await probabilities(pixels)).tolist()})

    # the route every prediction takes is a plain Starlette route (FastAPI's own are Starlette routes too):
    # it has no parameters for FastAPI to resolve, nor a return value for it to walk through jsonable_encoder
    app.add_route("/v1/models/{name}:predict", tf_predict, methods=["POST"])

    @app.get("/v1/models/{name}")
    async def status(name: str):
        check_name(name)
        return {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    @app.get("/v1/models/{name}/metadata")
    async def metadata(name: str):
        check_name(name)
        return metadata_of(model)

    @app.post("/predict")
    async def predict(request: Request, k: int = Query(DEFAULT_TOP_K, ge=1), explain: str | None = None):
        if explain not in (None, "gradcam"):
            raise RequestError(400, f"explain must be gradcam, got `{explain}`")
        if explain and model.explain is None:
            raise RequestError(400, f"explain=gradcam is not available: {model.no_explain}")
        form = await request.form()
        files = [(value.filename or key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise RequestError(400, "send image files as multipart/form-data, e.g. curl -F image=@photo.jpg")
        pictures = []
        for name, upload in files:
            data = await upload.read()
            pictures.append(await run_in_threadpool(read_picture, data, name, view, model.max_pixels))
        probs = await probabilities(np.stack(pictures))
        rows = [
            {"image": name, "predictions": top_k(p, model.class_names, min(k, len(p)))}
            for (name, _), p in zip(files, probs, strict=True)
        ]
        if explain and (draw := model.explain):  # of the most probable class, on the model's thread
            classes = [int(np.argmax(p)) for p in probs]
            job = model.batcher.call(lambda: draw(np.stack(pictures), classes))
            for row, png in zip(rows, await asyncio.wrap_future(job), strict=True):
                row["gradcam"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return {"predictions": rows}

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model.name}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(model.metrics.text(), media_type=CONTENT_TYPE)

    app.add_middleware(Guard, metrics=model.metrics, max_body=max_body, api_key=api_key)
    return app


def metadata_of(model: ServedModel) -> dict:
    """TF Serving's metadata answer (the serving_default signature), with the class names and input shape."""

    def tensor(name: str, dims: list[int]) -> dict:
        return {
            "dtype": "DT_FLOAT",
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
            "name": name,
        }

    signature = {
        "inputs": {"image": tensor("serving_default_image:0", [-1, *model.input_shape])},
        "outputs": {"probabilities": tensor("StatefulPartitionedCall:0", [-1, len(model.class_names)])},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": "1"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
        "kind": model.kind,
        "input_shape": list(model.input_shape),
        "class_names": model.class_names,
        "input": 'raw pixels 0..255, (height, width, channels); or {"b64": "<image file>"}',
    }


# ---------------------------------------------------------------- running it

EXTRA_HINT = "pip install 'cnncli[serve]'"
GRACE_SECONDS = 30  # SIGTERM: how long requests in flight may take to finish before the server exits anyway


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: nothing beyond this machine reaches the model unless asked
    port: int = 8000
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_body: int = DEFAULT_MAX_BODY
    api_key: str | None = None


def need_extra() -> None:
    """FastAPI, uvicorn and python-multipart importable, or a CnnError naming the install line."""
    import importlib.util

    from cnncli.errors import CnnError

    modules = {
        "fastapi": ("fastapi",),
        "uvicorn": ("uvicorn",),
        "python-multipart": ("python_multipart", "multipart"),
    }  # renamed in 0.0.13, the old name kept a while
    missing = [name for name, names in modules.items() if all(importlib.util.find_spec(m) is None for m in names)]
    if missing:
        raise CnnError(f"cnn serve needs the optional extra ({', '.join(missing)} missing): {EXTRA_HINT}")


def is_loopback(host: str) -> bool:
    """Whether `host` listens only on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(host: str, port: int, api_key: str | None) -> str | None:
    """What to tell someone who opens the model beyond this machine without a key."""
    if is_loopback(host) or api_key:
        return None
    return (
        f"listening on {host}:{port} without --api-key: anyone who can reach this machine can use the model "
        "(set --api-key or CNN_SERVE_API_KEY)"
    )


def open_socket(host: str, port: int) -> Any:
    """The listening socket, bound here so a taken port is one Error line, not uvicorn's exit."""
    import os
    import socket

    from cnncli.errors import CnnError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not socket.create_server's 0: asyncio turns Nagle's algorithm off only on sockets
    # that say they are TCP, and with it on, a keep-alive response written in two parts (headers, then
    # body) waits for the client's delayed ACK, ~40 ms on Linux, on every request after the first
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as create_server does
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # [::1] means IPv6 alone, as there
        sock.bind((host.strip("[]"), port))
        sock.listen()
        return sock
    except OSError as exc:
        sock.close()
        raise CnnError(f"cannot listen on {host}:{port} (--host, --port): {exc.strerror or exc}") from None


def serve(
    model_path: Path,
    options: ServeOptions,
    say: Callable[[str], Any] = print,
    warn: Callable[[str], Any] = print,
    explainer: Any = None,
) -> None:
    """Serve the model at `model_path` (run directory or export) until SIGTERM or Ctrl-C.

    `explainer(keras_model)` gives the Grad-CAM function of POST /predict?explain=gradcam
    (it lives in cnncli.insight, a floor above this one, so the command hands it in).
    """
    import gc
    import signal

    from cnncli.deploy.artifacts import open_predictor
    from cnncli.errors import CnnError

    need_extra()
    import uvicorn

    for option, value, low in (
        ("--max-batch", options.max_batch, 1),
        ("--max-body", options.max_body, 1),
        ("--max-wait-ms", options.max_wait_ms, 0),
    ):
        if value < low:
            raise CnnError(f"{option} must be at least {low}, got {value}")
    predictor = open_predictor(model_path)
    for message in predictor.warnings:
        warn(message)
    name = model_name(predictor, Path(model_path))
    predictor.predict(np.zeros((1, *predictor.input_shape), np.float32))  # first call traces: not in a request
    sock = open_socket(options.host, options.port)
    metrics = Metrics()
    batcher = MicroBatcher(predictor.predict, options.max_batch, options.max_wait_ms / 1000, metrics.batch)
    model = ServedModel(name, predictor.kind, predictor.class_names, predictor.input_shape, batcher, metrics)
    model.explain, model.no_explain = explain_of(predictor, explainer)
    app = build_app(model, options.max_body, options.api_key or None)
    host, port = sock.getsockname()[:2]
    if exposed := exposure_warning(options.host, port, options.api_key):
        warn(exposed)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    say(
        f"Serving `{name}` ({predictor.kind}, {len(predictor.class_names)} classes) at {url}: "
        f"POST {url}/v1/models/{name}:predict, POST {url}/predict; SIGTERM or Ctrl-C stops it"
    )
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=GRACE_SECONDS, server_header=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM, then raises the signal again once its handlers are gone;
    # an empty handler makes that second one a no-op, so a drained server exits 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    # TensorFlow and Keras leave ~400,000 objects behind their import: a full collection walks them all,
    # ~300 ms with every request waiting (the p99 under load). Frozen, they are never walked again.
    gc.freeze()
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        batcher.close(GRACE_SECONDS)
        sock.close()


def model_name(predictor: Any, path: Path) -> str:
    """The name clients put in /v1/models/NAME: the run's config name, or an export's file stem."""
    if predictor.kind == "run":
        from cnncli.deploy.runs import open_run

        return open_run(path).cfg.name or "default"
    return path.name if path.is_dir() else path.stem


def explain_of(predictor: Any, explainer: Any) -> tuple[Callable | None, str]:
    """(Grad-CAM function, "") for a Keras model with a convolution, else (None, why not)."""
    from cnncli.errors import CnnError

    if explainer is None:
        return None, "this server was started without Grad-CAM"
    if predictor.model is None:
        return None, (
            f"Grad-CAM needs the Keras model (a run directory or a .keras file); "
            f"this server runs a {predictor.kind} model"
        )
    try:
        return explainer(predictor.model), ""
    except CnnError as exc:
        return None, str(exc)
