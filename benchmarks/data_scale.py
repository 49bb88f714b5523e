"""Data at scale: `cnn train` with data.cache auto / disk / none against the plain Keras streaming recipe.

Makes image folders of synthetic 256×256 JPEG photos (two classes: smooth
colour fields with a light or a dark blob; written once with Pillow into the
folder given as --root and reused), then trains the same small CNN at
224×224 on each, every configuration in its own process:

* keras: the recipe a tutorial writes — `keras.utils.image_dataset_from_directory`
  (image_size 224, batch 32, shuffled) + `.prefetch(AUTOTUNE)` + `model.fit`;
* cnn-auto, cnn-disk, cnn-none: `cnn train` with that `data.cache`; `disk`
  trains a second epoch, which reads the decoded cache written by the first
  (the cache folder is emptied before each size, so the first epoch pays for it).

Printed per run: peak RSS (os.wait4's ru_maxrss), seconds from process start
to the first training step, first-epoch images/s (decode-bound for streamed
runs) and second-epoch images/s (disk only). For cnn the first step is
start-up plus data loading or caching (the time before epoch 1's steps, from
run.json's epoch_seconds); for Keras a callback records it. On a shared,
loaded machine the figures are indicative: compare ratios within one run.

    python benchmarks/data_scale.py --root /tmp/data-scale --sizes 2000
    python benchmarks/data_scale.py --root /tmp/data-scale --sizes 2000,8000,32000 --runs keras,cnn-disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SIDE = 256  # stored photos
TRAIN_SIZE = 224  # what the model sees
TEST_IMAGES = 64  # a token test split: cnn evaluates it after training, outside the timed epochs
BATCH = 32
RUNS = ("keras", "cnn-auto", "cnn-disk", "cnn-none")
LAYERS = [  # the same small CNN on both sides (cnncli adds the 1/255 rescaling itself)
    {"type": "Conv2D", "filters": 16, "kernel_size": 3, "strides": 2, "activation": "relu"},
    {"type": "MaxPooling2D", "pool_size": 2},
    {"type": "Conv2D", "filters": 32, "kernel_size": 3, "strides": 2, "activation": "relu"},
    {"type": "GlobalAveragePooling2D"},
    {"type": "Dense", "units": 2, "activation": "softmax"},
]


def _photo(args) -> None:
    path, label, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    base = rng.uniform(40, 200, 3) + rng.uniform(-60, 60, 3) * (xx[..., None] * rng.uniform(-1, 1) + yy[..., None])
    cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.1, 0.25)]
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    image = base + (70 if label else -70) * blob + rng.normal(0, 12, (SIDE, SIDE, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_folder(root: Path, n: int) -> Path:
    """root/<n>/{train,test}/{light,dark}/*.jpg, written once (a `done` file marks a complete folder)."""
    folder = root / str(n)
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for split, count, offset in (("train", n, 0), ("test", TEST_IMAGES, 10**7)):
        for label, name in enumerate(("dark", "light")):
            (folder / split / name).mkdir(parents=True)
            jobs += [(folder / split / name / f"{i:06d}.jpg", label, offset + 2 * i + label) for i in range(count // 2)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_photo, jobs, chunksize=64))
    (folder / "done").write_text("")
    print(f"wrote {len(jobs):,} photos to {folder} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return folder


def _config(folder: Path, cache: str, cache_dir: Path, epochs: int) -> str:
    return json.dumps({
        "name": f"scale-{cache}", "seed": 1,
        "data": {"dataset": "image_folder", "path": str(folder), "image_size": [TRAIN_SIZE, TRAIN_SIZE],
                 "color_mode": "rgb", "validation_split": 0, "cache": cache, "cache_dir": str(cache_dir)},
        "model": {"layers": LAYERS},
        "train": {"epochs": epochs, "batch_size": BATCH, "optimizer": {"type": "Adam", "learning_rate": 0.001}},
    })


def _spawn(argv: list[str], env: dict | None = None) -> tuple[float, int, float, list[tuple[float, str]]]:
    """(start time, exit code, peak RSS in MB, stdout lines with the time each arrived) of a child process."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})})
        lines = [(time.time(), line) for line in proc.stdout]
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:  # the error line (cnn's `Error: ...`, or a traceback's last line) goes in the row
            err.seek(0)
            lines.append((time.time(), (err.read().strip().splitlines() or [""])[-1]))
    return t0, code, usage.ru_maxrss / 1024, lines


def run_cnn(folder: Path, cache: str, work: Path) -> dict:
    cache_dir = work / "cache"
    epochs = 2 if cache == "disk" else 1
    config = work / f"{cache}.yaml"
    config.write_text(_config(folder, cache, cache_dir, epochs))  # JSON is YAML
    runs = work / f"runs-{cache}"
    t0, code, rss, lines = _spawn([sys.executable, "-m", "cnncli", "train", str(config), "-o", str(runs)])
    if code != 0:
        return {"run": f"cnn-{cache}", "error": f"exit {code}: {lines[-1][1].strip() if lines else ''}"}
    run = json.loads(next(runs.glob("*/*/run.json")).read_text())
    seconds = run["phases"][0]["epoch_seconds"]
    n = run["data"]["train"]
    epoch1_line = next(t for t, line in lines if line.startswith("epoch   1"))  # printed as epoch 1 ends
    return {"run": f"cnn-{cache}", "chosen": run["data"]["cache"]["mode"], "peak_rss_mb": rss,
            "first_step_s": epoch1_line - seconds[0] - t0, "epoch1_img_s": n / seconds[0],
            "epoch2_img_s": n / seconds[1] if len(seconds) > 1 else None}


