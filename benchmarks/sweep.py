"""A 16-trial sweep on Fashion-MNIST: best trial vs the untuned config, pruned trials, overhead per trial.

    python benchmarks/sweep.py                  # 16 trials, TPE sampler, median pruner
    python benchmarks/sweep.py --trials 4 --limit 1000 --epochs 2   # a quick look

A small CNN (two convolutions, dropout, softmax) on a slice of Fashion-MNIST
(`data.limit` examples per split). The untuned config is trained first, by the
same job, in the same process; then `cnn tune`'s sweep searches the learning
rate, the first convolution's filters and the dropout rate. Printed: the best
trial's test accuracy beside the untuned one's, how many trials were pruned,
and the time per trial that is not training steps (data, build, tracing,
validation, test evaluation, saving, plots, study bookkeeping).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = """\
name: fashion-small
seed: 11
data:
  dataset: fashion_mnist
  validation_split: 0.2
  limit: {limit}
model:
  layers:
    - {{type: Conv2D, filters: 16, kernel_size: 3, activation: relu}}
    - {{type: MaxPooling2D, pool_size: 2}}
    - {{type: Conv2D, filters: 32, kernel_size: 3, activation: relu}}
    - {{type: MaxPooling2D, pool_size: 2}}
    - {{type: Flatten}}
    - {{type: Dropout, rate: 0.25}}
    - {{type: Dense, units: 10, activation: softmax}}
train:
  epochs: {epochs}
  batch_size: 64
  optimizer: {{type: Adam, learning_rate: 0.001}}  # the untuned default: Adam's own rate
runtime:
  precision: float32
search:
  trials: {trials}
  metric: val_accuracy
  sampler: tpe
  pruner: median
  params:
    train.optimizer.learning_rate: {{loguniform: [0.00003, 0.03]}}
    model.layers[0].filters: {{int: [8, 48], step: 8}}
    model.layers[5].rate: {{uniform: [0.0, 0.6]}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--limit", type=int, default=5000, help="examples per split")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="keep the sweep here instead of a temporary folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter
    from cnncli.tune.report import best_trial
    from cnncli.tune.sweep import TuneOptions, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        config = work / "fashion-small.yaml"
        config.write_text(CONFIG.format(limit=args.limit, epochs=args.epochs, trials=args.trials))

        t0 = time.perf_counter()
        untuned = run_training(TrainOptions(config=config, output=work / "untuned"), Reporter())
        untuned_wall = time.perf_counter() - t0

        t0 = time.perf_counter()
        sweep = run_sweep(TuneOptions(config=config, output=work / "sweep"),
                          on_trial=lambda o: print(f"trial {o.number:>2} {o.state:<8} {o.value or 0:.4f} "
                                                   f"{o.seconds:5.1f}s {o.params}", file=sys.stderr, flush=True))
        sweep_wall = time.perf_counter() - t0
        with open(sweep.dir / "trials.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        best = best_trial(sweep)
        best_metrics = json.loads((sweep.dir / best.user_attrs["run_dir"] / "metrics.json").read_text())
        overhead = {state: [float(r["seconds"]) - float(r["train_seconds"]) for r in rows if r["state"] == state]
                    for state in ("COMPLETE", "PRUNED")}
        every = overhead["COMPLETE"] + overhead["PRUNED"]
        result = {
            "trials": len(rows), "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "failed": sum(r["state"] == "FAIL" for r in rows),
            "untuned_test_accuracy": untuned.metrics["test"]["accuracy"],
            "best_test_accuracy": best_metrics["test"]["accuracy"],
            "best_val_accuracy": best.value, "best_params": best.params,
            "overhead_seconds_per_trial_median": round(statistics.median(every), 2),
            "overhead_seconds_per_trial_mean": round(statistics.mean(every), 2),
            "overhead_seconds_complete_median": _median(overhead["COMPLETE"]),
            "overhead_seconds_pruned_median": _median(overhead["PRUNED"]),
            "trial_seconds_mean": round(statistics.mean(float(r["seconds"]) for r in rows), 2),
            "untuned_wall_seconds": round(untuned_wall, 1), "sweep_wall_seconds": round(sweep_wall, 1),
            "examples_per_split": args.limit, "epochs": args.epochs,
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Fashion-MNIST, {args.limit} examples per split, {args.epochs} epochs, {result['trials']} trials "
          f"(TPE, median pruning), one process")
    print(f"  untuned config   test accuracy {result['untuned_test_accuracy']:.4f}   ({untuned_wall:.0f}s)")
    print(f"  best trial       test accuracy {result['best_test_accuracy']:.4f}   "
          f"(val {best.value:.4f}; {best.params})")
    print(f"  pruned trials    {result['pruned']} of {result['trials']}   failed {result['failed']}")
    print(f"  overhead/trial   median {result['overhead_seconds_per_trial_median']:.2f}s, "
          f"mean {result['overhead_seconds_per_trial_mean']:.2f}s (trial wall time minus training steps; "
          f"target <= 2 s)")
    print(f"                   complete trials median {result['overhead_seconds_complete_median']}s "
          f"(with test evaluation, model.keras, curves and confusion matrix PNGs); "
          f"pruned trials median {result['overhead_seconds_pruned_median']}s (data, build, tracing, "
          f"validation, checkpoints, study)")
    print(f"  sweep wall time  {sweep_wall:.0f}s, {result['trial_seconds_mean']:.1f}s per trial")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


if __name__ == "__main__":
    main()
