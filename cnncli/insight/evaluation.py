"""`cnn evaluate`'s job: a run's model scored on a split of its data, or of other data, with pictures.

Other data (`--data key.path=value`) is scored by class name: the data's classes
are matched to the run's, so a folder holding some of the model's classes, in
any order, is scored against the right outputs. Its pictures go to their own
folder, RUN/evaluations/<data>/, never over the run's own files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.config.schema import Config
from cnncli.deploy.runs import Run, open_run
from cnncli.errors import CnnError, DataError, RunError, UsageError
from cnncli.model.predict_loop import keras_predict_views, tta_mean

EVALUATIONS = "evaluations"  # RUN/evaluations/<data>/: the pictures of other data
# data.* keys an evaluation sets itself or never reads: overriding one would change nothing
NOT_READ = {
    "image_size": "images are read at the model's input size",
    "color_mode": "images are read in the model's colour mode",
    "augment": "augmentation applies to training only",
}
HOW = {"cache", "cache_dir", "memory_budget"}  # how the data is read, not which images: still the same data


def evaluate_run(
    path: str | Path,
    split: str = "test",
    overrides: list[str] | None = None,
    top_k: int | None = None,
    errors: int | None = None,
    figures: Path | None = None,
    columns: int | None = None,
    confusion_png: bool = False,
    tta: str | None = None,
) -> dict:
    """Metrics of a run's model on a split of its data (or of other data whose classes the model knows).

    `errors=N` adds the N highest-loss images (`errors`), examples of the most
    confused pairs, and their galleries as PNGs (cnncli.insight.mistakes);
    `confusion_png` draws the confusion matrix. Pictures go to `figures`, by
    default the run directory for its own data and RUN/evaluations/<data>/ for
    other data; a folder that cannot be written is refused before any work.
    `tta` (default: the run's `evaluate.tta`) also scores the mean prediction over
    each image and its test-time views (`flip`: its mirror image), under `tta`.
    """
    from cnncli.data.splits import is_streamed, predict_split
    from cnncli.model.scores import classification_report, tta_scores

    run = open_run(path)
    cfg = data_config(run, overrides or [])
    folder = Path(figures) if figures is not None else pictures_folder(run, cfg)
    if errors is not None or confusion_png:
        _check_folder(folder)
    model = run.load_model()
    data = run.load_data(cfg=cfg)
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(x) == 0:
        raise RunError(f"the {split} split of this run's data is empty")
    outputs = int(model.outputs[0].shape[-1])
    index = class_index(data.class_names, run.class_names, int(y.max()) + 1)
    if int(index[: int(y.max()) + 1].max()) >= outputs:
        raise RunError(f"the data has labels up to {int(y.max())} but the model outputs {outputs} classes")
    tta = tta or run.cfg.evaluate.tta
    views, y = predict_split(lambda images: keras_predict_views(model, images, tta).reshape(len(images), -1), x, y)
    views = views.reshape(len(views), -1, outputs)
    probs = views[:, 0]  # the images themselves: the plain scores, the pictures
    y = index[y]
    names = run.class_names or data.class_names
    names = names[:outputs] if len(names) >= outputs else [str(i) for i in range(outputs)]
    report = classification_report(y, probs, names, top_k=top_k)
    if tta != "none":
        report["tta"] = tta_scores(y, tta_mean(views), tta)
    report["split"] = split
    report["run_dir"] = Path(run.path)
    suffix = "" if split == "test" else f"_{split}"
    if errors is not None:
        from cnncli.insight import mistakes

        paths = (data.paths or {}).get(split)
        report["errors"] = mistakes.worst(y, probs, names, errors, paths)
        report["most_confused"] = mistakes.pair_examples(y, probs, names, report["most_confused"], paths)
        pictures: Any = _Pictures(x) if is_streamed(x) else x  # a streamed split reads only the images shown
        report.update(mistakes.draw(pictures, report["errors"], report["most_confused"], folder, suffix, columns))
    if confusion_png:
        from cnncli.fileio import writing
        from cnncli.plots import plot_confusion_matrix

        png = folder / f"confusion_matrix{suffix}.png"
        with writing(png, "; choose another --output"):
            report["confusion_matrix_png"] = Path(
                plot_confusion_matrix(np.array(report["confusion_matrix"]), names, png)
            )
    return report


# === Other data ===


def data_config(run: Run, overrides: list[str]) -> Config:
    """The run's config with `--data` overrides applied, refusing one that would change nothing read."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        key = key.strip()
        if not sep:
            example = "photos/" if item.startswith(("data", "seed")) else item  # a bare path: the user's folder
            raise UsageError(f"`{item}`: expected KEY.PATH=VALUE, e.g. --data data.path={example}", "--data")
        if key not in ("data", "seed") and not key.startswith(("data.", "data[")):
            raise CnnError(
                f"--data `{item}`: --data changes the data (data.* keys, or seed); the model is "
                f"model.keras as trained, so `{key}` would change nothing"
            )
    cfg = run.data_config(overrides, option="--data")
    for item in overrides:
        key = item.partition("=")[0].strip()
        step = key.split(".")[1].split("[")[0] if key.startswith("data.") else ""
        if step in NOT_READ:
            raise CnnError(f"--data `{item}`: {NOT_READ[step]}, so data.{step} changes nothing here")
        if step == "path" and cfg.data.dataset == "shapes":
            raise CnnError(
                f"--data `{item}`: dataset `shapes` takes no path (its images are drawn from the "
                "seed); to evaluate on files, also give --data data.dataset=image_folder "
                "(or idx, npz, records)"
            )
        if step == "shapes" and cfg.data.dataset != "shapes":
            raise CnnError(f"--data `{item}`: dataset `{cfg.data.dataset}` does not read data.shapes")
    return cfg


def _which_data(cfg: Config) -> dict:
    """What decides the images and labels of the splits (not how they are read)."""
    fields = cfg.data.model_dump(mode="json", exclude=HOW | set(NOT_READ))
    if fields.get("path") and "://" not in fields["path"]:
        fields["path"] = str(Path(fields["path"]).expanduser().resolve())
    return {"seed": cfg.seed, "data": fields}


def pictures_folder(run: Run, cfg: Config) -> Path:
    """The run directory for its own data; RUN/evaluations/<dataset>[-<path's name>]-<digest> for other data."""
    which = _which_data(cfg)
    if which == _which_data(run.cfg):
        return run.path
    path = which["data"].get("path")
    name = cfg.data.dataset + (f"-{Path(path.rstrip('/')).name}" if path else "")
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")[:60]
    digest = hashlib.sha256(json.dumps(which, sort_keys=True).encode()).hexdigest()[:8]
    return run.path / EVALUATIONS / f"{name}-{digest}"


def _check_folder(folder: Path) -> None:
    from cnncli.fileio import unwritable

    why = unwritable(folder)
    if why:
        raise CnnError(f"cannot write the pictures in `{folder}`: {why}; give --output DIR to write them elsewhere")


def class_index(data_names: list[str], run_names: list[str], labels: int) -> np.ndarray:
    """data label → the model's class, matched by name (in the run's order).

    Where either side names its classes only by number (0, 1, …: IDX files, an
    npz without class_names, a run from before names were recorded) the labels
    already are the model's class indices.
    """
    count = max(len(data_names), labels)
    data_names, run_names = [str(n) for n in data_names], [str(n) for n in run_names]
    positional = (
        not run_names
        or not data_names
        or data_names == run_names[: len(data_names)]
        or _numbers(data_names)
        or _numbers(run_names)
    )
    if positional:
        return np.arange(count)
    unknown = [n for n in data_names if n not in run_names]
    if unknown:
        raise DataError(
            f"the data's classes {', '.join(f'`{n}`' for n in unknown)} are not classes of this model "
            f"({', '.join(run_names)}); classes are matched by name, so name them as the run does"
        )
    return np.array([run_names.index(n) for n in data_names])


def _numbers(names: list[str]) -> bool:
    return names == [str(i) for i in range(len(names))]


class _Pictures:
    """Images of a streamed split by index, each read from its file when asked for."""

    def __init__(self, split):
        self.split = split

    def __getitem__(self, index: int):
        return self.split.read_one(int(index))[0]