KERAS_CHILD = """
import json, sys, time
t_start = float(sys.argv[3])
import keras, tensorflow as tf
folder, layers = sys.argv[1], json.loads(sys.argv[2])
ds = keras.utils.image_dataset_from_directory(folder + "/train", image_size=(224, 224), batch_size=32, seed=1)
ds = ds.prefetch(tf.data.AUTOTUNE)
model = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Rescaling(1 / 255)] +
                         [getattr(keras.layers, l.pop("type"))(**l) for l in layers])
model.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
marks = {}
class Clock(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        marks.setdefault("first", time.time())
    def on_epoch_begin(self, epoch, logs=None):
        marks["begin"] = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        marks.setdefault("epochs", []).append(time.perf_counter() - marks["begin"])
model.fit(ds, epochs=1, callbacks=[Clock()], verbose=0)
print(json.dumps({"first_step_s": marks["first"] - t_start, "epoch_seconds": marks["epochs"]}))
"""


def run_keras(folder: Path) -> dict:
    n = sum(1 for _ in (folder / "train").rglob("*.jpg"))
    _, code, rss, lines = _spawn([sys.executable, "-c", KERAS_CHILD, str(folder), json.dumps(LAYERS), str(time.time())],
                               {"TF_CPP_MIN_LOG_LEVEL": "2"})
    if code != 0:
        return {"run": "keras", "error": f"exit {code}: {lines[-1][1].strip() if lines else ''}"}
    got = json.loads(lines[-1][1])
    return {"run": "keras", "chosen": "stream", "peak_rss_mb": rss, "first_step_s": got["first_step_s"],
            "epoch1_img_s": n / got["epoch_seconds"][0], "epoch2_img_s": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder for the generated photos (kept, reused)")
    parser.add_argument("--sizes", default="2000,8000,32000", help="training images per folder, comma-separated")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"which of {', '.join(RUNS)}")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    chosen = [r for r in args.runs.split(",") if r]
    rows = []
    for n in sizes:
        folder = make_folder(args.root, n)
        with tempfile.TemporaryDirectory(prefix="data-scale-") as work:
            for name in chosen:
                row = run_keras(folder) if name == "keras" else run_cnn(folder, name.split("-", 1)[1], Path(work))
                row["images"] = n
                rows.append(row)
                print(_line(row), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['images']:>7,}  {row['run']:<9}  {row['error']}"
    second = f"{row['epoch2_img_s']:>8,.0f}" if row.get("epoch2_img_s") else f"{'-':>8}"
    return (f"{row['images']:>7,}  {row['run']:<9} ({row['chosen']:<6})  peak RSS {row['peak_rss_mb']:>6,.0f} MB  "
            f"first step {row['first_step_s']:>6.1f}s  epoch 1 {row['epoch1_img_s']:>6,.0f} img/s  "
            f"epoch 2 {second} img/s")


if __name__ == "__main__":
    main()
