"""`cnn train`: config in, a complete run directory out.

Order of work: resolve the config and seed → set up devices and precision →
load the data → build the model under the strategy → train each phase,
checkpointing every epoch → evaluate on the test split → save the model,
metrics and plots. `--resume` re-enters this at the last completed epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli import compat, faults, fileio
from cnncli.config.loading import Override, load_config
from cnncli.config.schema import Config
from cnncli.errors import CnnError, DataError, Interrupted
from cnncli.train import rundir
from cnncli.train.cluster import WORKER_DIR_ENV, chief_run_dir, lost_worker, publish_run_dir
from cnncli.train.progress import Reporter
from cnncli.train.result import TrainResult
from cnncli.train.resuming import check_config_unchanged, check_sources, finished, lengthened

if TYPE_CHECKING:
    from cnncli.train.runinfo import RunTracker


@dataclass
class TrainOptions:
    config: Path | list[Path] | None = None  # several files merge left to right
    resume: Path | None = None
    overrides: list[str] = field(default_factory=list)
    output: Path = Path("runs")
    name: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    device: str | None = None
    smoke: bool = False
    profile: int = 0  # steps to trace with TensorFlow's profiler (0: none)
    run_dir: Path | None = None  # exactly this new directory instead of output/<name>/<timestamp> (sweep trials)
    on_epoch: Callable[[dict], None] | None = None  # called with each committed history row; may raise StopRun
    tracker: RunTracker | None = None  # the chief logs the run to MLflow as it trains
    load_resident: Callable | None = None  # reads resident data in place of cnncli.data.load (a sweep's memo)


def resolve_config(opts: TrainOptions) -> tuple[Config, Path | None, dict | None]:
    """The config to run; for --resume, the run's own resolved config and saved state."""
    cli = list(opts.overrides)
    for key, value, option in (
        ("train.epochs", opts.epochs, "--epochs"),
        ("train.batch_size", opts.batch_size, "--batch-size"),
        ("name", opts.name, "--name"),
        ("runtime.device", opts.device, "--device"),
    ):
        if value is not None:  # a problem with it names the option as typed; a name stays text (`a: b`, `007`)
            text = json.dumps(value) if key == "name" else value
            cli.append(Override(f"{key}={text}", given=f"{option} {value}", option=option))
    check_sources(opts.config, opts.resume)
    if opts.resume is not None:
        run_dir = rundir.find_run_dir(opts.resume)
        return load_config(run_dir / "config.yaml", cli), run_dir, read_state(run_dir)
    from cnncli.model.raw_checks import raw_spec_problems

    assert opts.config is not None  # check_sources: a config or --resume
    return load_config(opts.config, cli, spec_check=raw_spec_problems), None, None


def read_state(run_dir: Path) -> dict | None:
    """The last committed epoch of a run (checkpoints/state.json); None before the first one."""
    path = run_dir / rundir.STATE_FILE
    return rundir.read_json(path) if path.exists() else None


def has_convolutions(cfg: Config) -> bool:
    """Whether the model convolves (a backbone, or a layer such as Conv2D): one input to the precision choice."""
    return cfg.model.backbone is not None or any("conv" in s.type.lower() for s in cfg.model.layers)


class _StopSignal:
    """SIGTERM behaves like Ctrl-C: stop at the next chunk boundary, keep the run resumable."""

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread (tests driving the job in a thread)
            self._old = None
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


