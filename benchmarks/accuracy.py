"""Accuracy of the course configs on real Fashion-MNIST, next to the floors they must reach.

    python benchmarks/accuracy.py            # softmax, MLP and LeNet-style CNN, 5 epochs each
    python benchmarks/accuracy.py --quick    # softmax and MLP only

Each config is trained by `cnn train … --set data.dataset=fashion_mnist --epochs 5`
in a subprocess; the table shows test accuracy, the floor, training time (steps
only, from run.json) and the wall time of the whole command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # config, floor on Fashion-MNIST after 5 epochs (the expected MNIST figure is in the README)
    ("mnist_softmax.yaml", 0.83),
    ("mnist_mlp.yaml", 0.87),
    ("mnist_lenet.yaml", 0.91),
]


def run(config: str, epochs: int, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnncli", "train", str(ROOT / "configs" / config),
                           "--set", "data.dataset=fashion_mnist", "--epochs", str(epochs),
                           "--output", str(out), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr}")
    doc = json.loads(proc.stdout)
    phases = doc["phases"]
    seconds = sum(p["train_seconds"] for p in phases)
    examples = sum(p["examples"] for p in phases)
    return {"config": config, "epochs": epochs, "accuracy": doc["metrics"]["test"]["accuracy"],
            "train_seconds": seconds, "images_per_second": examples / seconds, "wall_seconds": wall,
            "precision": doc["runtime"]["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the CNN")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = CASES[:2] if args.quick else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config, floor in cases:
            row = run(config, args.epochs, Path(tmp))
            row["floor"] = floor
            row["ok"] = row["accuracy"] >= floor
            rows.append(row)
            if not args.json:
                print(f"{config:<20} {row['epochs']} epochs  test accuracy {row['accuracy']:.4f}  "
                      f"(floor {floor:.2f}, {'ok' if row['ok'] else 'BELOW'})  "
                      f"train {row['train_seconds']:6.1f}s  {row['images_per_second']:9,.0f} img/s  "
                      f"wall {row['wall_seconds']:6.1f}s  {row['precision']}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
