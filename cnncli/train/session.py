"""One training run in progress: the model, its phases, checkpoints and reports.

Every epoch ends with, in this order: history.csv, EarlyStopping's best weights
(carry.py), a TensorFlow checkpoint (model and optimizer), and
checkpoints/state.json naming that checkpoint and holding the callbacks' state and
the config.yaml text the checkpoint belongs to (resuming.py compares it). A
crash between any two of these leaves state.json pointing at a complete,
earlier checkpoint, which `--resume` restores; the epoch order is a function of
(seed, epoch), so the resumed run repeats what the lost one would have done.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli import compat, faults, fileio
from cnncli.errors import CnnError, DataError, RunError
from cnncli.train import carry, ema, rundir
from cnncli.train.ending import RunEnding
from cnncli.train.loop import NonFiniteLoss, Trainer
from cnncli.train.phases import apply_trainable, check_phases, plan_phases
from cnncli.train.resuming import config_cause
from cnncli.train.runinfo import RunRecord
from cnncli.train.runtime import with_loss_scaling
from cnncli.train.schedules import EpochSchedule

if TYPE_CHECKING:
    from cnncli.config.schema import Config
    from cnncli.train.profile import StepProfile
    from cnncli.train.runinfo import RunTracker


class StopRun(Exception):
    """Raised by an `on_epoch` hook to end the run after a committed epoch; run.json keeps `status`."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(message or status)
        self.status = status


