"""Wall time of `cnn --help` and `cnn summary configs/mnist_lenet.yaml`, next to their targets.

Each command runs in a fresh process, as a user would run it; the median of a
few runs is reported. Timing is not asserted in tests (shared CI machines are
noisy); run this by hand or in a benchmark job:

    python benchmarks/cli_startup.py [--runs 3]

Exit status is 0 whatever the times; the table says which targets were met.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (label, arguments after `cnn`, target in seconds)
CASES = [
    ("cnn --help", ["--help"], 0.5),  # must not import TensorFlow
    ("cnn summary configs/mnist_lenet.yaml", ["summary", str(REPO / "configs" / "mnist_lenet.yaml")], 8.0),
]


def cnn_command() -> list[str]:
    """The console script beside this Python, else `python -m cnncli`."""
    script = Path(sys.executable).parent / ("cnn.exe" if os.name == "nt" else "cnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnncli"]


def wall_time(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([*cnn_command(), *args], capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`cnn {' '.join(args)}` failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command; the median is reported")
    runs = parser.parse_args().runs

    print(f"{'command':<42} {'median':>8} {'target':>8}  runs")
    for label, args, target in CASES:
        times = [wall_time(args) for _ in range(runs)]
        median = statistics.median(times)
        verdict = "ok" if median <= target else "SLOW"
        print(f"{label:<42} {median:>7.2f}s {target:>7.1f}s  {', '.join(f'{t:.2f}' for t in times)}  {verdict}")


if __name__ == "__main__":
    main()
