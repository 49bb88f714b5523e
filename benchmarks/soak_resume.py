"""Soak test of --resume: train for many epochs, kill -9 every ~20 s, resume each time.

    python benchmarks/soak_resume.py                       # configs/shapes_cnn.yaml, 30 epochs of 30,000 figures
    python benchmarks/soak_resume.py --train-examples 6000 --every 20 --seed 1 --json soak.json

First an uninterrupted run of the config, then the same run (same seed,
deterministic ops) killed with SIGKILL at random moments around every `--every`
seconds of each process's life and resumed with `cnn train --resume` until it
completes. After every kill the run directory is checked (state.json names a
whole checkpoint, history.csv is at most one epoch ahead of it); at the end
the history must hold every epoch exactly once and the test accuracy must be
within `--tolerance` of the uninterrupted run's. Prints the figures; exit 1 if
a check fails. Not a test: it takes ~5-10 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CNN = [str(Path(sys.executable).parent / "cnn")] if (Path(sys.executable).parent / "cnn").exists() \
    else [sys.executable, "-m", "cnncli"]


def history_epochs(run_dir: Path) -> list[int]:
    from cnncli.train.rundir import read_history

    return [int(row["epoch"]) for row in read_history(run_dir / "history.csv")]


def history_difference(a: Path, b: Path) -> float:
    """Largest |difference| between two runs' history.csv values (loss, accuracy, val_*, learning_rate)."""
    with open(a / "history.csv", newline="") as fa, open(b / "history.csv", newline="") as fb:
        rows = list(zip(csv.DictReader(fa), csv.DictReader(fb), strict=True))
    return max((abs(float(ra[k]) - float(rb[k])) for ra, rb in rows for k in ra if k != "epoch"), default=0.0)


def committed(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "state.json"
    return len(json.loads(path.read_text())["history"]) if path.exists() else 0


def check_intact(run_dir: Path) -> int:
    """The crash invariants; returns the committed epoch count."""
    done = committed(run_dir)
    if done:
        state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
        prefix = run_dir / state["checkpoint"]
        assert prefix.with_name(prefix.name + ".index").exists(), f"{prefix}.index missing"
        assert list(prefix.parent.glob(prefix.name + ".data-*")), f"{prefix}: no data file"
    epochs = history_epochs(run_dir)
    assert epochs in (list(range(1, done + 1)), list(range(1, done + 2))), (epochs, done)
    return done


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CNN, *args], capture_output=True, text=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes_cnn.yaml"))
    parser.add_argument("--epochs", type=int, default=30)
    # The config's 6,000 figures train at ~0.6 s an epoch here: 30 epochs would outlast one kill at most.
    parser.add_argument("--train-examples", type=int, default=30_000, help="data.shapes.train_examples")
    parser.add_argument("--every", type=float, default=20.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--tolerance", type=float, default=0.01, help="allowed test-accuracy difference")
    parser.add_argument("--output", default=None, help="where the two runs go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    opts = parser.parse_args()

    out = Path(opts.output or tempfile.mkdtemp(prefix="cnncli-soak-"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    sets = ["--set", "deterministic=true", "--epochs", str(opts.epochs)]
    if opts.train_examples:
        sets += ["--set", f"data.shapes.train_examples={opts.train_examples}"]
    rng = random.Random(opts.seed)

    t0 = time.monotonic()
    baseline = run(["train", opts.config, *sets, "-o", str(out / "uninterrupted"), "--json"], env)
    if baseline.returncode != 0:
        print(baseline.stderr, file=sys.stderr)
        return 1
    base = json.loads(baseline.stdout)
    base_seconds = time.monotonic() - t0
    print(f"uninterrupted: {opts.epochs} epochs in {base_seconds:.0f} s, "
          f"test accuracy {base['metrics']['test']['accuracy']:.4f}", flush=True)

    t0 = time.monotonic()
    kills, run_dir, final = [], None, None
    while final is None:
        args = ["train", "--resume", str(run_dir)] if run_dir else ["train", opts.config, *sets]
        proc = subprocess.Popen([*CNN, *args, "-o", str(out / "killed"), "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        delay = rng.uniform(0.75 * opts.every, 1.25 * opts.every)
        try:
            stdout, stderr = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            stdout, stderr = proc.communicate()
        if run_dir is None:  # the first process: did it get as far as its run directory and config?
            found = sorted(d for d in (out / "killed").glob("*/*") if (d / "config.yaml").exists())
            run_dir = found[-1] if found else None
        if proc.returncode == 0:
            final = json.loads(stdout)
            break
        if proc.returncode != -signal.SIGKILL:
            print(f"`cnn {' '.join(args)}` exited {proc.returncode}:\n{stderr}", file=sys.stderr)
            return 1
        done = check_intact(run_dir) if run_dir else 0
        kills.append({"after_seconds": round(delay, 1), "epochs_committed": done,
                      "history_rows": len(history_epochs(run_dir)) if run_dir else 0})
        print(f"kill {len(kills)} after {delay:.1f} s: {done} epochs committed", flush=True)
    soak_seconds = time.monotonic() - t0

    epochs = history_epochs(run_dir)
    accuracy, base_accuracy = final["metrics"]["test"]["accuracy"], base["metrics"]["test"]["accuracy"]
    base_dir = Path(base["run_dir"])
    figures = {
        "config": opts.config, "epochs": opts.epochs, "train_examples": opts.train_examples,
        "kills": len(kills), "kill_log": kills, "every_seconds": opts.every, "seed": opts.seed,
        "uninterrupted_seconds": round(base_seconds, 1), "soak_seconds": round(soak_seconds, 1),
        "history_epochs_exactly_once": epochs == list(range(1, opts.epochs + 1)),
        "test_accuracy": accuracy, "uninterrupted_test_accuracy": base_accuracy,
        "accuracy_difference": round(abs(accuracy - base_accuracy), 6),
        "test_loss": final["metrics"]["test"]["loss"], "uninterrupted_test_loss": base["metrics"]["test"]["loss"],
        # Deterministic ops, the same seed and exact resumes: the histories should agree to the last bit.
        "history_max_abs_difference": history_difference(run_dir, base_dir),
        "run_dir": str(run_dir),
    }
    ok = figures["history_epochs_exactly_once"] and figures["accuracy_difference"] <= opts.tolerance
    figures["ok"] = ok
    print(json.dumps({k: v for k, v in figures.items() if k != "kill_log"}, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
