"""Where `data.augment` should run: inside the training step, or in a tf.data pipeline before it.

    python benchmarks/augment_placement.py                       # a few minutes on 2 cores
    python benchmarks/augment_placement.py --limit 6000 --epochs 3 --rounds 3 --out augment-placement.json
    python benchmarks/augment_placement.py --sides step,pipeline,feed,none --recipes mixup

For the shipped recipe `configs/fashion_resnet.yaml` (RandomFlip and
RandomTranslation) and the same recipe with `MixUp` added (`--recipes`), it
trains on Fashion-MNIST (cnncli's `fashion_mnist` dataset, `data.limit`
images per split), each side in its own process, through cnncli's own
`run_training` (what `cnn train` runs): the same model, optimizer, schedule,
loss, batch size, seed, threads and precision on every side. Only where the
augmentation layers run differs:

* step: cnncli as it ships. The split stays resident as uint8; each step
  gathers its batch and runs the layers inside the multi-step `tf.function`
  (cnncli/train/loop.py `Trainer.augment_batch`), nothing run unpatched;
* pipeline: the same layers in a `tf.data` map over batches (gather, cast to
  float32, the layers; for MixUp the labels one-hot and mixed there too),
  `num_parallel_calls=AUTOTUNE` and `prefetch(AUTOTUNE)`, feeding the same
  compiled chunk of steps that cnncli runs for a streamed split
  (`Trainer._stream_chunk`), whose step then runs no augmentation;
* feed (not run by default): that pipeline without the layers, to tell the cost
  of feeding through tf.data from the cost of the layers;
* none: the config without `data.augment`, unpatched: the ceiling.

Images/s is over epochs 2..N (run.json's `epoch_seconds`, training steps
only: no tracing, evaluation or saving), one figure per run; with `--rounds`
every side runs again, the order of the sides reversed each round, and the
table shows each side's fastest run and every run's figure. Each run also
traces `--profile` steps of its first epoch as `cnn train --profile` does and
reports its `input_wait_share` (cnncli/train/profile.py: the share of the
steps' wall time in the ops that bring the batch in); a pipeline run also
reports the share of epochs 2..N its steps waited for the next batch (the
`waiting_for_data` of a streamed run). Last, each recipe's layers run alone
(compiled, on batches of the recipe's size, nothing else in the process):
their images/s beside the ceiling's says what share of a step augmenting can
take, wherever it runs. A shared machine slows whichever side runs while
another job holds a core: compare ratios over several rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from train_speed import cpu_description, finish, run_child  # noqa: E402

RECIPE = ROOT / "configs" / "fashion_resnet.yaml"
SIDES = ("step", "pipeline", "feed", "none")
RECIPES = {"recipe": "flip + translation", "mixup": "flip + translation + MixUp"}


# ---------------------------------------------------------------- the configs

def write_configs(config: Path, alpha: float, work: Path) -> dict[str, Path]:
    """The recipe as shipped, with MixUp appended to `data.augment`, and without `data.augment` (the ceiling)."""
    import yaml

    spec = yaml.safe_load(config.read_text())
    if not spec.get("data", {}).get("augment"):
        raise SystemExit(f"{config} has no data.augment: nothing to place")
    paths = {}
    for name in ("recipe", "mixup", "plain"):
        out = json.loads(json.dumps(spec))
        if name == "mixup":
            out["data"]["augment"].append({"type": "MixUp", "alpha": alpha})
        if name == "plain":
            del out["data"]["augment"]
        paths[name] = work / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(out, sort_keys=False))
    return paths


# ---------------------------------------------------------------- the pipeline side (in the child process)

class PipelineSplit:
    """A resident split that hands the trainer tf.data batches, augmented in a parallel map: it looks to
    cnncli's Trainer like a streamed split (cnncli/data/splits.py `is_streamed`), so the trainer feeds
    its steps with `_stream_chunk`, the same compiled chunk a streamed run uses."""

    on_corrupt = "skip"
    share_sizes = None

    def __init__(self, x: Any, y: Any, augment: Any, classes: int):
        import numpy as np
        import tensorflow as tf

        self.health = SimpleNamespace(bad={})
        self.x = tf.convert_to_tensor(x)
        self.y = tf.convert_to_tensor(np.asarray(y, np.int32))
        self.augment, self.classes = augment, classes

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, order: Any, batch_size: int, count: int | None = None) -> Any:
        """Batches of the examples in `order`, augmented as the step would augment them."""
        import tensorflow as tf

        augment, classes, x_all, y_all = self.augment, self.classes, self.x, self.y

        def load(idx):
            x, y = tf.gather(x_all, idx), tf.gather(y_all, idx)
            if augment is None:
                return x, y  # uint8: the step casts, as for resident data
            x = tf.cast(x, "float32")
            if not augment.changes_labels:
                return augment(x, training=True), y
            return augment(x, tf.one_hot(y, classes, dtype=tf.float32), training=True)

        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        if count is not None:
            ds = ds.take(count)
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def pipeline_trainer(with_layers: bool) -> type:
    """cnncli's Trainer with the augmentation moved out of the step into the split's tf.data pipeline."""
    import tensorflow as tf

    from cnncli.train.loop import Trainer

    class PipelineTrainer(Trainer):
        def __init__(self, model, optimizer, loss_fn, metrics, strategy, batch_size, seed, augment=None, **kw):
            super().__init__(model, optimizer, loss_fn, metrics, strategy, batch_size, seed, None, **kw)
            self.pipeline_augment = augment if with_layers else None

        def set_data(self, x: Any, y: Any) -> None:
            classes = int(self.model.outputs[0].shape[-1])
            super().set_data(PipelineSplit(x, y, self.pipeline_augment, classes), y)

        def augment_batch(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
            x = tf.cast(x, "float32")
            if y.dtype.is_floating:  # one-hot labels, mixed in the pipeline: metrics get the largest class
                return x, y, tf.argmax(y, axis=-1, output_type=tf.int32)
            return x, y, y

    return PipelineTrainer


def child(side: str, config: Path, output: Path, epochs: int, limit: int, profile: int, sets: list[str]) -> dict:
    """One run of `side`: cnncli's run_training, the pipeline sides with their trainer swapped in."""
    sys.path.insert(0, str(ROOT))
    import cnncli.train.session as session_module
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    if side in ("pipeline", "feed"):
        session_module.Trainer = pipeline_trainer(with_layers=side == "pipeline")  # type: ignore[misc]
    epochs_seen: list[dict] = []
    add_timing = session_module._add_timing

    def recording(record: dict, result: Any) -> dict:
        epochs_seen.append({"seconds": result.seconds, "examples": result.examples, "waiting": result.waiting})
        return add_timing(record, result)

    session_module._add_timing = recording
    result = run_training(
        TrainOptions(config=config, overrides=[f"data.limit={limit}", *sets], output=output, epochs=epochs,
                     profile=profile),
        Reporter(),
    )
    seconds = [s for phase in result.run["phases"] for s in phase.get("epoch_seconds", [])]
    profiled = result.run.get("profile") or {}
    return {"epochs": epochs_seen, "epoch_seconds": seconds, "precision": result.run["runtime"]["precision"],
            "threads": result.run["runtime"]["threads"],
            "test_accuracy": result.metrics.get("test", {}).get("accuracy"),
            "profile": {k: profiled.get(k) for k in ("steps", "step_ms", "input_wait_share", "top_ops")}}


