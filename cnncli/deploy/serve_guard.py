"""The guard in front of every route of `cnn serve`: the API key, the body limit, and the metrics.

A plain ASGI middleware rather than FastAPI dependencies, so it also covers
unknown routes, and so a body over the limit is refused while it arrives, not
after it has been read whole.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from cnncli.deploy.serve_metrics import Metrics

DEFAULT_MAX_BODY = 10 * 1024 * 1024  # bytes: a few phone photos, or ~16 raw 224×224 RGB arrays as JSON
PREDICT_ROUTES = ("/v1/models/{name}:predict", "/predict")  # counted in cnn_serve_requests_in_flight
# answered without the API key: load balancers probe /healthz; the page at / is static, and what it
# shows of the model it fetches with the key its user types
OPEN_PATHS = ("/healthz", "/")


def error(status: int, message: str, headers: dict | None = None) -> Any:
    """A JSON error response: `{"error": message}` with this status."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def route_of(path: str) -> str:
    """The route template a path belongs to: metric labels stay few whatever paths clients send."""
    if path.startswith("/v1/models/"):
        rest = path[len("/v1/models/") :]
        if rest.endswith(":predict"):
            return "/v1/models/{name}:predict"
        return "/v1/models/{name}/metadata" if rest.endswith("/metadata") else "/v1/models/{name}"
    return path if path in ("/", "/predict", "/healthz", "/metrics") else "other"


class Guard:
    """ASGI middleware: API key (401), body size (413), and each request counted and timed."""

    def __init__(self, app, metrics: Metrics, max_body: int, api_key: str | None):
        self.app, self.metrics, self.max_body, self.api_key = app, metrics, max_body, api_key

    async def __call__(self, scope, receive, send):
        """Answer one ASGI call, counting and timing it."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, start, status = route_of(scope["path"]), time.perf_counter(), [500]
        predicting = route in PREDICT_ROUTES

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight += predicting
        try:
            refusal = self._refusal(scope)
            body = None
            if refusal is None:
                body = await _read_body(receive, self.max_body)
                if body is None:
                    refusal = error(
                        413, f"the request body is over the limit of {self.max_body:,} bytes (cnn serve --max-body)"
                    )
            if refusal is not None:
                await refusal(scope, receive, send_counted)
            else:
                await self.app(scope, _replay(body, receive), send_counted)
        finally:
            self.metrics.in_flight -= predicting
            self.metrics.request(route, scope["method"], status[0], time.perf_counter() - start)

    def _refusal(self, scope):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
            if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return error(
                    401,
                    "missing or wrong API key: send the header `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return error(
                413,
                f"the request body ({int(length):,} bytes) is over the limit of {self.max_body:,} "
                "bytes (cnn serve --max-body)",
            )
        return None


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes (a chunked body has no Content-Length)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the client to disconnect

    return replayed
