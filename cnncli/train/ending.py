"""The end of a training run: best weights back, test metrics, model.keras, metrics.json and plots.

Only the chief writes; another worker keeps its model only under $CNNCLI_WORKER_DIR.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli import faults, fileio
from cnncli.errors import CnnError
from cnncli.train import rundir
from cnncli.train.cluster import WORKER_DIR_ENV

if TYPE_CHECKING:
    from cnncli.config.schema import Config
    from cnncli.data.base import Dataset
    from cnncli.train.profile import StepProfile
    from cnncli.train.progress import Reporter
    from cnncli.train.result import TrainResult
    from cnncli.train.runinfo import RunTracker
    from cnncli.train.runtime import Runtime


class RunEnding:
    """The part of a Session that finishes a trained run (it reads the session's model, data and history)."""

    # Set by Session (session.py), which mixes this in beside RunRecord (runinfo.py).
    cfg: Config
    model: Any  # a keras.Model
    run_dir: Path
    runtime: Runtime
    data: Dataset
    history: list[dict]
    phase_records: list[dict]
    status: str
    smoke: bool
    tracker: RunTracker | None
    profile: StepProfile | None
    write_run_json: Callable[[], None]
    reporter: Reporter
    score: Callable[[np.ndarray, np.ndarray], dict]

    def finish(self) -> TrainResult:
        """Best weights back, test metrics, then (on the chief) model.keras, metrics.json and the plots."""
        from cnncli.train.result import TrainResult

        faults.point("training_done")
        if self.cfg.train.checkpoint.save_best_only and (self.run_dir / "checkpoints" / "best.keras").exists():
            import keras

            best = keras.models.load_model(self.run_dir / "checkpoints" / "best.keras", compile=False)
            self.model.set_weights(best.get_weights())
        from cnncli.data.splits import predict_split

        metrics: dict = {}
        if self.history and any(k.startswith("val_") for k in self.history[-1]):
            # Measured again on the weights model.keras gets: EarlyStopping's restore_best_weights and
            # checkpoint.save_best_only put back an earlier epoch than history.csv's last row.
            metrics["val"] = self.score(
                *predict_split(lambda x: _predict(self.model, x), self.data.x_val, self.data.y_val)
            )
        if len(self.data.x_test):
            metrics["test"] = self._test_report()
        self._warn_skipped()
        if self.runtime.is_chief:
            rundir.save_model(self.model, self.run_dir / "model.keras")
            faults.point("model_saved")
            if self.smoke:
                self._check_reload(metrics)
            fileio.write_json(self.run_dir / "metrics.json", metrics)
            faults.point("metrics_written")
            self._plots(metrics)
            self.status = "complete"
            self.write_run_json()
            if self.tracker is not None:
                self.tracker.end(self.run_dir, "complete")
        elif os.environ.get(WORKER_DIR_ENV):  # debugging: keep this worker's model beside its run files
            rundir.save_model(self.model, self.run_dir / "model.keras")
        run = {"phases": self.phase_records, "runtime": self.runtime.as_json()}
        if self.profile is not None:
            run["profile"] = self.profile.summary
        return TrainResult(self.run_dir, metrics, run)

    def _test_report(self) -> dict:
        """The test split's classification report; with `evaluate.tta`, its test-time augmentation's under `tta`."""
        from cnncli.data.splits import predict_split
        from cnncli.model.predict_loop import keras_predict_views, tta_mean
        from cnncli.model.scores import classification_report, tta_scores

        tta = self.cfg.evaluate.tta
        views, labels = predict_split(
            lambda x: keras_predict_views(self.model, x, tta).reshape(len(x), -1), self.data.x_test, self.data.y_test
        )
        views = views.reshape(len(views), -1, int(self.model.outputs[0].shape[-1]))
        report = classification_report(labels, views[:, 0], self.data.class_names)
        if tta != "none":
            report["tta"] = tta_scores(labels, tta_mean(views), tta)
        return report

    def _warn_skipped(self) -> None:
        """Streamed splits meet their unreadable files only as they read them: by now every split has been
        read, so they are listed here as resident data lists them when it is loaded (data.on_corrupt: skip)."""
        from cnncli.data.base import skipped_warning
        from cnncli.data.splits import skipped

        bad = skipped(self.data.x_train, self.data.x_val, self.data.x_test)
        if bad and self.runtime.is_chief:
            self.reporter.warning(skipped_warning(bad))

    def _check_reload(self, metrics: dict) -> None:
        """--smoke: the saved model.keras must load, with plain Keras's classes only, and predict what the
        trained model does."""
        import keras

        from cnncli.data.splits import head

        foreign = _foreign_classes(self.run_dir / "model.keras")
        if foreign:
            raise CnnError(f"smoke check: model.keras needs classes outside Keras to load: {', '.join(foreign)}")
        x = head(self.data.x_test if len(self.data.x_test) else self.data.x_train, 8)
        reloaded = keras.models.load_model(self.run_dir / "model.keras")
        diff = float(np.max(np.abs(_predict(reloaded, x) - _predict(self.model, x))))
        if not diff <= 1e-5:
            raise CnnError(f"smoke check: model.keras reloaded with different predictions (max difference {diff:.3g})")
        metrics["smoke"] = {"reload_max_abs_diff": diff}

    def _plots(self, metrics: dict) -> None:
        from cnncli.plots import plot_confusion_matrix, plot_curves

        if self.history:
            with fileio.writing(self.run_dir / "curves.png"):
                plot_curves(self.history, self.run_dir / "curves.png")
        if "test" in metrics:
            with fileio.writing(self.run_dir / "confusion_matrix.png"):
                plot_confusion_matrix(
                    np.array(metrics["test"]["confusion_matrix"]),
                    self.data.class_names,
                    self.run_dir / "confusion_matrix.png",
                )


def _foreign_classes(path) -> list[str]:
    """Classes model.keras names (layers, loss, metrics, optimizer) that Keras cannot find by itself: in
    this process cnncli's own are registered, so loading alone would not tell."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    found, stack = set(), [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            module = node.get("module")
            if (
                isinstance(module, str)
                and "class_name" in node
                and module != "builtins"
                and not (module == "keras" or module.startswith("keras."))
            ):
                found.add(f"{module}.{node['class_name']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(found)


def _predict(model, x: np.ndarray) -> np.ndarray:
    from cnncli.model.predict_loop import keras_predict

    return keras_predict(model, x)