def layers_alone(config: Path, limit: int, seconds: float = 5.0) -> dict:
    """Images/s of the augmentation layers alone, compiled as the step compiles them, on batches of the
    recipe's size drawn from the first `limit` training images: what augmenting costs with the whole
    machine to itself, beside which a step's images/s says what share of the step it could take."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tensorflow as tf

    from cnncli.config.loading import load_config
    from cnncli.data import open_data
    from cnncli.model.inputs import plan_input
    from cnncli.train.augment import build_augmentation

    cfg = load_config(config, [f"data.limit={limit}"])
    data = open_data(cfg.data, cfg.seed or 0, plan_input(cfg).shape, 0, 1, None)
    augment = build_augmentation(cfg)
    assert augment is not None  # the recipes with layers only
    batch = cfg.train.batch_size
    x_all = tf.convert_to_tensor(np.asarray(data.x_train))
    y_all = tf.convert_to_tensor(np.asarray(data.y_train, np.int32))
    classes = int(data.num_classes)

    @tf.function(reduce_retracing=True)
    def run(lo):
        idx = tf.math.floormod(tf.range(lo, lo + batch), tf.shape(x_all)[0])
        x = tf.cast(tf.gather(x_all, idx), "float32")
        if not augment.changes_labels:
            return tf.reduce_sum(augment(x, training=True))
        x, y = augment(x, tf.one_hot(tf.gather(y_all, idx), classes), training=True)
        return tf.reduce_sum(x) + tf.reduce_sum(y)

    run(tf.constant(0)).numpy()  # traced once, outside the timing
    batches, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(tf.constant(batches * batch)).numpy()
        batches += 1
    elapsed = time.perf_counter() - t0
    return {"images_per_second": round(batches * batch / elapsed, 1), "batches": batches, "batch_size": batch}


# ---------------------------------------------------------------- the parent

def summarize_run(out: dict) -> dict:
    """One run's figures: images/s over epochs 2..N, each of those epochs' own, the shares of input wait."""
    timed = out["epochs"][1:] or out["epochs"]
    seconds = sum(e["seconds"] for e in timed)
    examples = sum(e["examples"] for e in timed)
    waits = [e["waiting"] for e in timed if e["waiting"] is not None]
    return {
        "images_per_second": round(examples / seconds, 1),
        "epoch_images_per_second": [round(e["examples"] / e["seconds"], 1) for e in timed],
        # Clipped at 0: the step's two timestamps around the batch's arrival are not ordered against the rest
        # of the step, so a wait within their resolution can come out a hair below zero.
        "waiting_for_data": round(max(0.0, sum(waits) / seconds), 4) if waits else None,
        "input_wait_share": out["profile"]["input_wait_share"],
        "profile_step_ms": out["profile"]["step_ms"],
        "top_ops": out["profile"]["top_ops"],
        "epoch_seconds": out["epoch_seconds"],
        "precision": out["precision"],
        "threads": out["threads"],
        "test_accuracy": out["test_accuracy"],
    }


def schedule(recipes: list[str], sides: list[str], rounds: int) -> list[list[tuple[str, str]]]:
    """Each round's (recipe, side) runs; the ceiling is one run a round, shared by the recipes; every other
    round runs them in reverse order, so that a slow stretch of the machine does not always hit the same side."""
    order = [(recipe, side) for recipe in recipes for side in sides if side != "none"]
    if "none" in sides:
        order.append(("plain", "none"))
    return [order if r % 2 == 0 else order[::-1] for r in range(rounds)]


def build_report(tries: dict, args, configs: dict, load_before: tuple) -> dict:
    rows = []
    for (recipe, side), runs in tries.items():
        best = max(runs, key=lambda r: r["images_per_second"])
        rows.append({"recipe": recipe, "side": side, **best,
                     "runs_images_per_second": [r["images_per_second"] for r in runs],
                     "median_images_per_second": round(statistics.median(r["images_per_second"] for r in runs), 1),
                     "runs_input_wait_share": [r["input_wait_share"] for r in runs],
                     "runs_waiting_for_data": [r["waiting_for_data"] for r in runs]})
    by = {(r["recipe"], r["side"]): r for r in rows}
    for row in rows:
        step = by.get((row["recipe"], "step"))
        ceiling = by.get(("plain", "none"))
        row["vs_step"] = round(row["images_per_second"] / step["images_per_second"], 3) if step else None
        row["of_ceiling"] = round(row["images_per_second"] / ceiling["images_per_second"], 3) if ceiling else None
    return {"config": str(args.config), "limit": args.limit, "epochs": args.epochs, "rounds": args.rounds,
            "profile_steps": args.profile, "mixup_alpha": args.mixup_alpha, "set": args.set,
            "cpu": cpu_description(), "load_average": {"before": load_before, "after": os.getloadavg()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
            "configs": {name: path.read_text() for name, path in configs.items()}}


def print_table(report: dict) -> None:
    cpu = report["cpu"]
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags'])}; oneDNN runs {cpu['isa']}")
    print(f"{Path(report['config']).name}, data.limit {report['limit']}, {report['epochs']} epochs "
          f"(images/s over epochs 2..{report['epochs']}), {report['rounds']} round(s), "
          f"profile {report['profile_steps']} steps")
    head = (f"{'augmentation':27} {'where':9} {'img/s':>7} {'median':>7} {'÷ step':>7} {'÷ none':>7} "
            f"{'input wait':>10} {'waited':>7}  runs (img/s)")
    print(head)
    print("-" * len(head))
    for row in report["rows"]:
        label = RECIPES.get(row["recipe"], "none (the ceiling)")
        wait = "" if row["input_wait_share"] is None else f"{100 * row['input_wait_share']:.2f}%"
        waited = "" if row["waiting_for_data"] is None else f"{100 * row['waiting_for_data']:.2f}%"
        print(f"{label:27} {row['side']:9} {row['images_per_second']:>7.1f} {row['median_images_per_second']:>7.1f} "
              f"{_ratio(row['vs_step']):>7} {_ratio(row['of_ceiling']):>7} "
              f"{wait:>10} {waited:>7}"
              f"  {' '.join(f'{v:.0f}' for v in row['runs_images_per_second'])}")
    ceiling = next((r["images_per_second"] for r in report["rows"] if r["side"] == "none"), None)
    for recipe, alone in report.get("layers_alone", {}).items():
        share = f"; at the ceiling's pace they would take {100 * ceiling / alone['images_per_second']:.1f}% of a step" \
            if ceiling else ""
        print(f"{RECIPES[recipe]:27} the layers alone: {alone['images_per_second']:,.0f} img/s{share}")
    print("img/s: the fastest run; input wait: `cnn train --profile`'s input_wait_share (the fastest run's); "
          "waited: the share of epochs 2..N a pipeline's steps waited for their batch.")


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=RECIPE, help="the recipe (default configs/fashion_resnet.yaml)")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help="comma-separated subset of recipe (its own data.augment), mixup (MixUp added)")
    parser.add_argument("--sides", default="step,pipeline,none", help=f"comma-separated subset of {', '.join(SIDES)}")
    parser.add_argument("--limit", type=int, default=1024, help="data.limit: images per split (default 1024)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, at least 2 (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=1, help="run every side this many times, in alternating order")
    parser.add_argument("--profile", type=int, default=5, help="steps each run traces (cnn train --profile; 0: none)")
    parser.add_argument("--mixup-alpha", type=float, default=0.2, help="the MixUp layer's alpha (default 0.2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="passed to every run, e.g. --set runtime.intra_op_threads=2 (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each run")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument("--out", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--side", choices=[*SIDES, "alone"], help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--run-config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch (tracing, the profile) is not timed")
    if args.rounds < 1 or args.limit < 1 or args.profile < 0:
        parser.error("--rounds and --limit must be at least 1, --profile at least 0")
    if args.side == "alone":
        print(json.dumps(layers_alone(args.run_config, args.limit)))
        return 0
    if args.side:
        print(json.dumps(child(args.side, args.run_config, args.output, args.epochs, args.limit, args.profile,
                               args.set)))
        return 0
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [r for r in recipes if r not in RECIPES] + [s for s in sides if s not in SIDES]
    if unknown or not sides:
        parser.error(f"unknown {', '.join(unknown) or 'empty --sides'}; recipes: {', '.join(RECIPES)}; "
                     f"sides: {', '.join(SIDES)}")
    load_before = os.getloadavg()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    tries: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cnncli-augment-placement-") as tmp:
        work = Path(tmp)
        configs = write_configs(args.config, args.mixup_alpha, work)
        for r, order in enumerate(schedule(recipes, sides, args.rounds)):
            for recipe, side in order:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--run-config",
                       str(configs[recipe]), "--output", str(work / "runs"), "--epochs", str(args.epochs),
                       "--limit", str(args.limit), "--profile", str(args.profile),
                       *[item for s in args.set for item in ("--set", s)]]
                out, *_ = run_child(cmd, args.timeout, env)
                run = summarize_run(json.loads(out.strip().splitlines()[-1]))
                tries.setdefault((recipe, side), []).append(run)
                wait = run["input_wait_share"]
                print(f"round {r + 1}: {recipe} {side}: {run['images_per_second']:.1f} img/s"
                      + ("" if wait is None else f", input wait {100 * wait:.1f}%"), file=sys.stderr, flush=True)
        alone = {}
        for recipe in recipes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "alone", "--run-config",
                   str(configs[recipe]), "--limit", str(args.limit)]
            out, *_ = run_child(cmd, args.timeout, env)
            alone[recipe] = json.loads(out.strip().splitlines()[-1])
        report = build_report(tries, args, {k: v for k, v in configs.items()
                                            if k in recipes or (k == "plain" and "none" in sides)}, load_before)
        report["layers_alone"] = alone
    return finish(report, args, print_table, load_before, "other processes slow whichever side runs beside them")


if __name__ == "__main__":
    sys.exit(main())
