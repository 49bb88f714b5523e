"""`cnn tune`: run a config's `search:` section as an Optuna study in a sweep directory.

Each trial is an ordinary run (trials/0007/) trained by the same job as
`cnn train`, with the sampled values as --set overrides; how several processes
share the study is in study.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import secrets
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnncli.config.loading import load_config
from cnncli.config.schema import Config
from cnncli.errors import CnnError, ConfigError, Interrupted, UsageError
from cnncli.train import rundir
from cnncli.tune import space, tracking
from cnncli.tune.study import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    SQLITE_TIMEOUT,
    Heartbeat,
    hold,
    next_trial,
    retry_once,
    sweep_lock,
)

if TYPE_CHECKING:
    from optuna.study import Study

    from cnncli.config.schema import DataConfig
    from cnncli.data.base import Dataset
    from cnncli.train.progress import Reporter
    from cnncli.tune.tracking import LiveRun


class MetricMissing(CnnError):
    """The searched metric is not a history column: every trial would fail the same way."""


@dataclass
class TuneOptions:
    config: Path
    overrides: list[str] = field(default_factory=list)
    trials: int | None = None
    storage: str | None = None
    study: str | None = None
    output: Path | None = None
    mlflow: str | None = None


@dataclass
class Sweep:
    """What one process needs to run trials of a study."""

    dir: Path
    cfg: Config
    opts: TuneOptions
    study: Study
    n_trials: int
    metric: str
    owner: Path  # this process's lock file; free once it exits, however it exits
    notes: list[str] = field(default_factory=list)  # decisions the user should read, one line each


def open_sweep(opts: TuneOptions) -> Sweep:
    """Check the config, make or reopen the sweep directory, and load or create the study."""
    from cnncli.model.raw_checks import raw_spec_problems

    cfg = load_config(opts.config, opts.overrides, spec_check=raw_spec_problems)
    if cfg.search is None:
        # the file as a whole: a missing section has no line, and the root's would point at its first key
        raise ConfigError.single(
            "the config has no `search:` section, which cnn tune searches; add one, e.g. "
            "`search: {params: {train.optimizer.learning_rate: {loguniform: [0.0001, 0.01]}}}` "
            "(see docs/experiments.md, Sweeps)",
            file=cfg._file,
        )
    problems = space.search_problems(cfg, opts.config, opts.overrides)
    if problems:
        raise ConfigError(problems, cfg._file)
    where = tracking.target(cfg.tracking, opts.mlflow)
    if where is not None:  # MLflow missing, or no server at the URI: refused, as by cnn train, before any file
        tracking.client(where[0])
    name = opts.study or cfg.name or "sweep"
    sweep_dir = Path(opts.output) if opts.output else rundir.create_run_dir(Path("sweeps"), name)
    new_dir = not (sweep_dir / "trials").exists()
    try:
        (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
        (sweep_dir / ".workers").mkdir(exist_ok=True)
    except OSError as exc:
        raise CnnError(f"cannot create `{sweep_dir}`: {exc.strerror or exc}") from None
    owner = sweep_dir / ".workers" / f"{platform.node()}-{os.getpid()}-{secrets.token_hex(3)}.lock"
    hold(owner)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are meant for study.optimize; our own loop records them (study.Heartbeat).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    with sweep_lock(sweep_dir):  # table creation and study creation race between processes otherwise
        try:
            storage = open_storage(opts.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}")
        except CnnError:
            if new_dir:  # nothing of a study was written: leave no empty sweep directory behind
                shutil.rmtree(sweep_dir, ignore_errors=True)
            raise
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            load_if_exists=True,
            direction=space.direction(cfg.search),
            sampler=space.make_sampler(cfg.search, cfg.seed),
            pruner=space.make_pruner(cfg.search, cfg.total_epochs),
        )
        if not study.trials and any((sweep_dir / "trials").iterdir()):
            raise CnnError(
                f"`{sweep_dir}` holds the trials of another study (study `{name}` in "
                f"{'that storage' if opts.storage else 'its study.db'} has none); "
                "choose another --output or the same --study and --storage"
            )
    n_trials, notes = trial_budget(cfg, opts.trials)
    return Sweep(sweep_dir, cfg, opts, study, n_trials, cfg.search.metric, owner, notes)


def trial_budget(cfg: Config, trials_option: int | None) -> tuple[int, list[str]]:
    """The trials to run to, and why when that is fewer than asked: a grid has only so many points, and
    Optuna's GridSampler would run them again (with a warning per trial) rather than stop."""
    search = cfg.search
    assert search is not None  # a sweep's config has a search section
    asked = trials_option or search.trials
    if search.sampler != "grid":
        return asked, []
    points = space.grid_size(search.params)
    if asked <= points:
        return asked, []
    source = "--trials" if trials_option else "search.trials"
    return points, [
        f"{source} asks for {asked} trials but the grid has {points} points: running {points}, each point once"
    ]