@contextlib.contextmanager
def _before_training(doing: str):
    """Ctrl-C (or SIGTERM) before the run directory exists: say what stopped, and that nothing was written."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"stopped while {doing}, before training started; nothing was written") from None


def run_training(opts: TrainOptions, reporter: Reporter) -> TrainResult:
    """Train as `opts` asks (a new run, or --resume) and return what the run wrote."""
    rundir.no_world_writes()
    with _StopSignal(), contextlib.ExitStack() as held:
        with _before_training("reading the config"):
            cfg, resume_dir, state = resolve_config(opts)
        from cnncli.train.cluster import process_role

        chief = process_role(cfg.runtime).is_chief
        if resume_dir is not None:
            if chief:  # other workers only read it
                held.enter_context(rundir.locked(resume_dir))
                state = read_state(resume_dir)  # as committed, now that no other process can write it
            # Before the first write: a resume that cannot go on leaves the run exactly as it found it.
            check_config_unchanged(resume_dir, state)
            done = finished(resume_dir, cfg, state, opts.epochs)
            if done is not None:
                metrics = resume_dir / "metrics.json"
                return TrainResult(
                    resume_dir,
                    rundir.read_json(metrics) if metrics.exists() else {},
                    {"status": "complete"},
                    untrained=done,
                )
            if chief:
                rundir.reconcile(resume_dir, state)
        return _run(opts, reporter, cfg, resume_dir, state, held)


def _run(
    opts: TrainOptions,
    reporter: Reporter,
    cfg: Config,
    resume_dir: Path | None,
    state: dict | None,
    held: contextlib.ExitStack,
) -> TrainResult:
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31)  # recorded in config.yaml so the run can be repeated
    import keras

    from cnncli.train.decisions import model_size, step_macs, thread_warnings, threads_line
    from cnncli.train.runtime import check_global_batch, setup_runtime

    # The run's precision is Keras's global dtype policy while it builds its model; a caller that goes on
    # in this process (a sweep, a test, a notebook) gets its own policy back, however the run ends.
    held.callback(keras.config.set_dtype_policy, keras.config.dtype_policy())
    from cnncli.model.builder import check_layer_args

    # The step-cost estimate below reads the layers' arguments: they are checked first, so a value of the
    # wrong kind gets the line `cnn validate` gives it rather than a traceback from the estimate.
    check_layer_args(cfg)
    with _before_training("setting up the devices"):
        small, size_reason = model_size(cfg)
        runtime = setup_runtime(cfg.runtime, has_convolutions(cfg), small, step_macs(cfg), size_reason=size_reason)
    if cfg.search is not None:
        reporter.message("note: `cnn tune` uses the `search:` section; this trains the config as written")
    reporter.message(
        f"device {runtime.device} ({', '.join(runtime.devices)}), {runtime.num_replicas} replica(s); "
        f"precision {runtime.precision}: {runtime.precision_reason}"
    )
    reporter.message(threads_line(runtime.threads["intra_op"], runtime.threads["inter_op"], runtime.threads["reason"]))
    for warning in thread_warnings(cfg.runtime.intra_op_threads, cfg.runtime.inter_op_threads, runtime.cpu["cores"]):
        reporter.warning(warning)
    check_global_batch(cfg.train.batch_size, runtime.num_replicas)  # before a data load that may be slow
    if resume_dir is None:
        from cnncli.model.builder import check_model

        # Before the data and the run directory: a slow load, then an error that the config showed, is cruel.
        # (After setup_runtime: the checks create Keras metrics, which would fix the TF context too early;
        # before the seed: the trial build draws initial weights.)
        from cnncli.train.augment import check_augmentation

        with _before_training("checking the model"):
            check_model(cfg)
            check_augmentation(cfg, runtime.precision)
        if runtime.is_chief:
            rundir.check_output(opts.run_dir.parent if opts.run_dir else opts.output, cfg.name or "run")
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    compat.op_determinism(cfg.deterministic)  # on, or off again after a deterministic run in this process

    with _before_training("loading the data"):
        data, plan = load_data(cfg, opts.smoke, reporter, runtime, opts.load_resident)
    shown = None  # the run directory to name on the way out, where it is not this process's own
    if resume_dir is not None and runtime.is_chief:
        run_dir = resume_dir
    elif runtime.is_chief:
        run_dir = rundir.create_run_dir(opts.output, cfg.name or "run", exactly=opts.run_dir)
        faults.point("run_dir_created")
    else:  # other workers train in step with the chief but keep nothing
        run_dir = _worker_dir(cfg, runtime, resume_dir, state)
        if not os.environ.get(WORKER_DIR_ENV):
            held.callback(shutil.rmtree, run_dir, ignore_errors=True)  # however this process ends
            chief = _chief_run_dir(resume_dir)
            shown = Path(chief) if chief else None
    if runtime.is_chief and runtime.num_workers > 1:
        publish_run_dir(run_dir)
    if run_dir != resume_dir:
        fileio.write(run_dir / "config.yaml", cfg.to_yaml())
        faults.point("config_written")
        held.enter_context(rundir.locked(run_dir))

    from cnncli.train.session import Session

    session = None
    previous = None  # where the interrupted run was logged to MLflow
    if run_dir == resume_dir and (run_dir / "run.json").exists():
        previous = rundir.read_json(run_dir / "run.json").get("tracking")
    restoring = run_dir == resume_dir and state is not None  # run.json is rewritten once the checkpoint is restored
    try:
        session = Session(
            cfg, runtime, data, plan, run_dir, reporter, smoke=opts.smoke, on_epoch=opts.on_epoch, resuming=restoring
        )
        if restoring:  # config.yaml keeps saying how long the run trains
            session.config_update = lengthened(run_dir, cfg, state or {})
        if opts.tracker is not None and runtime.is_chief:
            opts.tracker.start(run_dir, previous)  # a resumed run continues the MLflow run it had
            session.tracker = opts.tracker
            if not restoring:
                session.write_run_json()
        if opts.profile and runtime.is_chief:
            from cnncli.train.profile import StepProfile

            session.profile = StepProfile(opts.profile, run_dir / "logs")
        session.train(state)
        result = session.finish()
        if shown is not None:
            result.run_dir = shown
        return result
    except KeyboardInterrupt:
        if session is not None:
            session.mark("interrupted")
        raise Interrupted(
            f"stopped; the run is resumable from its last completed epoch: cnn train --resume {shown or run_dir}"
        ) from None
    except tf.errors.OpError as exc:
        lost = lost_worker(exc, shown or run_dir) if runtime.num_workers > 1 else None
        if lost is None:
            _discard_unstarted(run_dir, resume_dir)
            raise
        if session is not None:
            session.mark("interrupted")
        raise lost from None
    except Exception:
        if session is not None:
            session.end_tracking("failed")
        _discard_unstarted(run_dir, resume_dir)
        raise


def _discard_unstarted(run_dir: Path, resume_dir: Path | None) -> None:
    """A run that failed before its first epoch was committed has nothing to keep or resume."""
    if resume_dir is None and not (run_dir / rundir.STATE_FILE).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _chief_run_dir(resume_dir: Path | None) -> str | None:
    """Where the chief writes this run (it says so through the cluster); resuming, the directory given."""
    import tensorflow as tf

    if resume_dir is not None:
        return str(resume_dir)
    try:
        return chief_run_dir()
    except tf.errors.OpError as exc:
        raise lost_worker(exc, "RUN_DIR") or exc from None


def _worker_dir(cfg: Config, runtime, resume_dir: Path | None, state: dict | None) -> Path:
    """A non-chief worker's run directory: temporary, or kept under $CNNCLI_WORKER_DIR for debugging.

    Resuming, the worker starts from a copy of the checkpoint that the chief's
    state.json names, so it must see the chief's run directory at the same path
    (a shared filesystem); it never writes there.
    """
    keep = os.environ.get(WORKER_DIR_ENV)
    if keep:
        run_dir = rundir.create_run_dir(Path(keep), f"{cfg.name or 'run'}-worker{runtime.worker_index}")
    else:
        run_dir = Path(tempfile.mkdtemp(prefix=f"cnncli-worker{runtime.worker_index}-"))
    if resume_dir is not None and state is not None:
        source, target = resume_dir / "checkpoints", run_dir / "checkpoints"
        target.mkdir(exist_ok=True)
        parts = list(source.glob(Path(state["checkpoint"]).name + ".*")) + list(source.glob("best.keras"))
        if not any(p.suffix == ".index" for p in parts):
            raise CnnError(
                f"{source}: no checkpoint `{Path(state['checkpoint']).name}` to resume from; every "
                "worker must see the chief's run directory at the same path (a shared filesystem)"
            )
        for part in parts:
            shutil.copy2(part, target / part.name)
    return run_dir


def load_data(
    cfg: Config, smoke: bool, reporter: Reporter, runtime: Any = None, load_resident: Callable | None = None
) -> tuple[Any, Any]:
    """The run's data (converted to the model's input; cut to a couple of batches for --smoke) and input plan."""
    from cnncli.data import cache_streams, convert_images, open_data
    from cnncli.model.inputs import plan_input

    faults.point("data_load")
    plan = plan_input(cfg)
    for note in plan.notes:
        reporter.message(f"note: {note}")
    t0 = time.perf_counter()
    assert cfg.seed is not None  # chosen and recorded when the config was read
    data = open_data(
        cfg.data,
        cfg.seed,
        plan.shape,
        runtime.worker_index if runtime else 0,
        runtime.num_workers if runtime else 1,
        load_resident,
    )
    for warning in data.warnings:
        reporter.warning(warning)
    assert data.cache is not None  # open_data records how the data is held
    streamed = data.cache["mode"] != "memory"
    reporter.message(
        f"data {'streamed from the files' if streamed else 'resident in memory'}"
        f"{' through a disk cache' if data.cache['mode'] == 'disk' else ''}: {data.cache['why']}"
    )
    if tuple(data.input_shape) != tuple(plan.shape) and not streamed:
        for split in ("train", "val", "test"):
            x = getattr(data, f"x_{split}")
            setattr(
                data, f"x_{split}", convert_images(x, plan.shape) if len(x) else np.zeros((0, *plan.shape), np.uint8)
            )
        reporter.message(f"note: images converted from {data.x_train.shape[1:]} to the model's input {plan.shape}")
    if smoke:  # a couple of batches of everything: proves the pipeline, not the model
        b = cfg.train.batch_size
        data.x_train, data.y_train = data.x_train[: 2 * b], data.y_train[: 2 * b]
        data.x_val, data.y_val = data.x_val[:b], data.y_val[:b]
        data.x_test, data.y_test = data.x_test[:b], data.y_test[:b]
    if len(data.x_train) == 0:
        raise DataError("the training split is empty (check data.limit and data.validation_split)")
    cache_streams(data, reporter.first_pass)
    reporter.message(
        f"data {data.source}: {len(data.x_train):,} train / {len(data.x_val):,} val / "
        f"{len(data.x_test):,} test, {data.num_classes} classes, "
        f"loaded in {time.perf_counter() - t0:.1f}s"
    )
    return data, plan
