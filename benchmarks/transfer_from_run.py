"""Does `model.backbone.from_run` pay off? Pretrained-on-Fashion-MNIST vs the same network from scratch.

1. Pretrain configs/fashion_pretrain.yaml on Fashion-MNIST (`--pretrain-limit`
   training images, `--pretrain-epochs` epochs).
2. Write a small image folder (PNG files) of a task the source never saw as
   such: the four kinds of top (T-shirt, pullover, coat, shirt — the classes
   Fashion-MNIST models confuse most), `--per-class` training images each,
   taken from the Fashion-MNIST test split, which pretraining never trains on.
3. Train, with the same budget (epochs, batch size, optimizer, seed):
   - transfer: configs/from_run/fashion_transfer.yaml, i.e. the source's layers
     up to fc_dense, frozen, then fine-tuned with layer_lr_decay, plus a new head;
   - scratch: the same layers and head, randomly initialised, all trainable.
4. Report test accuracy of both, per seed.

    python benchmarks/transfer_from_run.py [--seeds 1 2 3] [--per-class 10] [--json]

tests/test_transfer_from_run.py runs `compare` with a small budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
TOPS = {0: "tshirt", 2: "pullover", 4: "coat", 6: "shirt"}  # Fashion-MNIST label -> folder name
# The source's layers up to fc_dense, as configs/fashion_pretrain.yaml writes them: the scratch model.
SOURCE_LAYERS = [
    {"name": "block1_conv", "type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"name": "block1_pool", "type": "MaxPooling2D", "pool_size": 2},
    {"name": "block2_conv", "type": "Conv2D", "filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"name": "block2_pool", "type": "MaxPooling2D", "pool_size": 2},
    {"name": "fc_flatten", "type": "Flatten"},
    {"name": "fc_dense", "type": "Dense", "units": 128, "activation": "relu"},
]


def write_tops_folder(root: Path, per_class: int, test_per_class: int, offset: int = 5000) -> Path:
    """root/train/<kind>/*.png and root/test/<kind>/*.png from the Fashion-MNIST test split (from `offset` on)."""
    from PIL import Image

    from cnncli.data.idx import read_folder

    _, _, x, y = read_folder(FASHION)
    x, y = x[offset:], y[offset:]
    for label, kind in TOPS.items():
        idx = np.flatnonzero(y == label)
        for split, chosen in (("train", idx[:per_class]), ("test", idx[per_class:per_class + test_per_class])):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(x[i].reshape(28, 28)).save(folder / f"{i + offset}.png")
    return root


def _train(config: Path, overrides: list[str], output: Path, name: str):
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    return run_training(TrainOptions(config=config, overrides=overrides, output=output, name=name), Reporter())


def pretrain(output: Path, limit: int, epochs: int, seed: int = 42) -> Path:
    result = _train(REPO / "configs" / "fashion_pretrain.yaml",
                    [f"data.limit={limit}", f"train.epochs={epochs}", f"seed={seed}", "runtime.precision=float32"],
                    output, "fashion-pretrain")
    return result.run_dir


def _budget(head_epochs: int, tune_epochs: int) -> list[str]:
    return [f"train.phases[0].epochs={head_epochs}", f"train.phases[1].epochs={tune_epochs}"]


def compare(source_run: Path, folder: Path, output: Path, seed: int, head_epochs: int = 15,
            tune_epochs: int = 10) -> dict:
    """Test accuracy of transfer and scratch on `folder`, same epochs, batch size, optimizer and seed."""
    import yaml

    common = [f"seed={seed}", "deterministic=true", "data.dataset=image_folder", f"data.path={folder}",
              "data.validation_split=0",
              f"model.layers[-1].units={len(TOPS)}", "runtime.precision=float32"]
    transfer_cfg = REPO / "configs" / "from_run" / "fashion_transfer.yaml"
    started = time.perf_counter()
    transfer = _train(transfer_cfg, common + _budget(head_epochs, tune_epochs) +
                      [f"model.backbone.from_run={source_run}"], output, "transfer")
    transfer_seconds = time.perf_counter() - started

    scratch_doc = yaml.safe_load(transfer_cfg.read_text())
    scratch_doc["name"] = "scratch"
    scratch_doc["model"] = {"layers": SOURCE_LAYERS + scratch_doc["model"]["layers"]}
    train = scratch_doc["train"]
    train["epochs"] = head_epochs + tune_epochs
    train.pop("phases")
    scratch_cfg = output / "scratch.yaml"
    output.mkdir(parents=True, exist_ok=True)
    scratch_cfg.write_text(yaml.safe_dump(scratch_doc, sort_keys=False))
    started = time.perf_counter()
    scratch = _train(scratch_cfg, common, output, "scratch")
    scratch_seconds = time.perf_counter() - started
    return {"seed": seed, "transfer_accuracy": transfer.metrics["test"]["accuracy"],
            "scratch_accuracy": scratch.metrics["test"]["accuracy"],
            "test_examples": transfer.metrics["test"]["examples"],
            "transfer_seconds": round(transfer_seconds, 1), "scratch_seconds": round(scratch_seconds, 1),
            "transfer_run": str(transfer.run_dir), "scratch_run": str(scratch.run_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-class", type=int, default=10, help="training images per class of the target")
    parser.add_argument("--test-per-class", type=int, default=250)
    parser.add_argument("--pretrain-limit", type=int, default=10000)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--head-epochs", type=int, default=15)
    parser.add_argument("--tune-epochs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--write-folder", type=Path, metavar="DIR",
                        help="only write the target image folder to DIR (for configs/from_run/fashion_transfer.yaml)")
    args = parser.parse_args()
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        print(f"{FASHION} is missing (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 1
    if args.write_folder:
        write_tops_folder(args.write_folder, args.per_class, args.test_per_class)
        print(f"wrote {args.write_folder}/train and {args.write_folder}/test")
        return 0
    with tempfile.TemporaryDirectory(prefix="cnncli-transfer-") as tmp:
        tmp = Path(tmp)
        source = pretrain(tmp / "runs", args.pretrain_limit, args.pretrain_epochs)
        source_acc = json.loads((source / "metrics.json").read_text())["test"]["accuracy"]
        folder = write_tops_folder(tmp / "tops", args.per_class, args.test_per_class)
        rows = [compare(source, folder, tmp / "runs", seed, args.head_epochs, args.tune_epochs)
                for seed in args.seeds]
    summary = {"source_test_accuracy": source_acc, "per_class": args.per_class,
               "epochs": args.head_epochs + args.tune_epochs, "runs": rows,
               "mean_transfer_accuracy": statistics.mean(r["transfer_accuracy"] for r in rows),
               "mean_scratch_accuracy": statistics.mean(r["scratch_accuracy"] for r in rows)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"source: fashion_pretrain.yaml, {args.pretrain_limit} images × {args.pretrain_epochs} epochs, "
          f"test accuracy {source_acc:.3f}")
    print(f"target: 4 kinds of top, {args.per_class} training images each, {rows[0]['test_examples']} test images; "
          f"{summary['epochs']} epochs each")
    print(f"{'seed':>4}  {'transfer':>8}  {'scratch':>8}")
    for r in rows:
        print(f"{r['seed']:>4}  {r['transfer_accuracy']:>8.3f}  {r['scratch_accuracy']:>8.3f}")
    print(f"mean  {summary['mean_transfer_accuracy']:>8.3f}  {summary['mean_scratch_accuracy']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
