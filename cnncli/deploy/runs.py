"""Reading a finished run back: its config, model, class names and data.

`cnn evaluate`, `export`, `predict`, `saliency` and `filters` all start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.config.loading import load_config
from cnncli.config.schema import Config
from cnncli.errors import RunError
from cnncli.train import rundir


@dataclass
class Run:
    path: Path
    cfg: Config
    info: dict  # run.json

    @property
    def class_names(self) -> list[str]:
        """The class names run.json recorded."""
        return list(self.info.get("class_names") or [])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model's input (h, w, c), as run.json recorded it."""
        return tuple(self.info["input_shape"])

    def model_path(self) -> Path:
        """The run's model.keras, or a RunError when the run has not written it yet."""
        path = self.path / "model.keras"
        if not path.exists():
            status = self.info.get("status", "unknown")
            raise RunError(
                f"`{self.path}` has no model.keras yet (run status: {status}); "
                f"finish it with cnn train --resume {self.path}"
            )
        return path

    def load_model(self) -> Any:
        """The run's model.keras as a keras.Model (not compiled); a RunError says why it cannot load."""
        from cnncli.model.preprocessing import load_model

        return load_model(self.model_path())

    def data_config(self, overrides: list[str] | None = None, option: str = "--data") -> Config:
        """The run's config with `key.path=value` overrides (given as `option`) applied and validated."""
        return load_config(self.path / "config.yaml", overrides, option=option) if overrides else self.cfg

    def load_data(self, overrides: list[str] | None = None, cfg: Config | None = None) -> Any:
        """The run's data (same seed, so the same splits), or that of `cfg` (see data_config), converted
        to the model's input.

        Streamed as in training when data.cache (or the memory budget) says so: split arrays, or
        pipeline.FileSplits read at the model's input size.
        """
        from cnncli.data import cache_streams, convert_images, open_data
        from cnncli.images import model_view

        cfg = cfg or self.data_config(overrides)
        color_mode, size = model_view(self.input_shape)  # files are read at the model's size, as cnn predict reads them
        data = open_data(cfg.data.model_copy(update={"color_mode": color_mode, "image_size": size}), cfg.seed or 0)
        cache_streams(data)
        for split in ("train", "val", "test"):
            x = getattr(data, f"x_{split}")
            if len(x) and tuple(x.shape[1:]) != self.input_shape:
                setattr(data, f"x_{split}", convert_images(x, self.input_shape))
        return data


def open_run(path: str | Path) -> Run:
    """The run directory at `path` (or the one a sweep trial points to), read back."""
    run_dir = rundir.find_run_dir(path)
    cfg = load_config(run_dir / "config.yaml")
    info = rundir.read_json(run_dir / "run.json")
    return Run(run_dir, cfg, info)
