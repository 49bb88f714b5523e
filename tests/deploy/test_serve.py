"""cnn serve: a real server in a subprocess on 127.0.0.1, asked what `cnn predict` is asked.

A tiny shapes run is trained once for the module; each server is started with
`--port 0` (the port it got is read from its first line) and always stopped by
its fixture's finalizer. The micro-batcher and the small helpers are tested in
process, without a server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, small_config
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.images import read_image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

START_TIMEOUT = 180  # seconds for a server to import TensorFlow and load the model on a busy machine
REQUEST_TIMEOUT = 60
MAX_BODY = 2_000_000  # the module server's --max-body, so an oversized body stays cheap to send
runner = CliRunner()


# ---------------------------------------------------------------- a trained run, pictures, servers

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    root = tmp_path_factory.mktemp("serve")
    config = root / "tiny.yaml"
    config.write_text(small_config())
    return run_training(TrainOptions(config=config, output=root / "runs", name="tiny"), Reporter()).run_dir


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    """A grey picture at the model's size, a colour one twice as large, and a JPEG: every path through the reader."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(3)
    files = [root / "grey.png", root / "colour.png", root / "photo.jpg"]
    Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(files[0])
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(files[1])
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(files[2])
    return files


class Server:
    def __init__(self, run: Path, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.process = subprocess.Popen([sys.executable, "-m", "cnncli", "serve", str(run), "--port", "0", *args],
                                        env=environment, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := re.search(r"at http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"cnn serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON or text) of one request."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                status, raw, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, json.loads(raw) if kind.startswith("application/json") else raw.decode()

    def post_json(self, path: str, doc, headers: dict | None = None):
        return self.call("POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json",
                                                                  **(headers or {})})

    def post_files(self, path: str, files: list[tuple[str, bytes]], headers: dict | None = None):
        body, content_type = multipart(files)
        return self.call("POST", path, body, {"Content-Type": content_type, **(headers or {})})


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start(request, tmp_path_factory, run: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    server = Server(run, list(args), env or {}, tmp_path_factory.mktemp("server") / "stderr.txt")
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, run_dir) -> Server:
    return start(request, tmp_path_factory, run_dir, "--max-body", str(MAX_BODY))


def cnn_predict(run: Path, files: list[Path], k: int) -> list[dict]:
    result = runner.invoke(app, ["predict", str(run), *map(str, files), "--top-k", str(k), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def metric_values(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


# ---------------------------------------------------------------- predictions as cnn predict gives them

def test_predict_route_gives_what_cnn_predict_gives(server, run_dir, pictures):
    status, answer = server.post_files("/predict?k=2", [(p.name, p.read_bytes()) for p in pictures])
    assert status == 200, answer
    expected = cnn_predict(run_dir, pictures, 2)
    assert [row["image"] for row in answer["predictions"]] == [p.name for p in pictures]
    for got, want in zip(answer["predictions"], expected, strict=True):
        assert [p["class"] for p in got["predictions"]] == [p["class"] for p in want["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p["probability"] for p in want["predictions"]], atol=1e-6)


def test_tf_serving_round_trip(server, run_dir, pictures):
    status, meta = server.call("GET", "/v1/models/tiny/metadata")
    assert status == 200 and meta["model_spec"]["name"] == "tiny"
    assert meta["input_shape"] == [16, 16, 1] and meta["class_names"] == ["x", "o"]
    dims = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["image"]["tensor_shape"]
    assert [d["size"] for d in dims["dim"]] == ["-1", "16", "16", "1"]
    assert server.call("GET", "/v1/models/default") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

    pixels = read_image(pictures[1], "grayscale", (16, 16))  # what the model sees of the colour picture
    instances = [pixels.tolist(), {"b64": base64.b64encode(pictures[1].read_bytes()).decode()},
                 {"image": {"b64": base64.b64encode(pictures[0].read_bytes()).decode()}}]
    status, answer = server.post_json("/v1/models/tiny:predict", {"instances": instances})
    assert status == 200, answer
    expected = {row["image"]: {p["class"]: p["probability"] for p in row["predictions"]}
                for row in cnn_predict(run_dir, pictures[:2], 2)}
    by_class = [expected[str(pictures[1])], expected[str(pictures[1])], expected[str(pictures[0])]]
    np.testing.assert_allclose(answer["predictions"], [[e["x"], e["o"]] for e in by_class], atol=1e-6)

    status, answer = server.post_json("/v1/models/default:predict", {"instances": instances[:1]})
    assert status == 200 and len(answer["predictions"]) == 1
    assert server.post_json("/v1/models/other:predict", {"instances": instances[:1]}) == (
        404, {"error": "no model `other` here; this server has `tiny` (or say `default`)"})


def test_metrics_count_what_was_sent(server, pictures):
    before = metric_values(server.call("GET", "/metrics")[1])
    files = [(p.name, p.read_bytes()) for p in pictures]
    assert server.post_files("/predict", files)[0] == 200
    assert server.post_files("/predict", files[:1])[0] == 200
    assert server.post_files("/predict", [("bad.png", b"not an image")])[0] == 400
    status, text = server.call("GET", "/metrics")
    assert status == 200
    after = metric_values(text)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta('cnn_serve_requests_total{route="/predict",method="POST",status="200"}') == 2
    assert delta('cnn_serve_requests_total{route="/predict",method="POST",status="400"}') == 1
    assert delta('cnn_serve_errors_total{route="/predict"}') == 1
    assert delta('cnn_serve_request_seconds_count{route="/predict"}') == 3
    assert delta("cnn_serve_batch_images_sum") == 4  # every image sent went through the model once
    assert after['cnn_serve_batch_images_bucket{le="+Inf"}'] == after["cnn_serve_batch_images_count"]


def test_gradcam_overlays_come_with_the_same_predictions(server, pictures):
    import io

    files = [(p.name, p.read_bytes()) for p in pictures[:2]]
    status, plain = server.post_files("/predict?k=2", files)
    assert status == 200 and all("gradcam" not in row for row in plain["predictions"])
    status, explained = server.post_files("/predict?k=2&explain=gradcam", files)
    assert status == 200, explained
    for row, without in zip(explained["predictions"], plain["predictions"], strict=True):
        assert row["predictions"] == without["predictions"]
        head, _, data = row["gradcam"].partition(",")
        assert head == "data:image/png;base64"
        overlay = Image.open(io.BytesIO(base64.b64decode(data)))
        assert overlay.mode == "RGB" and overlay.size == (224, 224)  # 16×16 scaled 14 times, pixels kept square
    assert server.post_files("/predict?explain=lime", files) == (400, {"error": "explain must be gradcam, got `lime`"})


# ---------------------------------------------------------------- bad input: a JSON error, and the server goes on

def _bomb() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG")  # 64 megapixels in ~60 kB
    return buffer.getvalue()


BAD_FILES = {
    "not an image": ("notes.png", lambda good: b"plain text", 400,
                     "notes.png: cannot read image (cannot identify image file"),
    "truncated": ("cut.png", lambda good: good[: len(good) // 2], 400, "cut.png: cannot read image ("),
    "decompression bomb": ("bomb.png", lambda good: _bomb(), 413,
                           "bomb.png: 8000×8000 = 64,000,000 pixels is over the budget of 40,000,000 pixels"),
}

BAD_JSON = {
    "not JSON": (b"{instances", 400, "the body is not JSON:"),
    "no instances": (b'{"inputs": []}', 400, 'the body must be a JSON object with "instances"'),
    "wrong shape": (b'{"instances": [[[1, 2], [3, 4]]]}', 400,
                    "instances[0]: an array of shape (2, 2); the model takes (16, 16, 1)"),
    "ragged": (b'{"instances": [[[1], [2, 3]]]}', 400, "instances[0]: not a rectangular array of numbers"),
    "bad base64": (b'{"instances": [{"b64": "@@"}]}', 400, "instances[0]: b64 is not valid base64"),
    "b64 of no image": (b'{"instances": [{"b64": "aGVsbG8="}]}', 400,
                        "instances[0]: cannot read image (cannot identify image file"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_gets_its_status_and_the_server_goes_on(server, pictures, case):
    name, make, status, fragment = BAD_FILES[case]
    got, answer = server.post_files("/predict", [(name, make(pictures[0].read_bytes()))])
    assert got == status and fragment in answer["error"], answer
    assert server.post_files("/predict", [(pictures[0].name, pictures[0].read_bytes())])[0] == 200


def raw_request(server: Server, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Status and JSON of a request written by hand: a client told 413 before its body is sent stops sending."""
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    header, _, content = reply.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(content[:_length(reply)])


def _length(reply: bytes) -> int:
    found = re.search(rb"(?i)content-length: *(\d+)", reply.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 1 << 30


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_body_gets_413_and_the_server_goes_on(server, pictures, chunked):
    message = "is over the limit of 2,000,000 bytes (cnn serve --max-body)"
    if chunked:  # no Content-Length: refused while it arrives
        size = MAX_BODY + 1
        body = f"{size:x}\r\n".encode() + b"\0" * size + b"\r\n0\r\n\r\n"
        status, answer = raw_request(server, "POST /predict HTTP/1.1\nHost: test\nTransfer-Encoding: chunked\n"
                                             "Content-Type: multipart/form-data; boundary=x\n", body)
    else:  # refused from the header, before a byte of the body is read
        status, answer = raw_request(server, f"POST /predict HTTP/1.1\nHost: test\nContent-Length: {MAX_BODY + 1}\n"
                                             "Content-Type: multipart/form-data; boundary=x\n")
    assert status == 413 and message in answer["error"], answer
    assert server.post_files("/predict", [(pictures[0].name, pictures[0].read_bytes())])[0] == 200


@pytest.mark.parametrize("case", BAD_JSON)
def test_bad_instances_get_400_and_the_server_goes_on(server, pictures, case):
    body, status, fragment = BAD_JSON[case]
    got, answer = server.call("POST", "/v1/models/tiny:predict", body, {"Content-Type": "application/json"})
    assert got == status and fragment in answer["error"], answer
    good = {"instances": [{"b64": base64.b64encode(pictures[0].read_bytes()).decode()}]}
    assert server.post_json("/v1/models/tiny:predict", good)[0] == 200


def test_bad_query_and_route_get_json_errors(server, pictures):
    assert server.post_files("/predict?k=0", [("a.png", pictures[0].read_bytes())]) == (
        400, {"error": "query.k: Input should be greater than or equal to 1"})
    assert server.post_files("/predict", []) == (
        400, {"error": "send image files as multipart/form-data, e.g. curl -F image=@photo.jpg"})
    status, answer = server.call("GET", "/nowhere")
    assert status == 404 and answer["error"].startswith("no such route")


def test_page_is_self_contained(server):
    with urllib.request.urlopen(server.url + "/", timeout=REQUEST_TIMEOUT) as response:
        page, headers = response.read().decode(), response.headers
    assert response.status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'; connect-src 'self'" in headers["content-security-policy"]
    assert not re.search(r"https?:|//[\w.-]+\.\w", page)  # nothing fetched from outside this server
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)  # no files besides the page itself
    assert '"v1/models/default/metadata"' in page and "`predict?k=${" in page  # relative: works behind a prefix
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page  # phones


def test_page_in_a_browser_shows_the_top_k_and_grad_cam(server, run_dir, pictures):
    from chromium_pipe import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium to load the page in")
    browser = Browser(find_chromium(), timeout=REQUEST_TIMEOUT)
    try:
        browser.open(server.url + "/")
        # the script runs under the page's Content-Security-Policy and fetches the metadata from this server
        assert browser.wait_for("document.getElementById('about').textContent.includes('classes') && "
                                "document.getElementById('about').textContent") == (
            "2 classes; the model takes 16×16×1 pixels (any picture is brought to that size)")
        assert browser.js("document.getElementById('title').textContent") == "tiny"
        browser.choose_file("#file", pictures[1])
        bars = browser.wait_for("Array.from(document.querySelectorAll('#result .row'), row => "
                                "Array.from(row.querySelectorAll('.label span'), s => s.textContent))")
        (row,) = cnn_predict(run_dir, pictures[1:2], 5)
        assert bars == [[p["class"], f"{100 * p['probability']:.1f}%"] for p in row["predictions"]]
        browser.js("document.getElementById('cam').click()")  # asks again, with explain=gradcam
        assert browser.wait_for("document.getElementById('overlay').naturalWidth") == 224
        assert browser.js("document.getElementById('error').textContent") == ""
    finally:
        browser.close()


# ---------------------------------------------------------------- the API key, and SIGTERM draining

@pytest.fixture(scope="module")
def guarded(request, tmp_path_factory, run_dir) -> Server:
    """A server that wants a key (from the environment), and whose first model batch takes SLOW_SECONDS."""
    return start(request, tmp_path_factory, run_dir,
                 env={"CNN_SERVE_API_KEY": "s3cret", "CNNCLI_FAULT": "serve_batch:slow"})


def test_api_key_guards_every_route_but_healthz_and_the_page(guarded):
    assert guarded.call("GET", "/healthz") == (200, {"status": "ok", "model": "tiny"})
    status, page = guarded.call("GET", "/")  # static; it asks its user for the key
    assert status == 200 and "API key" in page
    refusal = {"error": "missing or wrong API key: send the header `Authorization: Bearer KEY` or `X-API-Key: KEY`"}
    for method, path in (("GET", "/metrics"), ("GET", "/v1/models/tiny"), ("GET", "/v1/models/tiny/metadata"),
                         ("POST", "/v1/models/tiny:predict"), ("POST", "/predict"), ("GET", "/nowhere")):
        assert guarded.call(method, path, b"" if method == "POST" else None) == (401, refusal), path
    assert guarded.call("GET", "/v1/models/tiny", headers={"Authorization": "Bearer wrong"}) == (401, refusal)
    assert guarded.call("GET", "/v1/models/tiny", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert guarded.call("GET", "/v1/models/tiny", headers={"X-API-Key": "s3cret"})[0] == 200


def test_page_asks_for_the_key_and_sends_it(guarded):
    from chromium_pipe import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium to load the page in")
    browser = Browser(find_chromium(), timeout=REQUEST_TIMEOUT)
    try:
        browser.open(guarded.url + "/")
        assert browser.wait_for("document.getElementById('keybox').style.display") == "block"
        assert browser.js("document.getElementById('error').textContent").startswith("missing or wrong API key")
        browser.js("const key = document.getElementById('key'); key.value = 's3cret';"
                   "key.dispatchEvent(new Event('change'))")
        assert browser.wait_for("document.getElementById('title').textContent === 'tiny'")
        assert browser.js("document.getElementById('error').textContent") == ""
    finally:
        browser.close()


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(guarded, pictures):
    key = {"X-API-Key": "s3cret"}
    answers = []
    request = threading.Thread(target=lambda: answers.append(
        guarded.post_files("/predict", [("a.png", pictures[0].read_bytes())], key)))
    request.start()
    deadline = time.monotonic() + REQUEST_TIMEOUT
    while metric_values(guarded.call("GET", "/metrics", headers=key)[1])["cnn_serve_requests_in_flight"] < 1:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.05)
    guarded.process.send_signal(signal.SIGTERM)  # while the model sleeps in the slow batch
    request.join(REQUEST_TIMEOUT)
    assert guarded.process.wait(REQUEST_TIMEOUT) == 0, guarded.log.read_text()
    (status, answer), = answers
    assert status == 200 and answer["predictions"][0]["image"] == "a.png"


# ---------------------------------------------------------------- in process: the batcher and the helpers

def test_micro_batcher_fills_batches_and_max_batch_1_turns_it_off():
    from cnncli.deploy.batcher import MicroBatcher

    gate, sizes = threading.Event(), []

    def predict(x):
        gate.wait(REQUEST_TIMEOUT)  # the first batch waits while the rest queue up
        sizes.append(len(x))
        return np.repeat(x.reshape(len(x), -1)[:, :1], 2, axis=1)

    for max_batch in (4, 1):
        sizes.clear()
        gate.clear()
        batcher = MicroBatcher(predict, max_batch=max_batch, max_wait_s=REQUEST_TIMEOUT)
        futures = [batcher.submit(np.full((1, 2, 2, 1), i, np.float32)) for i in range(10)]
        gate.set()
        batcher.close(REQUEST_TIMEOUT)  # the last, partial batch ends at the close, not after max_wait_s
        results = [f.result(REQUEST_TIMEOUT) for f in futures]
        assert [r.tolist() for r in results] == [[[i, i]] for i in range(10)]  # each request its own rows
        assert sum(sizes) == 10 and max(sizes) == max_batch
        assert all(size == max_batch for size in sizes[1:-1])  # queued requests fill whole batches


def test_micro_batcher_survives_a_failing_batch():
    from cnncli.deploy.batcher import MicroBatcher

    def predict(x):
        if (x < 0).any():
            raise ValueError("negative pixels")
        return np.zeros((len(x), 2), np.float32)

    batcher = MicroBatcher(predict, max_batch=1, max_wait_s=0)
    with pytest.raises(ValueError, match="negative pixels"):
        batcher.submit(np.full((1, 2, 2, 1), -1, np.float32)).result(REQUEST_TIMEOUT)
    assert batcher.submit(np.zeros((3, 2, 2, 1), np.float32)).result(REQUEST_TIMEOUT).shape == (3, 2)
    batcher.close(REQUEST_TIMEOUT)


def test_listening_beyond_loopback_without_a_key_is_warned_about():
    from cnncli.deploy.serve import exposure_warning

    assert exposure_warning("127.0.0.1", 8000, None) is None
    assert exposure_warning("::1", 8000, None) is None
    assert exposure_warning("localhost", 8000, None) is None
    assert exposure_warning("0.0.0.0", 8000, "key") is None
    assert exposure_warning("0.0.0.0", 8000, None) == (
        "listening on 0.0.0.0:8000 without --api-key: anyone who can reach this machine can use the model "
        "(set --api-key or CNN_SERVE_API_KEY)")


def test_missing_extra_is_one_error_line(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = runner.invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == "Error: cnn serve needs the optional extra (uvicorn missing): pip install 'cnncli[serve]'\n"


def test_a_taken_port_is_one_error_line():
    import socket

    from cnncli.deploy.serve import open_socket
    from cnncli.errors import CnnError

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(CnnError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(--host, --port\): "):
            open_socket("127.0.0.1", port)


def test_connections_the_server_accepts_have_nagle_off():
    """asyncio turns Nagle's algorithm off only on sockets that say they are TCP; with it on, every
    keep-alive response written as headers then body waited ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from cnncli.deploy.serve import open_socket

    async def accept_one() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = open_socket("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
        return nodelay

    assert asyncio.run(accept_one()) == 1


def test_slow_fault_sleeps_at_its_point_then_goes_on(monkeypatch):
    from cnncli import faults

    slept = []
    monkeypatch.setenv(faults.ENV, "serve_batch:slow")
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    faults.reset()
    try:
        faults.point("serve_batch")
        faults.point("serve_batch")  # only the first arrival, as for every action
    finally:
        monkeypatch.delenv(faults.ENV)
        faults.reset()
    assert slept == [faults.SLOW_SECONDS]


def test_an_export_is_served_under_its_file_name(request, tmp_path_factory, run_dir, pictures):
    from cnncli.deploy.export import export_run

    exported = export_run(run_dir, "keras", tmp_path_factory.mktemp("export")).path
    server = start(request, tmp_path_factory, exported)
    status, meta = server.call("GET", "/v1/models/model/metadata")
    assert status == 200 and meta["kind"] == "keras" and meta["class_names"] == ["x", "o"]  # from export.json
    status, answer = server.post_files("/predict?k=2", [(p.name, p.read_bytes()) for p in pictures])
    assert status == 200, answer
    for got, want in zip(answer["predictions"], cnn_predict(run_dir, pictures, 2), strict=True):
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p["probability"] for p in want["predictions"]], atol=1e-6)
    server.stop()
    assert server.process.returncode == 0


def test_gradcam_is_refused_with_a_reason_where_there_is_no_keras_model():
    from types import SimpleNamespace

    from cnncli.deploy.serve import explain_of
    from cnncli.errors import CnnError

    assert explain_of(SimpleNamespace(model=object(), kind="run"), None) == (
        None, "this server was started without Grad-CAM")
    assert explain_of(SimpleNamespace(model=None, kind="tflite"), lambda m: m) == (
        None, "Grad-CAM needs the Keras model (a run directory or a .keras file); this server runs a tflite model")

    def no_conv(model):
        raise CnnError("model `m` has no convolution with a spatial output")

    assert explain_of(SimpleNamespace(model=object(), kind="run"), no_conv) == (
        None, "model `m` has no convolution with a spatial output")


def test_micro_batcher_runs_a_call_alone_on_the_model_thread():
    from cnncli.deploy.batcher import MicroBatcher

    batcher = MicroBatcher(lambda x: np.zeros((len(x), 2), np.float32), max_batch=8, max_wait_s=0.001)
    first = batcher.submit(np.zeros((1, 2, 2, 1), np.float32))
    name = batcher.call(lambda: threading.current_thread().name)
    last = batcher.submit(np.zeros((2, 2, 2, 1), np.float32))
    assert name.result(REQUEST_TIMEOUT) == "cnn-serve-model"
    assert first.result(REQUEST_TIMEOUT).shape == (1, 2) and last.result(REQUEST_TIMEOUT).shape == (2, 2)
    batcher.close(REQUEST_TIMEOUT)


def test_micro_batcher_hands_a_batch_to_an_event_loop_in_one_call():
    import asyncio

    from cnncli.deploy.batcher import MicroBatcher

    gate = threading.Event()

    def predict(x):
        gate.wait(REQUEST_TIMEOUT)  # the first batch waits while the rest queue up
        if (x < 0).any():
            raise ValueError("negative pixels")
        return np.repeat(x.reshape(len(x), -1)[:, :1], 2, axis=1)

    async def requests():
        loop = asyncio.get_running_loop()
        wakeups, original = [], loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args, **kw: (wakeups.append(args), original(*args, **kw))[1]
        batcher = MicroBatcher(predict, max_batch=4, max_wait_s=REQUEST_TIMEOUT)
        futures = [batcher.submit_async(np.full((1, 2, 2, 1), i, np.float32)) for i in range(8)]
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*futures), REQUEST_TIMEOUT)
        failed = batcher.submit_async(np.full((1, 2, 2, 1), -1, np.float32))
        with pytest.raises(ValueError, match="negative pixels"):
            await asyncio.wait_for(failed, REQUEST_TIMEOUT)
        await asyncio.to_thread(batcher.close, REQUEST_TIMEOUT)
        return results, len(wakeups)

    results, wakeups = asyncio.run(requests())
    assert [r.tolist() for r in results] == [[[i, i]] for i in range(8)]  # each request its own rows
    assert wakeups == 2 + 1 + 1  # two batches of four, the failed one, and to_thread's own