DRIVERS = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
}  # module SQLAlchemy imports -> the package that provides it
CREATION_ATTEMPTS = 3


def open_storage(url: str) -> Any:
    """Optuna's RDBStorage for `url`, or a CnnError naming the URL (password hidden) and what to do."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise UsageError(
            f"`{url}` is not a database URL; use one like sqlite:///study.db or "
            "postgresql://user:password@host/database",
            "--storage",
        ) from None
    try:
        return _storage_with_tables(url)
    except ImportError as exc:  # Optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
        module = getattr(exc.__cause__, "name", None) or "its database driver"
        raise CnnError(
            f"--storage `{shown}` needs the database driver `{module}`, which is not installed: "
            f'pip install "{DRIVERS.get(module, module)}"'
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise CnnError(
            f"--storage `{shown}`: cannot open the database: {reason[0] if reason else type(exc).__name__}"
        ) from None


def _storage_with_tables(url: str):
    import optuna
    import sqlalchemy.exc

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"

    for attempt in range(CREATION_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else None,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry_once,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Processes on several machines opening a new database at once race to create its tables
            # (optuna/optuna#1092); the one that lost finds them made when it looks again.
            if attempt == CREATION_ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)


@dataclass
class TrialOutcome:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    params: dict
    seconds: float
    message: str = ""
    run_dir: Path | None = None
    metric: str = "value"


def run_trial(
    sweep: Sweep,
    trial: Any,
    reporter: Reporter | None = None,
    tracker: LiveRun | None = None,
    load_resident: Callable[[DataConfig, int], Dataset] | None = None,
) -> TrialOutcome:
    """Train one trial as an ordinary run and tell the study how it ended (`tracker`: its MLflow LiveRun)."""
    from optuna.trial import TrialState

    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter
    from cnncli.train.session import StopRun

    t0 = time.perf_counter()
    run_dir = sweep.dir / "trials" / f"{trial.number:04d}"
    assert sweep.cfg.search is not None  # a sweep's config has a search section
    params = space.suggest(trial, sweep.cfg.search.params)
    overrides = [*sweep.opts.overrides, *space.as_overrides(params), "search=null"]
    beat = Heartbeat(sweep.study, trial)

    reported: dict = {}  # the last value told to the pruner

    def on_epoch(row: dict) -> None:
        if sweep.metric not in row:
            raise MetricMissing(
                f"search.metric `{sweep.metric}` is not recorded; history columns are "
                f"{', '.join(k for k in row if k != 'epoch')}"
            )
        value = row[sweep.metric]
        if isinstance(value, (int, float)) and math.isfinite(value):
            reported["value"] = float(value)
            trial.report(float(value), step=int(row["epoch"]))
            if trial.should_prune():
                raise StopRun("pruned", f"pruned after epoch {row['epoch']}")

    import keras

    keras.backend.clear_session()  # the previous trial's graphs and layers: memory stays flat over a long sweep
    state, value, message = TrialState.FAIL, None, ""
    try:
        with beat:
            result = run_training(
                TrainOptions(
                    config=sweep.opts.config,
                    overrides=overrides,
                    run_dir=run_dir,
                    on_epoch=on_epoch,
                    tracker=tracker,
                    load_resident=load_resident,
                ),
                reporter or Reporter(),
            )
        history = rundir.read_history(result.run_dir / "history.csv")
        value = history[-1].get(sweep.metric) if history else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            state = TrialState.COMPLETE
        else:
            message = f"{sweep.metric} is {value!r} after the last epoch"
    except StopRun as stop:
        state, value, message = TrialState.PRUNED, reported.get("value"), str(stop)
    except MetricMissing as exc:  # the config's mistake, not this trial's: stop the sweep
        trial.set_user_attr("error", str(exc))
        sweep.study.tell(trial, state=TrialState.FAIL)
        raise
    except (Interrupted, KeyboardInterrupt):
        sweep.study.tell(trial, state=TrialState.FAIL)  # no "error": not counted, and retried once
        retry_once(sweep.study, sweep.study.trials[trial.number])
        raise
    except CnnError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 a sampled combination Keras or TensorFlow refuses (shapes, memory)
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if state == TrialState.FAIL:
        trial.set_user_attr("error", message)
    if (run_dir / "config.yaml").exists():  # best.yaml on every machine of a shared study, not only this one's
        trial.set_user_attr("config", (run_dir / "config.yaml").read_text())
    seconds = time.perf_counter() - t0
    trial.set_user_attr("seconds", round(seconds, 3))
    trial.set_user_attr("train_seconds", _train_seconds(run_dir))
    try:
        sweep.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except RuntimeError as exc:  # the grid sampler stops an optimize loop when its grid is done; ours counts
        if "Study.stop" not in str(exc):
            raise
    return TrialOutcome(
        trial.number, state.name, value, params, seconds, message, run_dir if run_dir.exists() else None, sweep.metric
    )


def _train_seconds(run_dir: Path) -> float:
    """Seconds spent in training steps (run.json), to tell a trial's overhead from its training."""
    with contextlib.suppress(CnnError, KeyError, TypeError):
        return round(sum(p["train_seconds"] for p in rundir.read_json(run_dir / "run.json")["phases"]), 3)
    return 0.0


