"""`cnn serve` under load: 32 concurrent clients with micro-batching on, then off, beside one client alone.

    python benchmarks/serve_load.py                          # 30 s per side, 32 clients
    python benchmarks/serve_load.py --seconds 10 --out benchmarks/results/serve-load-CPU.json
    python benchmarks/serve_load.py --run-dir runs/mnist-lenet/<timestamp>   # an existing run

The LeNet-style model of configs/mnist_lenet.yaml is trained briefly on
Fashion-MNIST (`data.limit` images, one epoch: the figures are about serving,
not accuracy), unless --run-dir names a run. For each side a fresh `cnn serve`
process listens on 127.0.0.1 at a free port: `--max-batch 32` (batching on,
the default) and `--max-batch 1` (every request alone). Each client is a
thread with its own keep-alive HTTP connection (standard library only) that
POSTs one image as TF Serving's `{"instances": [pixels]}` to
`/v1/models/default:predict`, again and again, until --seconds pass or
--max-requests are sent. Printed per side: throughput, p50/p95/p99 latency,
errors, and the server's resident memory (VmRSS and its peak VmHWM, read from
/proc) after start-up and at the end; then one client alone on the batching
server, and the two goal lines: batching >= 3x the throughput of no batching
at 32 clients, and p99 at 32 clients <= 2x the single-client latency.

Exit status is 0 whatever the figures; the goal lines say which were met.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAIN_SETTINGS = ["data.dataset=fashion_mnist", "data.limit=2000", "train.epochs=1", "runtime.precision=float32"]
START_TIMEOUT = 240  # seconds for a server to import TensorFlow and load the model on a busy machine
SINGLE_REQUESTS = 200  # requests of the lone client (after 10 warm-up requests)
GOAL_SPEEDUP = 3.0  # batching must at least triple throughput at 32 clients
GOAL_TAIL = 2.0  # p99 at 32 clients within 2x the single-client median latency


def cnn_command() -> list[str]:
    """The console script beside this Python, else `python -m cnncli.cli`."""
    script = Path(sys.executable).parent / "cnn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnncli.cli"]


def train(work: Path) -> Path:
    sets = [a for s in TRAIN_SETTINGS for a in ("--set", s)]
    done = subprocess.run(
        [*cnn_command(), "train", str(ROOT / "configs" / "mnist_lenet.yaml"), *sets, "--output", str(work), "--json"],
        capture_output=True, text=True, cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"training failed ({done.returncode}):\n{done.stderr}")
    return Path(json.loads(done.stdout)["run_dir"])


def test_images(run_dir: Path, n: int = 64) -> list[list]:
    """A few test images of the run's data, as nested pixel lists (h, w, c)."""
    from cnncli.deploy.runs import open_run

    x = open_run(run_dir).load_data().x_test[:n]
    return [img.tolist() for img in x]


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict:
    """VmRSS and VmHWM (the peak) of a process, in MiB, from /proc (no psutil needed)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields.get("VmRSS"), "peak_rss_mib": fields.get("VmHWM")}


class Server:
    """`cnn serve RUN_DIR` in a child process, on a free port, until stop()."""

    def __init__(self, run_dir: Path, max_batch: int):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [*cnn_command(), "serve", str(run_dir), "--port", str(self.port), "--max-batch", str(max_batch)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"cnn serve exited {self.process.returncode}:\n{self.log.read().decode()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"cnn serve did not answer /healthz within {START_TIMEOUT} s")

    def stop(self) -> int:
        self.process.terminate()  # SIGTERM: drains, exits 0
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# ---------------------------------------------------------------- the clients


def connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle's algorithm off, as urllib3 and curl open theirs: http.client sends
    headers and a body over 2,000 bytes in two writes, and the second would wait for the server's delayed ACK
    (40 ms on Linux), a stall of the client's making, not the server's."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def client(port: int, bodies: list[bytes], stop_at: float, budget: list[int], lock: threading.Lock,
           latencies: list[float], errors: list[str]) -> None:
    """POST one image at a time over one keep-alive connection until the time or the request budget runs out."""
    conn = connect(port)
    i = 0
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/models/default:predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200 or b"predictions" not in payload:
                errors.append(f"{response.status}: {payload[:120]!r}")
                continue
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = connect(port)
            continue
        latencies.append(time.perf_counter() - t0)
    conn.close()


def drive(port: int, bodies: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    """`clients` threads for `seconds` (or `max_requests` in all): throughput, latency percentiles, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    budget, lock = [max_requests], threading.Lock()
    started = time.perf_counter()
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(port, bodies, stop_at, budget, lock, latencies, errors))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "throughput_rps": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 2), "p95_ms": round(q[94] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


def side(run_dir: Path, bodies: list[bytes], max_batch: int, args, single: bool) -> dict:
    server = Server(run_dir, max_batch)
    try:
        at_start = memory(server.process.pid)
        drive(server.port, bodies, 1, 60, 10)  # warm-up: the first calls trace the model
        result = {"max_batch": max_batch, "memory_at_start": at_start}
        result["load"] = drive(server.port, bodies, args.clients, args.seconds, args.max_requests)
        if single:
            result["single_client"] = drive(server.port, bodies, 1, args.seconds, SINGLE_REQUESTS)
        result["memory_at_end"] = memory(server.process.pid)
    finally:
        result_code = server.stop()
    result["exit_code"] = result_code
    return result


def cpu_description() -> dict:
    from cnncli.train.decisions import read_cpu

    return read_cpu().as_json()


def show(label: str, s: dict, mem: tuple[dict, dict] | None = None) -> None:
    line = (f"{label:<34} {s['throughput_rps']:>8.1f} req/s  p50 {s['p50_ms']:>7} ms  p95 {s['p95_ms']:>7} ms  "
            f"p99 {s['p99_ms']:>7} ms  {s['requests']:>6} requests, {s['errors']} errors")
    if mem:
        line += (f"  RSS {mem[0]['rss_mib']} -> {mem[1]['rss_mib']} MiB "
                 f"(peak {mem[0]['peak_rss_mib']} -> {mem[1]['peak_rss_mib']})")
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="serve this run instead of training one")
    parser.add_argument("--seconds", type=float, default=30.0, help="load time per side (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per side")
    parser.add_argument("--out", type=Path, help="write the report as JSON here (e.g. benchmarks/results/)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-load-") as work:
        run_dir = args.run_dir or train(Path(work))
        bodies = [json.dumps({"instances": [img]}).encode() for img in test_images(run_dir)]
        batched = side(run_dir, bodies, 32, args, single=True)
        alone = side(run_dir, bodies, 1, args, single=False)

    speedup = batched["load"]["throughput_rps"] / max(alone["load"]["throughput_rps"], 1e-9)
    single_p50 = batched["single_client"]["p50_ms"]
    tail = batched["load"]["p99_ms"] / single_p50
    cpu = cpu_description()
    report = {
        "cpu": cpu,
        "model": "configs/mnist_lenet.yaml (Fashion-MNIST, 1 epoch)" if not args.run_dir else str(args.run_dir),
        "clients": args.clients,
        "seconds_per_side": args.seconds,
        "batching": batched,
        "no_batching": alone,
        "speedup": round(speedup, 2),
        "p99_over_single_p50": round(tail, 2),
        "goals": {"speedup_at_least": GOAL_SPEEDUP, "p99_over_single_at_most": GOAL_TAIL,
                  "speedup_met": speedup >= GOAL_SPEEDUP, "tail_met": tail <= GOAL_TAIL},
    }

    print(f"CPU: {cpu.get('model')}, {cpu.get('cores')} cores; {args.clients} clients, {args.seconds:g} s per side")
    show(f"batching on (--max-batch 32), {args.clients} clients", batched["load"],
         (batched["memory_at_start"], batched["memory_at_end"]))
    show(f"batching off (--max-batch 1), {args.clients} clients", alone["load"],
         (alone["memory_at_start"], alone["memory_at_end"]))
    show("one client alone (batching on)", batched["single_client"])
    print(f"goal: batching >= {GOAL_SPEEDUP:g}x throughput at {args.clients} clients: {speedup:.2f}x  "
          f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}")
    print(f"goal: p99 at {args.clients} clients <= {GOAL_TAIL:g}x single-client p50: {tail:.2f}x "
          f"({batched['load']['p99_ms']} ms vs {single_p50} ms)  {'met' if tail <= GOAL_TAIL else 'NOT met'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
