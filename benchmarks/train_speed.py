"""Training speed: cnncli's trainer against plain Keras `model.fit` and a plain PyTorch loop, on Fashion-MNIST.

For each of the four seed models of the course (softmax regression, an MLP,
a small CNN, the LeNet-style CNN with a 1024-unit layer) it trains the same
model, optimizer, batch size and epochs on each side, each in its own process:

* plain: the recipe a course writes — `keras.Sequential`, pixels divided by
  255 into a float32 NumPy array, `model.compile(...)`, `model.fit(x, y,
  batch_size, epochs)` (shuffled, no validation), float32;
* cnncli: `cnn train` on a config written to a temporary directory
  (validation_split 0, precision `auto`, everything else as a user gets it);
* torch: a plain PyTorch loop (`nn.Sequential`, the split in memory as a
  uint8 tensor, a shuffled index per epoch, `batch.float() / 255`, zero_grad,
  backward, step), float32. PyTorch's OpenMP threads collapse when other
  processes hold the cores, so it runs with its default threads and with one,
  and the faster counts. Optional: `pip install torch --index-url
  https://download.pytorch.org/whl/cpu` (the side is skipped without it).

Know the limit: the same run measures the machine's float32 matmul peak (a
large `tf.linalg.matmul`, every core) and each model's training FLOPs per image
(2 × 3 × the forward multiply-adds: forward, input gradient, weight gradient,
less the first layer's input gradient, which nobody computes), and prints each
side's achieved GFLOP/s and its fraction of that peak. It prints the CPU model
and ISA flags it ran on; `--out FILE.json` keeps the table for
benchmarks/results/. `--emulate-avx2` caps every side at AVX2 float32 kernels
(ONEDNN_MAX_CPU_ISA=AVX2 for TensorFlow's and PyTorch's oneDNN,
ATEN_CPU_CAPABILITY=avx2 and MKL_ENABLE_INSTRUCTIONS=AVX2 for PyTorch's own
kernels): an AVX2 machine without bfloat16, on a newer CPU.

Both read the same examples, from one .npz file written here.

Fairness of the timing: images/s is measured over epochs 2..N on every side,
so no side pays for tracing its graph. For `fit`, a callback times each epoch
from on_epoch_begin to on_epoch_end (the first includes the trace of Keras's
train function); for cnncli, run.json's per-epoch `epoch_seconds` (training
steps only; the first includes the trace of the multi-step tf.function); for
PyTorch, its loop's own clock around each epoch. Two more figures say what a
short run pays for its start: "whole" is images/s over every epoch, the first
included, and "1st ep+s" (first-epoch cost) is the first epoch's seconds less
the median of epochs 2..N. Neither counts what happens before the first epoch
or after the last (imports, loading, building; evaluation and saving): the
JSON keeps each child's wall time from start to exit as `process_seconds`,
which for cnncli also covers its run directory (checkpoints, model.keras,
plots). Test accuracy is each model's
on the same test images after the same epochs. Peak memory is the peak
resident set of each process (os.wait4's ru_maxrss). Runs on a busy machine
are noisy: the figures are indicative; repeat and compare ratios. One run's
test accuracy varies with the initial weights by a few tenths of a point
(`fit` is unseeded, as a course runs it; cnncli's seed is --seed, 42).

    python benchmarks/train_speed.py --quick          # a few minutes on 2 cores
    python benchmarks/train_speed.py --models lenet   # one model, full length
    python benchmarks/train_speed.py --quick --emulate-avx2 --out benchmarks/results/avx2.json
    python benchmarks/train_speed.py --quick --models lenet,cnn --rounds 2   # sides take turns, best of 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
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


def torch_side(name: str, epochs: int, data: Path, threads: int) -> dict:
    """A plain PyTorch loop: the split in memory, a shuffled index per epoch, float32."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = MODELS[name]
    with np.load(data) as f:
        x_train = torch.from_numpy(f["x_train"]).permute(0, 3, 1, 2).contiguous()  # NCHW, PyTorch's layout
        y_train = torch.from_numpy(f["y_train"].astype(np.int64))
        x_test = torch.from_numpy(f["x_test"]).permute(0, 3, 1, 2).contiguous()
        y_test = torch.from_numpy(f["y_test"].astype(np.int64))
    layers, shape = [], (1, 28, 28)  # (channels, height, width)
    for s in spec["layers"]:
        kind = s["type"]
        if kind == "Conv2D":
            k, pad = s["kernel_size"], (s["kernel_size"] // 2 if s.get("padding") == "same" else 0)
            layers += [nn.Conv2d(shape[0], s["filters"], k, padding=pad), nn.ReLU()]
            shape = (s["filters"], shape[1] + 2 * pad - k + 1, shape[2] + 2 * pad - k + 1)
        elif kind == "MaxPooling2D":
            layers.append(nn.MaxPool2d(s["pool_size"], s.get("strides", s["pool_size"])))
            shape = (shape[0], shape[1] // s["pool_size"], shape[2] // s["pool_size"])
        elif kind == "Dropout":
            layers.append(nn.Dropout(s["rate"]))
        elif kind == "Flatten":
            layers.append(nn.Flatten())
            shape = (int(np.prod(shape)),)
        elif kind == "Dense":
            layers.append(nn.Linear(shape[0], s["units"]))
            if s.get("activation") == "relu":
                layers.append(nn.ReLU())
            shape = (s["units"],)  # softmax: inside CrossEntropyLoss
    model = nn.Sequential(*layers)
    opt = spec["optimizer"]
    optimizer = getattr(torch.optim, opt["type"])(model.parameters(), lr=opt["learning_rate"])
    loss_fn = nn.CrossEntropyLoss()
    batch, seconds = spec["batch_size"], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train))
        for lo in range(0, len(x_train), batch):
            idx = order[lo:lo + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx].float() / 255.0), y_train[idx])
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_test[lo:lo + 256].float() / 255.0).argmax(1) == y_test[lo:lo + 256]).sum())
                      for lo in range(0, len(x_test), 256))
    return {"epoch_seconds": seconds, "examples_per_epoch": len(x_train), "test_accuracy": correct / len(x_test),
            "precision": "float32", "threads": torch.get_num_threads()}