class Session(RunRecord, RunEnding):
    """Builds the model and trains its phases epoch by epoch; run.json (runinfo.py) and the end of the run
    (ending.py: test metrics, model.keras, plots) are its other two roles."""

    profile: StepProfile | None = None  # cnn train --profile: traces steps of the first epoch trained
    tracker: RunTracker | None = None  # the chief's, when the run is logged to MLflow
    optimizer: Any = None  # the phase's; with use_ema, whose averages are judged and saved (ema.py)

    def __init__(
        self,
        cfg,
        runtime,
        data,
        plan,
        run_dir: Path,
        reporter,
        smoke: bool = False,
        on_epoch=None,
        resuming: bool = False,
    ):
        from cnncli.config.learning import make_loss
        from cnncli.model.builder import build_model
        from cnncli.train.augment import build_augmentation

        self.cfg, self.runtime, self.data, self.run_dir, self.reporter = cfg, runtime, data, run_dir, reporter
        self.smoke = smoke
        self.on_epoch = on_epoch  # a caller's per-epoch hook (sweep pruning), after the epoch is committed
        self.strategy = runtime.strategy
        mixed = runtime.precision.startswith("mixed")
        with self.strategy.scope():
            self.model = build_model(cfg, plan.shape, output_dtype="float32" if mixed else None)
            self.augment = build_augmentation(cfg)  # float32 on the raw pixels, whatever the precision
        self.loss_fn = make_loss(cfg.train.loss)  # takes the class indices the data holds, whatever the loss
        self._check_labels()
        check_phases(self.model, cfg)
        self.history: list[dict] = []
        self.phase_records: list[dict] = []
        self.best: dict = {}
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.status = "running"
        # The config.yaml text each checkpoint is written with, kept beside it in state.json (resuming.py).
        self.config_text = (run_dir / "config.yaml").read_text()
        self.config_update: str | None = None  # config.yaml's new text, written once a resume has restored
        if not resuming:  # a resume rewrites run.json only once its checkpoint is restored (_restore)
            self.write_run_json()

    # ------------------------------------------------------------------ checks and records
    def _check_labels(self) -> None:
        outputs = int(self.model.outputs[0].shape[-1])
        top = max((int(y.max()) for y in (self.data.y_train, self.data.y_val, self.data.y_test) if len(y)), default=0)
        if top >= outputs:
            message = (
                f"{self.data.source}: labels go up to {top} ({self.data.num_classes} classes) "
                f"but the model outputs {outputs} values; set the last layer's units to "
                f"{self.data.num_classes}"
            )
            last = len(self.cfg.model.layers) - 1
            if last >= 0 and "units" in self.cfg.model.layers[last].args:
                raise self.cfg.error(message, ("model", "layers", last, "units"))
            raise DataError(message)
        if outputs > self.data.num_classes:  # an output of no class: the test report could not name it
            from cnncli.model.builder import check_classes

            check_classes(self.cfg, outputs, self.data.num_classes, self.data.source)

    # ------------------------------------------------------------------ training
    def train(self, state: dict | None) -> None:
        """Train every phase from `state` (a resumed run's checkpoint state) or from the start."""
        phases = plan_phases(self.cfg)
        start_phase, done_in_phase = 0, 0
        if state is not None:
            _check_scaling(self.cfg, state, self.run_dir)
            self.history = state["history"]
            self.phase_records = state.get("phases", [])
            self.best = state.get("best", {})
            start_phase, done_in_phase = state["phase"], state["phase_epochs_done"]
            apply_trainable(self.model, self.cfg, phases[start_phase].trainable)
            self.reporter.message(f"resuming after epoch {len(self.history)}")
            if state.get("stopped") or done_in_phase >= phases[start_phase].epochs:  # the phase ended: weights only
                optimizer = self._averaging_optimizer(phases[start_phase])  # with use_ema, its averages too
                self._restore(self._checkpoint(optimizer), state)
                ema.finalize(self.model, optimizer)
                self._end_phase_as_committed(state)
                if state.get("stopped"):
                    self.model.stop_training = True
                    self.reporter.message(f"early stopping after epoch {len(self.history)}")
                    return
                start_phase, done_in_phase = start_phase + 1, 0
        total = sum(1 if self.smoke else p.epochs for p in phases)
        for phase in phases[start_phase:]:
            resume = state if (state is not None and phase.index == state["phase"] and done_in_phase) else None
            self._train_phase(phase, total, done_in_phase, resume)
            done_in_phase = 0
            if getattr(self.model, "stop_training", False):
                break

    def _train_phase(self, phase, total_epochs: int, done: int, state: dict | None) -> None:
        """One phase: its optimizer, its trainer, then its epochs from `done` (a resume starts mid-phase)."""
        apply_trainable(self.model, self.cfg, phase.trainable)
        schedule = EpochSchedule(self.cfg.train.lr_schedule)
        overrides = _rate_overrides(phase, schedule)
        optimizer, rate_groups, metrics = self._compile(phase, overrides)
        self.optimizer = optimizer
        checkpoint = self._checkpoint(optimizer)
        if state is not None:
            self._restore(checkpoint, state)
        trainer = self._trainer(optimizer, metrics)
        callbacks = self._callbacks(schedule)
        record = self._phase_record(phase, optimizer, rate_groups)
        if state is not None and self.cfg.train.lr_schedule is None:
            self._apply_changed_rate(optimizer, phase, overrides, record)
        callbacks.on_train_begin(carry.saved_state(state), state and self.run_dir / state["checkpoint"])
        for e in range(done, 1 if self.smoke else phase.epochs):
            row, timing = self._train_epoch(trainer, optimizer, schedule, callbacks, phase, record, total_epochs)
            self._end_of_epoch(checkpoint, phase, e + 1, row, callbacks)
            self._after_epoch(row, timing)
            if getattr(self.model, "stop_training", False):
                self.reporter.message(f"early stopping after epoch {row['epoch']}")
                break
        ema.finalize(self.model, optimizer)  # as model.fit does, before EarlyStopping puts back its best
        callbacks.on_train_end()

    # === A phase's pieces ===
    def _averaging_optimizer(self, phase) -> Any:
        """The phase's optimizer, built, when it keeps weight averages (use_ema) that a resume must restore."""
        if not phase.optimizer.args.get("use_ema"):
            return None
        optimizer = self._compile(phase, _rate_overrides(phase, EpochSchedule(self.cfg.train.lr_schedule)))[0]
        self.optimizer = optimizer
        return optimizer

    def _compile(self, phase, overrides: dict) -> tuple:
        """The phase's optimizer (per-block rates and loss scaling wrapped in), built; the metrics; the model
        compiled."""
        from cnncli.config.learning import compile_args, excluded_from_decay, make_metric, make_optimizer

        path = f"train.phases[{phase.index}].optimizer" if self.cfg.train.phases else "train.optimizer"
        with self.strategy.scope():
            optimizer = make_optimizer(phase.optimizer, path, **overrides)
            rate_groups = self._rate_groups(phase)
            if rate_groups:
                from cnncli.train.layer_rates import layerwise, multipliers_for

                variables = self.model.trainable_variables
                multipliers = multipliers_for(variables, rate_groups)
                optimizer = layerwise(optimizer, variables, multipliers, excluded_from_decay(phase.optimizer))
            optimizer = with_loss_scaling(optimizer, self.runtime.precision)
            optimizer.build(self.model.trainable_variables)
            metrics = [make_metric(m, self.cfg.train.loss) for m in self.cfg.train.metrics]
            # Lets Keras callbacks reach the optimizer, and is what model.keras loads with (the steps use
            # self.loss_fn, which takes class indices whatever the loss).
            self.model.compile(optimizer=optimizer, **compile_args(self.cfg.train.loss, self.cfg.train.metrics))
        return optimizer, rate_groups, metrics

    def _trainer(self, optimizer, metrics) -> Trainer:
        cfg = self.cfg
        assert cfg.seed is not None  # the job chose and recorded one before the session started
        trainer = Trainer(
            self.model,
            optimizer,
            self.loss_fn,
            metrics,
            self.strategy,
            cfg.train.batch_size,
            cfg.seed,
            self.augment,
            chunks_per_epoch=20 if _live(self.reporter) else 1,
            steps_per_execution=cfg.runtime.steps_per_execution,
            jit_compile=cfg.runtime.jit_compile,
            time_input=not compat.determinism_on(),  # TF refuses timestamps under it
        )
        trainer.set_data(self.data.x_train, self.data.y_train)
        if self.profile is not None and not self.profile.summary:
            self.profile.attach(trainer)
        return trainer

    def _phase_record(self, phase, optimizer, rate_groups: list) -> dict:
        """The phase's entry in run.json: found again on a resume, else started."""
        record = next((r for r in self.phase_records if r["index"] == phase.index), None)
        if record is not None:
            return record
        trainable = int(sum(np.prod(w.shape) for w in self.model.trainable_weights))
        record = {
            "index": phase.index,
            "epochs": 0,
            "trainable": phase.trainable,
            "trainable_params": trainable,
            "non_trainable_params": int(self.model.count_params()) - trainable,
            "optimizer": phase.optimizer.type,
            "learning_rates": [],
            "epoch_seconds": [],
            "train_seconds": 0.0,
            "examples": 0,
            "examples_per_second": 0.0,
        }
        if rate_groups:  # the rates at the start of the phase; a schedule scales them all alike
            record["layer_lr_decay"] = phase.layer_lr_decay
            record["layer_learning_rates"] = [g.as_json(_current_lr(optimizer)) for g in rate_groups]
        self.phase_records.append(record)
        return record

    def _train_epoch(
        self, trainer, optimizer, schedule, callbacks, phase, record: dict, total_epochs: int
    ) -> tuple[dict, dict]:
        """One epoch trained and scored: its history row, handed to the callbacks, and its timing."""
        index = len(self.history)  # 0-based epoch over all phases
        lr = schedule.rate(index)
        if lr is not None:
            optimizer.learning_rate = lr
        self.reporter.epoch_begin(index + 1, total_epochs, trainer.steps_per_epoch())
        callbacks.on_epoch_begin(index)
        batch_size, examples = self.cfg.train.batch_size, len(self.data.x_train)
        try:
            result = trainer.train_epoch(
                index,
                on_chunk=lambda d, s, logs, sec: self.reporter.chunk(d, s, logs, sec, min(d * batch_size, examples)),
            )
        except NonFiniteLoss as exc:
            self._non_finite(index + 1, exc.step, optimizer)
        faults.point("epoch_trained")
        row: dict[str, Any] = {"epoch": index + 1}
        if self.cfg.train.phases:
            row["phase"] = phase.index + 1
        row.update(result.logs)
        with ema.averaged(self.model, optimizer):  # scored, and kept by EarlyStopping, as the averages
            if len(self.data.x_val):
                scores = self.score(*trainer.predict_split(self.data.x_val, self.data.y_val))
                row.update({f"val_{k}": v for k, v in scores.items()})
            row["learning_rate"] = float(np.float32(_current_lr(optimizer)))
            timing = _add_timing(record, result)
            record["learning_rates"].append(row["learning_rate"])
            self.history.append(row)
            callbacks.on_epoch_end(index, dict(row))
        return row, timing

    def _after_epoch(self, row: dict, timing: dict) -> None:
        """Once the epoch is committed: the reporter, the tracker, then the caller's hook (which may stop the run)."""
        self.reporter.epoch_end({**row, **timing})
        if self.tracker is not None:
            self.tracker.epoch(dict(row))
        if self.on_epoch is not None:
            try:
                self.on_epoch(dict(row))
            except StopRun as stop:
                self.mark(stop.status)
                raise

    def _checkpoint(self, optimizer=None):
        """A TF checkpoint of every model variable (weights, BatchNorm statistics, dropout and
        augmentation RNG states) and the optimizer. A Keras 3 functional model is not tracked
        through `tf.train.Checkpoint(model=...)` (its layers are not checkpoint dependencies),
        so the variables are listed explicitly; the order is fixed by the config."""
        import tensorflow as tf

        variables = list(self.model.variables) + (list(self.augment.variables) if self.augment is not None else [])
        kwargs = {"weights": variables}
        if optimizer is not None:
            kwargs["optimizer"] = optimizer
        return tf.train.Checkpoint(**kwargs)

    def _restore(self, checkpoint, state: dict) -> None:
        """Load the checkpoint state.json names; only then does the resumed run write: config.yaml's
        new epoch count (--epochs), then run.json. A checkpoint that does not fit leaves the run untouched,
        and the error names the config key that changed since it was written."""
        try:
            rundir.read_checkpoint(checkpoint, self.run_dir / state["checkpoint"])
        except RunError as exc:
            cause = config_cause(state, self.cfg)
            if cause:
                raise RunError(f"{exc}; {cause}") from None
            raise
        if self.config_update is not None and self.config_update != self.config_text:
            fileio.write(self.run_dir / "config.yaml", self.config_update)
            self.config_text = self.config_update
        self.write_run_json()

    def _rate_groups(self, phase) -> list:
        """Per-block rate multipliers of a phase with `layer_lr_decay` (after apply_trainable), else []."""
        from cnncli.train.phases import backbone_of

        if phase.layer_lr_decay is None:
            return []
        from cnncli.train.layer_rates import rate_groups

        return rate_groups(self.model, backbone_of(self.model, self.cfg), phase.layer_lr_decay)

    def _end_phase_as_committed(self, state: dict) -> None:
        """A resume after the phase's last epoch was committed: what EarlyStopping's on_train_end did then."""
        es = self.cfg.train.early_stopping
        saved = carry.saved_state(state).get("EarlyStopping") or {}
        if es is not None and es.restore_best_weights and saved.get("best_weights"):
            self.model.set_weights(carry.read_best_weights(self.run_dir / state["checkpoint"]))

    def _callbacks(self, schedule: EpochSchedule):
        import keras

        cbs = []
        es = self.cfg.train.early_stopping
        if es is not None:
            cbs.append(keras.callbacks.EarlyStopping(**es.model_dump()))
        if schedule.callback is not None:
            cbs.append(schedule.callback)
        if self.runtime.is_chief and importlib.util.find_spec("tensorboard") is not None:
            cbs.append(keras.callbacks.TensorBoard(log_dir=str(self.run_dir / "logs"), write_graph=False))
        return carry.ResumableCallbacks(cbs, self.model)

    def score(self, probs: np.ndarray, y: np.ndarray) -> dict:
        """Loss and the configured metrics on predicted probabilities."""
        from cnncli.config.learning import make_metric

        out = {"loss": float(np.mean(self.loss_fn(y, probs)))}
        for name in self.cfg.train.metrics:
            metric = make_metric(name, self.cfg.train.loss)
            metric.update_state(y, probs)
            out[metric.name] = float(metric.result())
        return out

    def _end_of_epoch(self, checkpoint, phase, phase_epochs_done: int, row: dict, callbacks) -> None:
        rundir.write_history(self.run_dir / "history.csv", self.history)
        faults.point("history_written")
        self._track_best(row)
        prefix = f"checkpoints/epoch-{row['epoch']:04d}"
        best_weights = callbacks.best_weights()
        if best_weights is not None:  # beside the checkpoint, under its prefix: committed by the same state.json
            carry.write_best_weights(self.run_dir / prefix, best_weights)
        rundir.write_checkpoint(checkpoint, self.run_dir / prefix)
        faults.point("checkpoint_written")
        state = {
            "phase": phase.index,
            "phase_epochs_done": phase_epochs_done,
            "checkpoint": prefix,
            "history": self.history,
            "phases": self.phase_records,
            "best": self.best,
            "callbacks": callbacks.state(),
            "stopped": bool(getattr(self.model, "stop_training", False)),
            "config": self.config_text,
            "input_scaling": INPUT_SCALING,
        }
        fileio.write_json(self.run_dir / rundir.STATE_FILE, state)
        faults.point("state_written")
        rundir.prune_checkpoints(self.run_dir)
        self.write_run_json()

    def _track_best(self, row: dict) -> None:
        spec = self.cfg.train.checkpoint
        value = row.get(spec.monitor)
        if value is None:
            return
        mode = spec.mode if spec.mode != "auto" else ("max" if "acc" in spec.monitor else "min")
        better = not self.best or (value > self.best["value"] if mode == "max" else value < self.best["value"])
        if better:
            self.best = {"monitor": spec.monitor, "value": value, "epoch": row["epoch"]}
            if spec.save_best_only:
                with ema.averaged(self.model, self.optimizer):
                    rundir.save_model(self.model, self.run_dir / "checkpoints" / "best.keras")

    def _apply_changed_rate(self, optimizer, phase, overrides: dict, record: dict) -> None:
        """A learning rate changed for the resume (`--set`) beats the one restored from the checkpoint.

        The rate is an optimizer variable, so the checkpoint brings back the old one; without
        this, `--resume --set train.optimizer.learning_rate=...` (what a diverged run is told
        to try) would be silently ignored. Unchanged rates (and those a schedule moved) stay.
        """
        configured = overrides.get("learning_rate", phase.optimizer.args.get("learning_rate"))
        started = record["learning_rates"][:1]
        if isinstance(configured, (int, float)) and started and np.float32(configured) != np.float32(started[0]):
            optimizer.learning_rate = float(configured)
            self.reporter.message(f"learning rate {configured:g} (changed for this resume) replaces {started[0]:.3g}")

    def _non_finite(self, epoch: int, step: int, optimizer) -> None:
        lr = float(_current_lr(optimizer))
        last = (
            f"epoch {len(self.history)} is kept in {self.run_dir / 'checkpoints'}"
            if self.history
            else "no epoch had completed"
        )
        self.mark("failed")
        lower = f"{lr / 10:.3g}"
        if self.cfg.train.lr_schedule is not None or self.cfg.train.phases:
            how = "lower the rates of train.lr_schedule or train.phases"
        elif self.history:
            how = f"cnn train --resume {self.run_dir} --set train.optimizer.learning_rate={lower}"
        else:
            how = f"--set train.optimizer.learning_rate={lower}"
        raise CnnError(
            f"the loss became NaN or infinite at epoch {epoch}, step {step} "
            f"(learning rate {lr:.3g}); training stopped and {last}. "
            f"Try a lower learning rate, e.g. {lower}: {how}"
        )