class SharedData:
    """The trials of one process read their resident data once: each trial's job is handed this loader.

    Every trial of a sweep usually reads the same split of the same files (only the
    model and the optimizer are searched); reading Fashion-MNIST again costs a second
    per trial. Each trial gets its own shallow copy, since the job replaces the arrays
    (conversion to the model's input) on the object it is given.
    """

    def __init__(self) -> None:
        self._cache: dict = {}

    def __call__(self, cfg, seed: int):
        """The data `cnncli.data.load(cfg, seed)` gives, read at most once while the config stays the same."""
        import copy
        import json

        from cnncli.data import load

        key = (json.dumps(cfg.model_dump(mode="json"), sort_keys=True), seed)
        if key not in self._cache:
            self._cache.clear()  # one data set at a time: a searched data key must not pile copies up in memory
            self._cache[key] = load(cfg, seed)
        return copy.copy(self._cache[key])


@contextlib.contextmanager
def _expected_retracing():
    """Drops TensorFlow's "triggered tf.function retracing" warning: every trial builds a new model and
    traces its steps afresh, which is what a sweep is meant to do, not the mistake the warning is for."""
    import logging

    def note(record) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()

    logger = logging.getLogger("tensorflow")
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def run_sweep(
    opts: TuneOptions,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    reporter: Reporter | None = None,
    on_start: Callable[[Sweep], None] | None = None,
) -> Sweep:
    """Trials until the study holds the requested number (or search.timeout passes); then the reports."""
    from cnncli.tune import report

    sweep = open_sweep(opts)
    if on_start is not None:
        on_start(sweep)
    tracker = None
    if opts.mlflow or (sweep.cfg.tracking and sweep.cfg.tracking.mlflow):
        from cnncli.tune.tracking import SweepTracker

        tracker = SweepTracker.open(sweep, opts.mlflow)
    started = time.monotonic()
    assert sweep.cfg.search is not None  # a sweep's config has a search section
    timeout = sweep.cfg.search.timeout
    try:
        shared = SharedData()
        with _expected_retracing():
            while timeout is None or time.monotonic() - started < timeout:
                trial = next_trial(sweep)
                if trial is None:
                    break
                live = tracker.trial_run(trial.number) if tracker is not None else None
                outcome = run_trial(sweep, trial, reporter, live, shared)
                if tracker is not None:
                    assert live is not None  # opened above for a tracked sweep
                    tracker.log_trial(outcome, live)
                with sweep_lock(sweep.dir):
                    report.write_tables(sweep)
                if on_trial is not None:
                    on_trial(outcome)
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(
            f"stopped; the interrupted trial runs again when the sweep continues: "
            f"cnn tune {opts.config} --output {sweep.dir}"
        ) from None
    finally:
        with sweep_lock(sweep.dir):
            report.write_all(sweep)
    if tracker is not None:
        tracker.finish(sweep)
    return sweep
