"""Training speed: cnncli's trainer against plain Keras `model.fit`, on Fashion-MNIST.

For each of the four seed models of the course (softmax regression, an MLP,
a small CNN, the LeNet-style CNN with a 1024-unit layer) it trains the same
model, optimizer, batch size and epochs twice, each in its own process:

* plain: the recipe a course writes — `keras.Sequential`, pixels divided by
  255 into a float32 NumPy array, `model.compile(...)`, `model.fit(x, y,
  batch_size, epochs)` (shuffled, no validation), float32;
* cnncli: `cnn train` on a config written to a temporary directory
  (validation_split 0, precision `auto`, everything else as a user gets it).

Both read the same examples, from one .npz file written here.

Fairness of the timing: images/s is measured over epochs 2..N on both sides,
so neither pays for tracing its graph. For `fit`, a callback times each epoch
from on_epoch_begin to on_epoch_end; for cnncli, run.json's per-epoch
`epoch_seconds` (training steps only). Test accuracy is each model's
on the same test images after the same epochs. Peak memory is the peak
resident set of each process (os.wait4's ru_maxrss). Runs on a busy machine
are noisy: the figures are indicative; repeat and compare ratios. One run's
test accuracy varies with the initial weights by a few tenths of a point
(`fit` is unseeded, as a course runs it; cnncli's seed is --seed, 42).

    python benchmarks/train_speed.py --quick          # one to two minutes on 2 cores
    python benchmarks/train_speed.py --models lenet   # one model, full length
    python benchmarks/train_speed.py --json > speed.json
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

# The seed models, in YAML's vocabulary (a layer's `type` is its Keras class).
MODELS = {
    "softmax": {
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}],
        "optimizer": {"type": "SGD", "learning_rate": 0.1}, "batch_size": 100,  # 0.5 (MNIST) oscillates here
        "full": (10, 60000), "quick": (3, 20000),  # (epochs, training examples)
    },
    "mlp": {
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 128, "activation": "relu"},
                   {"type": "Dropout", "rate": 0.2}, {"type": "Dense", "units": 10, "activation": "softmax"}],
        "optimizer": {"type": "Adam", "learning_rate": 0.001}, "batch_size": 100,
        "full": (10, 60000), "quick": (3, 20000),
    },
    "cnn": {
        "layers": [{"type": "Conv2D", "filters": 32, "kernel_size": 3, "activation": "relu"},
                   {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Dropout", "rate": 0.25},
                   {"type": "Flatten"}, {"type": "Dense", "units": 128, "activation": "relu"},
                   {"type": "Dropout", "rate": 0.5}, {"type": "Dense", "units": 10, "activation": "softmax"}],
        "optimizer": {"type": "Adam", "learning_rate": 0.001}, "batch_size": 32,
        "full": (5, 60000), "quick": (2, 6000),
    },
    "lenet": {
        "layers": [{"type": "Conv2D", "filters": 32, "kernel_size": 5, "padding": "same", "activation": "relu"},
                   {"type": "MaxPooling2D", "pool_size": 2, "strides": 2},
                   {"type": "Conv2D", "filters": 64, "kernel_size": 5, "padding": "same", "activation": "relu"},
                   {"type": "MaxPooling2D", "pool_size": 2, "strides": 2}, {"type": "Flatten"},
                   {"type": "Dense", "units": 1024, "activation": "relu"}, {"type": "Dropout", "rate": 0.5},
                   {"type": "Dense", "units": 10, "activation": "softmax"}],
        "optimizer": {"type": "Adam", "learning_rate": 0.001}, "batch_size": 100,
        "full": (3, 60000), "quick": (2, 4000),
    },
}
TEST_EXAMPLES = {"full": 10000, "quick": 2000}


# ---------------------------------------------------------------- data

def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_data(folder: Path, train: int, test: int, out: Path) -> None:
    """The first `train` / `test` images of Fashion-MNIST, uint8 NHWC, as one .npz both sides read."""
    x_train = _idx(folder / "train-images-idx3-ubyte.gz")[:train, :, :, None]
    y_train = _idx(folder / "train-labels-idx1-ubyte.gz")[:train]
    x_test = _idx(folder / "t10k-images-idx3-ubyte.gz")[:test, :, :, None]
    y_test = _idx(folder / "t10k-labels-idx1-ubyte.gz")[:test]
    np.savez(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


# ---------------------------------------------------------------- the two sides (each in a child process)

def plain_side(name: str, epochs: int, data: Path) -> dict:
    """The course's recipe: float32 arrays in [0, 1], Sequential, compile, fit, evaluate."""
    import keras

    spec = MODELS[name]
    with np.load(data) as f:
        x_train, y_train = f["x_train"].astype("float32") / 255.0, f["y_train"]
        x_test, y_test = f["x_test"].astype("float32") / 255.0, f["y_test"]
    layers = [getattr(keras.layers, s["type"])(**{k: v for k, v in s.items() if k != "type"})
              for s in spec["layers"]]
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), *layers])
    opt = spec["optimizer"]
    model.compile(optimizer=getattr(keras.optimizers, opt["type"])(learning_rate=opt["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class EpochTimer(keras.callbacks.Callback):
        seconds: list = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t0)

    timer = EpochTimer()
    timer.seconds = []
    model.fit(x_train, y_train, batch_size=spec["batch_size"], epochs=epochs, callbacks=[timer], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return {"epoch_seconds": timer.seconds, "examples_per_epoch": len(x_train), "test_accuracy": float(accuracy),
            "precision": "float32"}


def cnncli_config(name: str, epochs: int, data: Path, precision: str, seed: int = 42) -> dict:
    spec = MODELS[name]
    return {"name": f"bench-{name}", "seed": seed,
            "data": {"dataset": "npz", "path": str(data), "validation_split": 0.0},
            "model": {"input_shape": [28, 28, 1], "layers": spec["layers"]},
            "train": {"epochs": epochs, "batch_size": spec["batch_size"], "optimizer": spec["optimizer"]},
            "runtime": {"precision": precision}}


def read_cnncli_run(run_dir: Path) -> dict:
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = [s for phase in run["phases"] for s in phase.get("epoch_seconds", [])]
    seconds = seconds or [float(r["seconds"]) for r in rows]  # older runs kept them in history.csv
    return {"epoch_seconds": seconds, "examples_per_epoch": run["data"]["train"],
            "test_accuracy": metrics["test"]["accuracy"], "precision": run["runtime"]["precision"],
            "run_json_examples_per_second": run["phases"][0]["examples_per_second"], "threads": run["runtime"]["threads"]}


# ---------------------------------------------------------------- the parent

def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[str, str, float]:
    """Run one side; its stdout, stderr and peak resident memory in MB (this child's own ru_maxrss)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{stderr[-3000:]}")
    return stdout, stderr, usage.ru_maxrss / 1024  # Linux reports kilobytes


def steady(result: dict) -> float:
    """Images/s over epochs 2..N (all epochs when there is only one)."""
    seconds = result["epoch_seconds"][1:] or result["epoch_seconds"]
    return result["examples_per_epoch"] * len(seconds) / sum(seconds)


def bench_model(name: str, mode: str, args, work: Path) -> list[dict]:
    """One row per cnncli precision, each against the same plain `fit` run."""
    epochs, train = MODELS[name][mode]
    epochs = args.epochs or epochs
    train = min(args.train_examples or train, 60000)
    data = work / f"{name}.npz"
    write_data(Path(args.data), train, TEST_EXAMPLES[mode], data)
    here = Path(__file__).resolve()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out, _, plain_rss = run_child([sys.executable, str(here), "--side", "plain", "--models", name,
                                   "--epochs", str(epochs), "--data-file", str(data)], args.timeout, env)
    plain = json.loads(out.strip().splitlines()[-1])
    plain_ips = steady(plain)
    import yaml

    rows = []
    for precision in args.precision.split(","):
        if any(r["cnncli"]["precision"] == precision for r in rows):
            continue  # `auto` already resolved to it
        config = work / f"{name}-{precision}.yaml"
        config.write_text(yaml.safe_dump(cnncli_config(name, epochs, data, precision, args.seed), sort_keys=False))
        sets = [item for s in args.set for item in ("--set", s)]
        out, _, cnncli_rss = run_child([args.cnn, "train", str(config), "--output", str(work / "runs"), "--json",
                                        *sets], args.timeout, env)
        cnn = read_cnncli_run(Path(json.loads(out)["run_dir"]))
        cnn_ips = steady(cnn)
        rows.append({"model": name, "epochs": epochs, "train_examples": train, "test_examples": TEST_EXAMPLES[mode],
                     "batch_size": MODELS[name]["batch_size"],
                     "plain": {**plain, "images_per_second": round(plain_ips, 1), "peak_rss_mb": round(plain_rss, 1)},
                     "cnncli": {**cnn, "images_per_second": round(cnn_ips, 1), "peak_rss_mb": round(cnncli_rss, 1)},
                     "speedup": round(cnn_ips / plain_ips, 2),
                     "accuracy_difference_points": round(100 * (cnn["test_accuracy"] - plain["test_accuracy"]), 2)})
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':8} {'batch':>5} {'epochs':>6} {'train':>6} | {'fit img/s':>10} {'cnncli img/s':>12} "
            f"{'ratio':>6} | {'fit acc':>7} {'cnncli acc':>10} {'Δ pts':>6} | {'fit MB':>7} {'cnncli MB':>9} | precision")
    print(head)
    print("-" * len(head))
    for r in rows:
        p, c = r["plain"], r["cnncli"]
        print(f"{r['model']:8} {r['batch_size']:>5} {r['epochs']:>6} {r['train_examples']:>6} | "
              f"{p['images_per_second']:>10,.0f} {c['images_per_second']:>12,.0f} {r['speedup']:>5.2f}× | "
              f"{p['test_accuracy']:>7.4f} {c['test_accuracy']:>10.4f} {r['accuracy_difference_points']:>+6.2f} | "
              f"{p['peak_rss_mb']:>7.0f} {c['peak_rss_mb']:>9.0f} | {c['precision']}")
    print("images/s over epochs 2..N (steps only); peak RSS of each process; same data, model, optimizer, "
          "batch and epochs on both sides.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples and epochs: one to two minutes on 2 cores")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--epochs", type=int, help="override every model's epochs (at least 2)")
    parser.add_argument("--train-examples", type=int, help="override every model's training examples")
    parser.add_argument("--precision", default="auto",
                        help="cnncli's runtime.precision; a comma-separated list adds a row each, "
                             "e.g. auto,float32 (default auto)")
    parser.add_argument("--seed", type=int, default=42,
                        help="cnncli's seed (fit is unseeded, as a course runs it): vary it to see accuracy spread")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="passed to cnn train, e.g. --set runtime.intra_op_threads=1 (repeatable)")
    parser.add_argument("--data", default=str(FASHION_MNIST), help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--cnn", default=str(Path(sys.executable).with_name("cnn")), help="the cnn executable")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each side of each model")
    parser.add_argument("--side", choices=["plain"], help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.epochs is not None and args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch (tracing) is left out of the timing")
    if args.side == "plain":
        print(json.dumps(plain_side(names[0], args.epochs, Path(args.data_file))))
        return 0
    if not (Path(args.data) / "train-images-idx3-ubyte.gz").exists():
        parser.error(f"no Fashion-MNIST IDX files in {args.data}; install dataset-fashion-mnist or pass --data")
    mode = "quick" if args.quick else "full"
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnncli-bench-") as tmp:
        for name in names:
            rows += bench_model(name, mode, args, Path(tmp))
            if not args.json:
                print(f"{name}: fit {rows[-1]['plain']['images_per_second']:,.0f} img/s, "
                      f"cnncli {rows[-1]['cnncli']['images_per_second']:,.0f} img/s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"mode": mode, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                          "models": rows}, indent=2))
    else:
        print_table(rows)
        print(f"load average during the run: {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
              f"on {os.cpu_count()} cores (other processes slow both sides)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
