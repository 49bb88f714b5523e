"""Time to accuracy on Fashion-MNIST: the shipped recipe under `cnn train`, plain Keras `fit` and PyTorch.

    python benchmarks/time_to_accuracy.py                        # the recipe, full length, every side
    python benchmarks/time_to_accuracy.py --epochs 2 --limit 6000 --target 0.8   # a few minutes: the plumbing
    python benchmarks/time_to_accuracy.py --sides cnncli,keras --out benchmarks/results/tta-avx2.json

Every side trains the same architecture with the same augmentation, optimizer,
schedule, loss, batch size and epochs, each in its own process, and is scored
on the same 10,000 test images after every epoch:

* cnncli: `cnn train configs/fashion_resnet.yaml` with only the data redirected
  (below) and `--epochs`;
* keras: the model built from the same config by cnncli's builder (so the
  layers and their initialisers are identical), then Keras alone: the
  augmentation layers in a `tf.data` map with parallel calls, the optimizer and
  `CosineDecay` schedule constructed from the config's arguments, `compile`,
  `fit(validation_data=test)` (with `SwapEMAWeights` when the config asks for
  EMA);
* torch: the same network written in PyTorch (checked to have the same number of
  trainable weights), flip and translation on the batch with `grid_sample`,
  `AdamW` and the warmup-plus-cosine rate of Keras's `CosineDecay` per step,
  `CrossEntropyLoss(label_smoothing)`. Skipped without torch; written for the
  recipe's architecture, so another `--config` runs without it.

How each epoch is scored without giving anyone a head start: cnncli evaluates a
validation split at the end of each epoch, so its data is one .npz whose
70,000 "training" images are the 60,000 training images with the 10,000 test
images placed exactly where `data.validation_split: 1/7` with the run's seed
carves its validation split (cnncli/data/prepare.py `validation_indices`).
It trains on the 60,000 and validates on the test images, in their order. Keras
gets them as `validation_data`, PyTorch evaluates them after each epoch.

With --stop-at-target, Keras and PyTorch stop after their first epoch at the
target: their time to target is the same, their final accuracy is that epoch's
(marked *), and the run takes a fraction of the time. With --give-up-after F
as well, each stops after the first epoch that takes its training time past
F times cnncli's time to target without reaching it: cnncli is then at least
that much sooner (printed as "> F×"), and no side runs longer than it must to
decide the question. The JSON is written after every side, so a run cut short
keeps the sides it finished.

Time to target: the cumulative training time of the epochs up to the first whose
test accuracy reaches `--target` (93% by default), evaluation excluded
(cnncli: run.json's `epoch_seconds`, steps only; Keras: epoch time less the
validation pass, timed by a callback; PyTorch: the loop's own clock). Tracing
and the first chunk count: they are part of a short run's cost. Images/s is
over epochs 2..N. Peak RSS is each process's own (os.wait4's ru_maxrss). The
CPU, its flags and the figures go to `--out` (JSON) for benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from train_speed import FASHION_MNIST, _idx, cpu_description, run_child  # noqa: E402

RECIPE = ROOT / "configs" / "fashion_resnet.yaml"
SIDES = ("cnncli", "keras", "torch")


# ---------------------------------------------------------------- data

def write_data(folder: Path, limit: int | None, seed: int, work: Path) -> tuple[Path, Path, float]:
    """Two archives of the same images: `plain.npz` (train, test) for Keras and PyTorch, and `carved.npz`
    whose training split holds the test images where cnncli's seeded validation carve will take them.

    Returns both paths and the validation fraction that carves exactly the test images."""
    sys.path.insert(0, str(ROOT))
    from cnncli.data.prepare import validation_indices

    x_train = _idx(folder / "train-images-idx3-ubyte.gz")[:limit, :, :, None]
    y_train = _idx(folder / "train-labels-idx1-ubyte.gz")[:limit]
    x_test = _idx(folder / "t10k-images-idx3-ubyte.gz")[:limit, :, :, None]
    y_test = _idx(folder / "t10k-labels-idx1-ubyte.gz")[:limit]
    n = len(x_train) + len(x_test)
    fraction = len(x_test) / n
    train_at, val_at = validation_indices(n, fraction, seed)
    if len(val_at) != len(x_test):
        raise SystemExit(f"the carve takes {len(val_at)} images, not the {len(x_test)} test images")
    x_all = np.empty((n, *x_train.shape[1:]), np.uint8)
    y_all = np.empty(n, y_train.dtype)
    x_all[train_at], y_all[train_at] = x_train, y_train
    x_all[val_at], y_all[val_at] = x_test, y_test
    plain, carved = work / "plain.npz", work / "carved.npz"
    np.savez(plain, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    np.savez(carved, x_train=x_all, y_train=y_all, x_test=x_test, y_test=y_test)
    return plain, carved, fraction


def load_recipe(config: Path, epochs: int | None):
    """The recipe's validated Config (cnncli's loader: extends, blocks and checks as `cnn train` reads them)."""
    sys.path.insert(0, str(ROOT))
    from cnncli.config.loading import load_config

    sets = [f"train.epochs={epochs}"] if epochs else []
    return load_config(config, sets)


def schedule_args(cfg) -> dict:
    """The recipe's learning-rate schedule as Keras's CosineDecay arguments, in steps."""
    spec = cfg.train.lr_schedule
    if spec is None or spec.type not in ("cosine", "CosineDecay") or spec.every != "step":
        raise SystemExit("the benchmark's sides share a per-step cosine schedule: "
                         "train.lr_schedule must be {type: cosine, every: step, ...}")
    return dict(spec.args)


# ---------------------------------------------------------------- the sides (each in a child process)

def keras_side(config: Path, epochs: int | None, data: Path, stop_at: float | None = None,
               give_up: float | None = None) -> dict:
    """Keras alone: tf.data with the augmentation layers, compile, fit with the test images as validation."""
    import keras
    import tensorflow as tf

    from cnncli.config.learning import LOSSES, SCHEDULES, loss_spec
    from cnncli.model.builder import build_checked

    cfg = load_recipe(config, epochs)
    keras.utils.set_random_seed(cfg.seed or 0)
    with np.load(data) as f:
        x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    k = int(y_train.max()) + 1
    model = build_checked(cfg, x_train.shape[1:])
    augment = [getattr(keras.layers, s.type)(**s.args) for s in cfg.data.augment]
    mixes = [layer for layer in augment if type(layer).__name__ in ("MixUp", "CutMix")]

    def augmented(x, y):
        x = tf.cast(x, "float32")
        y = tf.one_hot(y, k)
        for layer in augment:
            if layer in mixes:
                out = layer({"images": x, "labels": y}, training=True)
                x, y = out["images"], out["labels"]
            else:
                x = layer(x, training=True)
        return x, y

    batch = cfg.train.batch_size
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=cfg.seed)
             .batch(batch).map(augmented, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    test = (np.asarray(x_test, "float32"), keras.ops.one_hot(y_test, k))
    opt_args = dict(cfg.train.optimizer.args)
    excluded = opt_args.pop("exclude_from_weight_decay", None)
    rate = SCHEDULES.get(cfg.train.lr_schedule.type)(**schedule_args(cfg))
    optimizer = getattr(keras.optimizers, cfg.train.optimizer.type)(learning_rate=rate, **opt_args)
    if excluded:
        optimizer.exclude_from_weight_decay(var_names=list(excluded))
    name, args = loss_spec(cfg.train.loss)
    loss_cls = LOSSES.get(name)
    if "Sparse" in loss_cls.__name__:  # labels arrive one-hot (mixed when MixUp is on): the categorical form
        loss_cls = keras.losses.CategoricalCrossentropy
    model.compile(optimizer=optimizer, loss=loss_cls(**args), metrics=[keras.metrics.CategoricalAccuracy()])

    class Clock(keras.callbacks.Callback):
        """Each epoch's training time, the validation pass taken out, and the test accuracy it reached."""

        def __init__(self):
            super().__init__()
            self.seconds, self.accuracy = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.evaluating = time.perf_counter(), 0.0

        def on_test_begin(self, logs=None):
            self.t_eval = time.perf_counter()

        def on_test_end(self, logs=None):
            self.evaluating += time.perf_counter() - self.t_eval

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t0 - self.evaluating)
            self.accuracy.append(float(logs["val_categorical_accuracy"]))
            if stop_at is not None and self.accuracy[-1] >= stop_at:
                self.model.stop_training = True  # --stop-at-target: the time to target is known
            elif give_up is not None and sum(self.seconds) >= give_up:
                self.model.stop_training = True  # --give-up-after: past the time that decides it

    clock = Clock()
    callbacks = [clock]
    if opt_args.get("use_ema"):
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    model.fit(train, epochs=cfg.train.epochs, validation_data=test, validation_batch_size=512, verbose=0,
              callbacks=callbacks)
    return {"epoch_seconds": clock.seconds, "test_accuracy_per_epoch": clock.accuracy,
            "examples_per_epoch": len(x_train), "trainable_params": sum(int(np.prod(w.shape))
                                                                        for w in model.trainable_weights)}


