"""Reading a finished run back: its config, model, class names and data.

`cnn evaluate`, `export`, `predict`, `saliency` and `filters` all start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnncli.model.predict_loop import keras_predict
from cnncli.config.schema import Config
from cnncli.config.loading import load_config
from cnncli.errors import RunError
from cnncli.train import rundir


@dataclass
class Run:
    path: Path
    cfg: Config
    info: dict  # run.json

    @property
    def class_names(self) -> list[str]:
        return list(self.info.get("class_names") or [])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["input_shape"])

    def model_path(self) -> Path:
        path = self.path / "model.keras"
        if not path.exists():
            status = self.info.get("status", "unknown")
            raise RunError(f"`{self.path}` has no model.keras yet (run status: {status}); "
                           f"finish it with cnn train --resume {self.path}")
        return path

    def load_model(self):
        import keras

        import cnncli.model.preprocessing  # noqa: F401  registers the custom layer for loading

        path = self.model_path()
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as exc:  # a damaged zip or foreign file: say which
            raise RunError(f"`{path}` cannot be loaded: {str(exc).splitlines()[0]}") from None

    def load_data(self, overrides: list[str] | None = None):
        """The run's data (same seed, so the same splits), converted to the model's input.

        Streamed as in training when data.cache (or the memory budget) says so: split arrays, or
        pipeline.FileSplits read at the model's input size.
        """
        from cnncli.data import cache_streams, convert_images, open_data
        from cnncli.images import model_view

        cfg = load_config(self.path / "config.yaml", overrides or []) if overrides else self.cfg
        color_mode, size = model_view(self.input_shape)  # files are read at the model's size, as cnn predict reads them
        data = open_data(cfg.data.model_copy(update={"color_mode": color_mode, "image_size": size}), cfg.seed or 0)
        cache_streams(data)
        for split in ("train", "val", "test"):
            x = getattr(data, f"x_{split}")
            if len(x) and tuple(x.shape[1:]) != self.input_shape:
                setattr(data, f"x_{split}", convert_images(x, self.input_shape))
        return data


def open_run(path: str | Path) -> Run:
    run_dir = rundir.find_run_dir(path)
    cfg = load_config(run_dir / "config.yaml")
    info = rundir.read_json(run_dir / "run.json")
    return Run(run_dir, cfg, info)


def evaluate_run(path: str | Path, split: str = "test", overrides: list[str] | None = None,
                 top_k: int | None = None, errors: int | None = None, figures: Path | None = None,
                 columns: int | None = None) -> dict:
    """Metrics of a run's model on a split of its data (or of other, compatible data).

    `errors=N` adds the N highest-loss images (`errors`), examples of the most
    confused pairs, and their galleries as PNGs in `figures` (default: the run directory; cnncli.insight.mistakes).
    """
    from cnncli.data.splits import is_streamed, predict_split
    from cnncli.model.scores import classification_report

    run = open_run(path)
    model = run.load_model()
    data = run.load_data(overrides)
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(x) == 0:
        raise RunError(f"the {split} split of this run's data is empty")
    names = run.class_names or data.class_names
    outputs = int(model.outputs[0].shape[-1])
    if int(y.max()) >= outputs:
        raise RunError(f"the data has labels up to {int(y.max())} but the model outputs {outputs} classes")
    probs, y = predict_split(lambda images: keras_predict(model, images), x, y)
    names = names[:outputs] if len(names) >= outputs else [str(i) for i in range(outputs)]
    report = classification_report(y, probs, names, top_k=top_k)
    report["split"] = split
    report["run_dir"] = str(run.path)
    if errors is not None:
        from cnncli.insight import mistakes

        paths = (data.paths or {}).get(split)
        report["errors"] = mistakes.worst(y, probs, names, errors, paths)
        report["most_confused"] = mistakes.pair_examples(y, probs, names, report["most_confused"], paths)
        suffix = "" if split == "test" and not overrides else f"_{split}"
        pictures = _Pictures(x) if is_streamed(x) else x  # a streamed split reads only the images shown
        report.update(mistakes.draw(pictures, report["errors"], report["most_confused"], figures or run.path, suffix,
                                     columns))
    return report


class _Pictures:
    """Images of a streamed split by index, each read from its file when asked for."""

    def __init__(self, split):
        self.split = split

    def __getitem__(self, index: int):
        return self.split.read_one(int(index))[0]