# Which input scaling the checkpoints were trained behind: 2 = Keras's own layers, a caffe-mode backbone's
# first convolution taking RGB (model/preprocessing.py); before, ImagenetPreprocess fed it BGR.
INPUT_SCALING = 2


def _check_scaling(cfg, state: dict, run_dir: Path) -> None:
    """A run started before the scaling changed: its caffe-mode backbone learned BGR, which the model
    built now no longer feeds it, so resuming would silently train and report a different model."""
    from cnncli.config.vocabulary import BACKBONES
    from cnncli.model.preprocessing import backbone_mode

    backbone = cfg.model.backbone
    name = backbone.name if backbone is not None else None
    if state.get("input_scaling", 1) >= INPUT_SCALING or name is None:
        return
    if backbone_mode(BACKBONES.canonical(name) or name) == "caffe":
        raise CnnError(
            f"`{run_dir}` was started by an older cnncli, whose {backbone.name} took its input in BGR "
            "order; this version feeds RGB, so the run cannot be resumed: start it again with "
            f"cnn train {run_dir / 'config.yaml'}"
        )


def history_columns(cfg: Config) -> list[str]:
    """The measurement columns of `cfg`'s history.csv, in order, as `Session` writes its rows (a test trains
    and compares): the loss and metrics, the same on the validation split when there is one, the rate."""
    from cnncli.config.learning import make_metric

    names = ["loss", *(make_metric(m, cfg.train.loss).name for m in cfg.train.metrics)]
    return [*names, *(f"val_{n}" for n in names if cfg.data.validation_split > 0), "learning_rate"]