def matmul_peak(size: int = 2048, repeats: int = 12) -> dict:
    """The best of `repeats` float32 size×size matmuls on every core, in GFLOP/s (other processes
    only ever lower it: the parent keeps the best of several of these, spread over the run)."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    tf.linalg.matmul(a, b).numpy()  # warm up: oneDNN picks and builds its kernel
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return {"size": size, "gflops": round(2 * size**3 / best / 1e9, 1)}


def training_flops(name: str) -> int:
    """FLOPs per training image: 2 × (forward + input gradient + weight gradient) multiply-adds,
    without the first weighted layer's input gradient (the input needs none)."""
    from cnncli.config.schema import Config
    from cnncli.train.decisions import model_macs

    def macs(layers):
        cfg = Config(**{**cnncli_config(name, 1, Path("x.npz"), "float32"),
                        "model": {"input_shape": [28, 28, 1], "layers": layers}})
        return model_macs(cfg)

    layers = MODELS[name]["layers"]
    first = next(i for i, s in enumerate(layers) if s["type"] in ("Conv2D", "Dense"))
    return 2 * (3 * macs(layers) - macs(layers[:first + 1]))


def cpu_description() -> dict:
    from cnncli.train.decisions import read_cpu

    cpu = read_cpu()
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8")
    return {**cpu.as_json(), "flags": [f for f in wanted if f in cpu.flags]}


EMULATE_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

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
            "run_json_examples_per_second": run["phases"][0]["examples_per_second"],
            "threads": run["runtime"]["threads"]}


# ---------------------------------------------------------------- the parent