def torch_side(config: Path, epochs: int | None, data: Path, stop_at: float | None = None,
               give_up: float | None = None) -> dict:
    """The recipe's network in PyTorch, trained by a plain loop with the same augmentation and schedule."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cfg = load_recipe(config, epochs)
    torch.manual_seed(cfg.seed or 0)
    with np.load(data) as f:
        x_train = torch.from_numpy(f["x_train"]).permute(0, 3, 1, 2).contiguous()
        y_train = torch.from_numpy(f["y_train"].astype(np.int64))
        x_test = torch.from_numpy(f["x_test"]).permute(0, 3, 1, 2).contiguous()
        y_test = torch.from_numpy(f["y_test"].astype(np.int64))
    model = recipe_network(nn, int(y_train.max()) + 1)
    opt = dict(cfg.train.optimizer.args)
    if cfg.train.optimizer.type != "AdamW" or opt.get("use_ema"):
        raise SystemExit("the PyTorch side is written for the recipe: AdamW without EMA")
    decayed, kept = weight_decay_groups(nn, model, opt.get("exclude_from_weight_decay") or [])
    sched = schedule_args(cfg)
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": opt.get("weight_decay", 0.004)},
                                   {"params": kept, "weight_decay": 0.0}],
                                  lr=1.0, betas=(opt.get("beta_1", 0.9), opt.get("beta_2", 0.999)),
                                  eps=opt.get("epsilon", 1e-7))
    rate = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_decay(step, **sched))
    _, loss_args = _loss_args(cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=loss_args.get("label_smoothing", 0.0))
    shift = _translation(cfg)
    batch, seconds, accuracy = cfg.train.batch_size, [], []
    for _ in range(cfg.train.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train))
        for lo in range(0, len(x_train), batch):
            idx = order[lo:lo + batch]
            x = augment_batch(torch, F, x_train[idx].float(), shift)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y_train[idx])
            loss.backward()
            optimizer.step()
            rate.step()
        seconds.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x_test[lo:lo + 512].float()).argmax(1) == y_test[lo:lo + 512]).sum())
                          for lo in range(0, len(x_test), 512))
        accuracy.append(correct / len(x_test))
        if stop_at is not None and accuracy[-1] >= stop_at:
            break  # --stop-at-target: the time to target is known
        if give_up is not None and sum(seconds) >= give_up:
            break  # --give-up-after: past the time that decides it
    return {"epoch_seconds": seconds, "test_accuracy_per_epoch": accuracy, "examples_per_epoch": len(x_train),
            "trainable_params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def recipe_network(nn, classes: int):
    """configs/fashion_resnet.yaml in PyTorch: a conv-BN stem, two residual stages with 1×1 projections,
    global average pooling, dropout, a linear classifier. Pixels arrive 0..255, as the config's Rescaling."""

    def conv_bn(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3,
                                                                                            momentum=0.01))

    class Residual(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.a, self.b = conv_bn(cin, cout), conv_bn(cout, cout)
            self.proj = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return nn.functional.relu(self.proj(x) + self.b(nn.functional.relu(self.a(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 32)
            self.stage1, self.stage2 = Residual(32, 64), Residual(64, 128)
            self.drop, self.classifier = nn.Dropout(0.2), nn.Linear(128, classes)

        def forward(self, x):
            x = nn.functional.max_pool2d(nn.functional.relu(self.stem(x / 255.0)), 2)
            x = nn.functional.max_pool2d(self.stage1(x), 2)
            x = self.stage2(x).mean((2, 3))
            return self.classifier(self.drop(x))

    net = Net()
    for name, module in net.named_modules():  # Keras's initialisers: he_normal where the recipe says so
        if isinstance(module, nn.Conv2d):
            init = nn.init.xavier_uniform_ if name.endswith("proj") else nn.init.kaiming_normal_
            init(module.weight)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def weight_decay_groups(nn, model, excluded: list[str]) -> tuple[list, list]:
    """(decayed, not decayed) parameters, as Keras's `exclude_from_weight_decay(var_names=...)` splits them:
    `bias` names every bias, `gamma` and `beta` a batch norm's scale and offset."""
    decayed, kept = [], []
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            keras_name = pname
            if isinstance(module, nn.BatchNorm2d):
                keras_name = "gamma" if pname == "weight" else "beta"
            (kept if any(s in keras_name for s in excluded) else decayed).append(param)
    return decayed, kept


def _loss_args(cfg) -> tuple[str, dict]:
    from cnncli.config.learning import loss_spec

    return loss_spec(cfg.train.loss)


def _translation(cfg) -> tuple[float, float]:
    """RandomTranslation's (height, width) factors in the recipe's augmentation, 0 without it."""
    for spec in cfg.data.augment:
        if spec.type == "RandomTranslation":
            return float(spec.args["height_factor"]), float(spec.args.get("width_factor", spec.args["height_factor"]))
    return 0.0, 0.0


def augment_batch(torch, F, x, shift: tuple[float, float]):
    """A horizontal flip for half the images and a shift of up to `shift` of each side, zeros filling in,
    bilinear (what Keras's RandomFlip and RandomTranslation with fill_mode constant do)."""
    n = x.shape[0]
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if shift == (0.0, 0.0):
        return x
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = (torch.rand(n) * 2 - 1) * shift[1] * 2  # grid units: the image spans [-1, 1]
    theta[:, 1, 2] = (torch.rand(n) * 2 - 1) * shift[0] * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cosine_decay(step: int, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 warmup_target: float | None = None, warmup_steps: int = 0, name: str | None = None) -> float:
    """keras.optimizers.schedules.CosineDecay's rate at `step`, for PyTorch's LambdaLR (base rate 1)."""
    if warmup_target is not None and step < warmup_steps:
        return initial_learning_rate + (warmup_target - initial_learning_rate) * step / warmup_steps
    peak = initial_learning_rate if warmup_target is None else warmup_target
    done = min(step - (warmup_steps if warmup_target is not None else 0), decay_steps) / decay_steps
    return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * done)) + alpha)


# ---------------------------------------------------------------- cnncli (a subprocess of `cnn train`)

def cnncli_side(args, carved: Path, fraction: float, work: Path) -> tuple[dict, float]:
    sets = ["data.dataset=npz", f"data.path={carved}", f"data.validation_split={fraction!r}", "data.limit=null"]
    cmd = [args.cnn, "train", str(args.config), "--output", str(work / "runs"), "--json"]
    cmd += [item for s in sets for item in ("--set", s)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    out, _, rss, _ = run_child(cmd, args.timeout)
    run_dir = Path(json.loads(out)["run_dir"])
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    run = json.loads((run_dir / "run.json").read_text())
    seconds = [s for phase in run["phases"] for s in phase["epoch_seconds"]]
    test = json.loads((run_dir / "metrics.json").read_text()).get("test", {})
    return {"epoch_seconds": seconds, "test_accuracy_per_epoch": [float(r["val_accuracy"]) for r in rows],
            "test_accuracy_tta": test.get("tta", {}).get("accuracy"), "tta": test.get("tta", {}).get("mode"),
            "examples_per_epoch": run["data"]["train"], "trainable_params": run["trainable_params"],
            "precision": run["runtime"]["precision"], "threads": run["runtime"]["threads"]}, rss


# ---------------------------------------------------------------- the parent

def summarise(result: dict, rss: float, target: float) -> dict:
    """Time to target (None when never reached), final accuracy, steady images/s, peak RSS."""
    elapsed, reached = 0.0, None
    for seconds, accuracy in zip(result["epoch_seconds"], result["test_accuracy_per_epoch"], strict=True):
        elapsed += seconds
        if reached is None and accuracy >= target:
            reached = elapsed
    steady = result["epoch_seconds"][1:] or result["epoch_seconds"]
    return {**result, "seconds_to_target": None if reached is None else round(reached, 1),
            "train_seconds": round(sum(result["epoch_seconds"]), 1),
            "final_test_accuracy": result["test_accuracy_per_epoch"][-1],
            "images_per_second": round(result["examples_per_epoch"] * len(steady) / sum(steady), 1),
            "peak_rss_mb": round(rss, 1)}


def print_table(report: dict) -> None:
    cpu = report["cpu"]
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags'])}")
    print(f"recipe {report['config']}, {report['epochs']} epochs, {report['train_examples']:,} training and "
          f"{report['test_examples']:,} test images; target {report['target']:.1%} test accuracy")
    head = f"{'side':8} {'to target':>10} {'train s':>8} {'final acc':>9} {'img/s':>7} {'peak MB':>8} {'cnncli ÷':>9}"
    print(head)
    print("-" * len(head))
    for name, side in report["sides"].items():
        if "skipped" in side:
            print(f"{name:8} skipped: {side['skipped']}")
            continue
        reached = "never" if side["seconds_to_target"] is None else f"{side['seconds_to_target']:.0f} s"
        ratio = report["speedups"].get(name)
        at_least = report.get("speedups_at_least", {}).get(name)
        final = f"{side['final_test_accuracy']:.4f}" + ("*" if side.get("stopped_at_target") else "")
        shown = f"{ratio:>8.2f}×" if ratio else (f"> {at_least:.2f}×".rjust(9) if at_least else "")
        print(f"{name:8} {reached:>10} {side['train_seconds']:>8.0f} {final:>9} "
              f"{side['images_per_second']:>7.0f} {side['peak_rss_mb']:>8.0f} " + shown)
    print("to target: training time (evaluation excluded, tracing included) until the first epoch whose test "
          "accuracy reaches the target; cnncli ÷: that side's time to target over cnncli's.")
    tta = report["sides"].get("cnncli", {})
    if tta.get("test_accuracy_tta") is not None:
        print(f"cnncli with test-time augmentation (evaluate.tta: {tta['tta']}): "
              f"{tta['test_accuracy_tta']:.4f} test accuracy after the last epoch")
    if any(side.get("stopped_at_target") for side in report["sides"].values()):
        print("*: stopped at the first epoch that reached the target (--stop-at-target), not the recipe's last")
    if report.get("speedups_at_least"):
        print(f"> F×: gave up (--give-up-after {report['give_up_after']:g}) after the first epoch past "
              f"{report['give_up_after']:g}× cnncli's time to target, the target not reached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=RECIPE)
    parser.add_argument("--epochs", type=int, help="default: the config's")
    parser.add_argument("--limit", type=int, help="training and test images each (a quick check of the plumbing)")
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--data", default=str(FASHION_MNIST))
    parser.add_argument("--cnn", default="cnn", help="the cnn command")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per side")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="keras and torch stop after the first epoch that reaches --target (cnncli runs "
                             "its whole recipe): their time to target, in a fraction of the time")
    parser.add_argument("--give-up-after", type=float, metavar="F",
                        help="with --stop-at-target: keras and torch also stop after the first epoch past F times "
                             "cnncli's time to target (cnncli runs first)")
    parser.add_argument("--stop-at", type=float, help=argparse.SUPPRESS)  # a child process: --stop-at-target
    parser.add_argument("--give-up", type=float, help=argparse.SUPPRESS)  # a child process: --give-up-after
    parser.add_argument("--side", choices=["keras", "torch"], help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side = keras_side if args.side == "keras" else torch_side
        print(json.dumps(side(args.config, args.epochs, args.data_file, args.stop_at, args.give_up)))
        return
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(sides) - set(SIDES):
        raise SystemExit(f"unknown side(s) {sorted(unknown)}; choose from {', '.join(SIDES)}")
    if args.give_up_after is not None and (not args.stop_at_target or sides[:1] != ["cnncli"]):
        raise SystemExit("--give-up-after needs --stop-at-target and cnncli as the first of --sides")
    cfg = load_recipe(args.config, args.epochs)
    report: dict = {"cpu": cpu_description(), "config": str(args.config.relative_to(ROOT)
                                                            if args.config.is_relative_to(ROOT) else args.config),
                    "epochs": cfg.train.epochs, "target": args.target, "sides": {}, "speedups": {},
                    "speedups_at_least": {}, "give_up_after": args.give_up_after}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain, carved, fraction = write_data(Path(args.data), args.limit, cfg.seed or 0, work)
        with np.load(plain) as f:
            report["train_examples"], report["test_examples"] = len(f["y_train"]), len(f["y_test"])
        child = [sys.executable, str(Path(__file__).resolve()), "--config", str(args.config), "--data-file", str(plain)]
        if args.epochs:
            child += ["--epochs", str(args.epochs)]
        if args.stop_at_target:
            child += ["--stop-at", repr(args.target)]
        for name in sides:
            print(f"training: {name} ...", file=sys.stderr, flush=True)
            if name == "torch" and importlib.util.find_spec("torch") is None:
                report["sides"][name] = {"skipped": "torch is not installed (pip install torch)"}
                continue
            if name == "cnncli":
                result, rss = cnncli_side(args, carved, fraction, work)
            else:
                give_up = decisive_seconds(report, args.give_up_after)
                out, _, rss, _ = run_child([*child, "--side", name, *(["--give-up", repr(give_up)] if give_up else [])],
                                           args.timeout)
                result = json.loads(out.strip().splitlines()[-1])
            side = report["sides"][name] = summarise(result, rss, args.target)
            short = name != "cnncli" and len(result["epoch_seconds"]) < cfg.train.epochs
            side["stopped_at_target"] = short and args.stop_at_target and side["seconds_to_target"] is not None
            side["gave_up"] = short and side["seconds_to_target"] is None
            compare(report)
            if args.out:  # after every side: a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    params = {n: s["trainable_params"] for n, s in report["sides"].items() if "trainable_params" in s}
    if len(set(params.values())) > 1:
        raise SystemExit(f"the sides' networks differ: trainable weights {params}")
    print_table(report)
    if args.out:
        print(f"wrote {args.out}")


def decisive_seconds(report: dict, factor: float | None) -> float | None:
    """--give-up-after: the training time past which a side cannot be within `factor` of cnncli."""
    ours = report["sides"].get("cnncli", {})
    if factor is None or not ours:
        return None
    return factor * (ours["seconds_to_target"] or ours["train_seconds"])


def compare(report: dict) -> None:
    """Each side's time to target over cnncli's; a side that gave up, at least its training time over it."""
    ours = report["sides"].get("cnncli", {}).get("seconds_to_target")
    for name, side in report["sides"].items():
        theirs = side.get("seconds_to_target")
        if name == "cnncli" or not ours:
            continue
        if theirs:
            report["speedups"][name] = round(theirs / ours, 2)
        elif side.get("gave_up"):
            report["speedups_at_least"][name] = round(side["train_seconds"] / ours, 2)


if __name__ == "__main__":
    main()