def _current_lr(optimizer) -> float:
    return float(
        optimizer.learning_rate.numpy() if hasattr(optimizer.learning_rate, "numpy") else optimizer.learning_rate
    )


def _live(reporter) -> bool:
    from cnncli.train.progress import RichReporter

    return isinstance(reporter, RichReporter)


def _rate_overrides(phase, schedule: EpochSchedule) -> dict:
    """The learning rate the phase or a per-step schedule sets in place of the optimizer's own."""
    overrides = {}
    if phase.learning_rate is not None:
        overrides["learning_rate"] = phase.learning_rate
    if schedule.step_schedule is not None:
        overrides["learning_rate"] = schedule.step_schedule
    return overrides


def _add_timing(record: dict, result) -> dict:
    """An epoch's time added to its phase's record; the timing shown beside its row.

    Timings stay out of history.csv so that deterministic runs give identical files."""
    timing = {
        "seconds": round(result.seconds, 4),
        "examples_per_second": round(result.examples / result.seconds, 1) if result.seconds else 0.0,
    }
    if result.waiting is not None and result.seconds:
        timing["waiting_for_data"] = round(min(1.0, result.waiting / result.seconds), 3)
    record["epochs"] += 1
    record["epoch_seconds"].append(timing["seconds"])
    record["train_seconds"] = round(record["train_seconds"] + result.seconds, 4)
    record["examples"] += result.examples
    record["examples_per_second"] = round(record["examples"] / record["train_seconds"], 1)
    return timing