def finish(report: dict, args, show, load_before: tuple[float, ...], caution: str) -> int:
    """Write the report to --out, print it (--json, else `show`'s table and the load average), return 0."""
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
        print(f"load average before / after: {' '.join(f'{v:.1f}' for v in load_before)} / "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores ({caution})")
    return 0


def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[str, str, float, float]:
    """Run one side; its stdout, stderr, peak resident memory in MB (this child's own ru_maxrss) and wall
    seconds from start to exit (imports, data, build, training, evaluation, whatever the side writes)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
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
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{stderr[-3000:]}")
    return stdout, stderr, usage.ru_maxrss / 1024, wall  # Linux reports kilobytes


def steady(result: dict) -> float:
    """Images/s over epochs 2..N (all epochs when there is only one)."""
    seconds = result["epoch_seconds"][1:] or result["epoch_seconds"]
    return result["examples_per_epoch"] * len(seconds) / sum(seconds)


def whole(result: dict) -> float:
    """Images/s over every epoch, the first (tracing, first calls) included."""
    seconds = result["epoch_seconds"]
    return result["examples_per_epoch"] * len(seconds) / sum(seconds)


def first_epoch_cost(result: dict) -> float | None:
    """Seconds the first epoch took beyond a steady one (the median of epochs 2..N); None with one epoch."""
    seconds = result["epoch_seconds"]
    return float(seconds[0] - np.median(seconds[1:])) if len(seconds) > 1 else None


def _side(result: dict, rss: float, flops: int, wall: float) -> dict:
    ips, cost = steady(result), first_epoch_cost(result)
    return {**result, "images_per_second": round(ips, 1), "whole_run_images_per_second": round(whole(result), 1),
            "first_epoch_cost_seconds": None if cost is None else round(cost, 3),
            "process_seconds": round(wall, 2), "peak_rss_mb": round(rss, 1), "gflops": round(ips * flops / 1e9, 2)}


def _best(tries: list[dict]) -> dict:
    """The fastest of a side's runs (other processes only ever slow a run down), with every run's figure."""
    best = dict(max(tries, key=lambda t: t["images_per_second"]))
    best["runs_images_per_second"] = [t["images_per_second"] for t in tries]
    best["runs_first_epoch_cost_seconds"] = [t["first_epoch_cost_seconds"] for t in tries]
    return best


def bench_model(name: str, mode: str, args, work: Path, env: dict) -> list[dict]:
    """One row per cnncli precision, each against the same `fit` and PyTorch runs.

    With --rounds N every side runs N times, the sides taking turns, and each
    keeps its fastest run: on a shared machine a side that happened to run
    while another job held a core is not compared as if it had the machine.
    """
    epochs, train = MODELS[name][mode]
    epochs = args.epochs or epochs
    train = min(args.train_examples or train, 60000)
    data = work / f"{name}.npz"
    write_data(Path(args.data), train, TEST_EXAMPLES[mode], data)
    flops = training_flops(name)
    here = Path(__file__).resolve()
    child = [sys.executable, str(here), "--models", name, "--epochs", str(epochs), "--data-file", str(data)]
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    precisions = list(dict.fromkeys(args.precision.split(",")))
    import yaml

    sets = [item for s in args.set for item in ("--set", s)]
    tries: dict[str, list[dict]] = defaultdict(list)
    for _ in range(args.rounds):
        out, _, rss, wall = run_child([*child, "--side", "plain"], args.timeout, env)
        tries["plain"].append(_side(json.loads(out.strip().splitlines()[-1]), rss, flops, wall))
        for threads in ((0, 1) if with_torch else ()):  # 0: PyTorch's default (every core)
            out, _, rss, wall = run_child([*child, "--side", "torch", "--torch-threads", str(threads)], args.timeout,
                                          env)
            tries["torch"].append(_side(json.loads(out.strip().splitlines()[-1]), rss, flops, wall))
        for precision in precisions:
            config = work / f"{name}-{precision}.yaml"
            config.write_text(yaml.safe_dump(cnncli_config(name, epochs, data, precision, args.seed), sort_keys=False))
            out, _, rss, wall = run_child([args.cnn, "train", str(config), "--output", str(work / "runs"), "--json",
                                           *sets], args.timeout, env)
            tries[precision].append(_side(read_cnncli_run(Path(json.loads(out)["run_dir"])), rss, flops, wall))
    plain = _best(tries["plain"])
    torch = _best(tries["torch"]) if with_torch else None
    rows = []
    for precision in precisions:
        cnn = _best(tries[precision])
        if any(r["cnncli"]["precision"] == cnn["precision"] for r in rows):
            continue  # `auto` resolved to a precision already in the table
        rows.append({"model": name, "epochs": epochs, "train_examples": train, "test_examples": TEST_EXAMPLES[mode],
                     "batch_size": MODELS[name]["batch_size"], "training_flops_per_image": flops,
                     "plain": plain, "torch": torch, "cnncli": cnn,
                     "speedup": round(cnn["images_per_second"] / plain["images_per_second"], 2),
                     "speedup_vs_torch": (round(cnn["images_per_second"] / torch["images_per_second"], 2)
                                          if torch else None),
                     "speedup_whole": round(cnn["whole_run_images_per_second"] / plain["whole_run_images_per_second"],
                                            2),
                     "speedup_whole_vs_torch": (round(cnn["whole_run_images_per_second"]
                                                      / torch["whole_run_images_per_second"], 2) if torch else None),
                     "accuracy_difference_points": round(100 * (cnn["test_accuracy"] - plain["test_accuracy"]), 2)})
    return rows


def print_table(report: dict) -> None:
    cpu = report["cpu"]
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags'])}; oneDNN runs {cpu['isa']}"
          + (f" (capped by ONEDNN_MAX_CPU_ISA={cpu['onednn_max_cpu_isa']})" if cpu["onednn_max_cpu_isa"] else ""))
    print(f"float32 matmul peak ({report['matmul']['size']}², every core, best of "
          f"{' '.join(f'{g:.0f}' for g in report['matmul']['measurements'])}): "
          f"{report['matmul']['gflops']:.1f} GFLOP/s")
    head = (f"{'model':8} {'batch':>5} {'MFLOP/img':>9} | {'side':22} {'img/s':>8} {'GFLOP/s':>8} {'of peak':>7} "
            f"{'whole':>8} {'1st ep+s':>8} {'test acc':>8} {'MB':>5} | {'cnncli ÷':>8}")
    print(head)
    print("-" * len(head))
    for r in rows_of(report):
        mflop = r["training_flops_per_image"] / 1e6
        sides = [("fit", r["plain"], r["speedup"], r.get("speedup_whole")),
                 ("torch", r["torch"], r["speedup_vs_torch"], r.get("speedup_whole_vs_torch")),
                 ("cnncli", r["cnncli"], None, None)]
        for i, (label, side, ratio, whole_ratio) in enumerate(sides):
            if side is None:
                continue
            lead = f"{r['model']:8} {r['batch_size']:>5} {mflop:>9.2f}" if i == 0 else " " * 24
            label = f"cnncli {side['precision']}" if label == "cnncli" else label
            cost = side.get("first_epoch_cost_seconds")
            print(f"{lead} | {label:22} {side['images_per_second']:>8,.0f} {side['gflops']:>8.1f} "
                  f"{100 * side['fraction_of_peak']:>6.1f}% {side.get('whole_run_images_per_second', 0):>8,.0f} "
                  + (f"{cost:>8.2f}" if cost is not None else f"{'':>8}")
                  + f" {side['test_accuracy']:>8.4f} "
                  f"{side['peak_rss_mb']:>5.0f} | "
                  + (f"{ratio:>7.2f}×" if ratio else "")
                  + (f" ({whole_ratio:.2f}× whole)" if ratio and whole_ratio else ""))
    print("img/s over epochs 2..N (steps only); whole: img/s over every epoch, the first's tracing included; "
          "1st ep+s: seconds the first epoch took beyond the median of epochs 2..N.")
    print("GFLOP/s = img/s × training FLOPs per image; peak RSS of "
          "each process; same data, model, optimizer, batch and epochs on every side; each side's fastest run "
          f"of {report['rounds']} (PyTorch: with its default threads and with one).")


def rows_of(report: dict) -> list[dict]:
    return report["models"]


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
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="cap every side at AVX2 float32 kernels (ONEDNN_MAX_CPU_ISA=AVX2, ...)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch side")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every side this many times, taking turns, and keep each side's fastest run")
    parser.add_argument("--out", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--side", choices=["plain", "torch", "peak"], help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--torch-threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.epochs is not None and args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch (tracing) is left out of the timing")
    if args.side == "plain":
        print(json.dumps(plain_side(names[0], args.epochs, Path(args.data_file))))
        return 0
    if args.side == "torch":
        print(json.dumps(torch_side(names[0], args.epochs, Path(args.data_file), args.torch_threads)))
        return 0
    if args.side == "peak":
        print(json.dumps(matmul_peak()))
        return 0
    if not (Path(args.data) / "train-images-idx3-ubyte.gz").exists():
        parser.error(f"no Fashion-MNIST IDX files in {args.data}; install dataset-fashion-mnist or pass --data")
    mode = "quick" if args.quick else "full"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(EMULATE_AVX2 if args.emulate_avx2 else {})}
    os.environ.update(EMULATE_AVX2 if args.emulate_avx2 else {})  # cpu_description() reads the cap
    load_before = os.getloadavg()

    def measure_peak() -> dict:
        out, _, _, _ = run_child([sys.executable, str(Path(__file__).resolve()), "--side", "peak"], args.timeout, env)
        return json.loads(out.strip().splitlines()[-1])

    peaks = [measure_peak()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnncli-bench-") as tmp:
        for name in names:
            rows += bench_model(name, mode, args, Path(tmp), env)
            peaks.append(measure_peak())
            r = rows[-1]
            torch = f", torch {r['torch']['images_per_second']:,.0f}" if r["torch"] else ""
            print(f"{name}: fit {r['plain']['images_per_second']:,.0f}{torch}, "
                  f"cnncli {r['cnncli']['images_per_second']:,.0f} img/s (steady); first epoch +"
                  f"{r['cnncli']['first_epoch_cost_seconds']} s for cnncli", file=sys.stderr, flush=True)
    peak = {"size": peaks[0]["size"], "gflops": max(p["gflops"] for p in peaks),
            "measurements": [p["gflops"] for p in peaks]}
    for row in rows:
        for side in (row["plain"], row["torch"], row["cnncli"]):
            if side is not None:
                side["fraction_of_peak"] = round(side["gflops"] / peak["gflops"], 3)
    report = {"mode": mode, "rounds": args.rounds, "cpu": cpu_description(), "emulated_avx2": args.emulate_avx2,
              "matmul": peak,
              "load_average": {"before": load_before, "after": os.getloadavg()},
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": rows}
    return finish(report, args, print_table, load_before, "other processes slow every side")


if __name__ == "__main__":
    sys.exit(main())
