"""`cnn lr-find`: the learning-rate range test (Smith, 2015, "Cyclical Learning Rates for Training
Neural Networks"; fastai's `lr_find`, Lightning's tuner).

From the config's initial weights, a short run of steps trains with the rate
growing exponentially from `start` to `end`, one rate per step; the loss of
each step's batch is smoothed (an exponentially weighted, bias-corrected
average) and the test stops once it diverges. The suggested rate is a tenth of
the rate at the minimum of the smoothed loss (see `suggest` for why).

Everything is `cnn train`'s own machinery: config and `--set`, runtime, data,
model, the first phase's optimizer, the loss, and the Trainer of loop.py run
one step per call, the rate assigned to the optimizer between calls. Nothing
is written but `lr_find.json` and `lr_find.png`; the config file is only read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import compat, fileio
from cnncli.errors import CnnError, UsageError
from cnncli.train.progress import Reporter

MAX_BETA = 0.98  # fastai's and Lightning's smoothing (about 50 steps of memory), for long sweeps
DIVERGED = 4.0  # stop once the smoothed loss is above 4× its best (fastai, Lightning)
SKIP_BEGIN = 10  # steps not considered for the suggestion: the average still rests on a few batches (Lightning)
FLAT = 0.01  # a smoothed loss that falls by less than 1% before it rises shows no learning to read
METHOD = "a tenth of the rate of the lowest smoothed loss"


@dataclass
class LrFindOptions:
    config: Path | list[Path]  # several files merge left to right, as for cnn train
    overrides: list[Any] = field(default_factory=list)  # --set
    output: Path | None = None  # exactly this folder; None: lr_find/<name>/<timestamp>/
    start: float = 1e-7  # first rate
    end: float = 10.0  # last rate, if the loss has not diverged before
    steps: int = 100  # steps at most, one rate each


@dataclass
class RangeTest:
    learning_rates: list[float]  # the rate of each step taken, start · q^i
    losses: list[float]  # smoothed, bias-corrected
    raw_losses: list[float]  # each step's batch
    suggested: float
    stopped: str  # "end" (all steps), "diverged" (above DIVERGED × best) or "non-finite" (a NaN or inf loss)
    beta: float  # the smoothing (see `smoothing`)

    @property
    def flat(self) -> bool:
        """The loss hardly fell before it rose: the sweep saw little learning, and the suggestion is a guess."""
        return fell(self.losses) < FLAT

    def as_json(self) -> dict:
        """What lr_find.json holds."""
        return {
            "learning_rates": self.learning_rates,
            "losses": self.losses,
            "suggested": self.suggested,
            "method": METHOD,
            "raw_losses": self.raw_losses,
            "stopped": self.stopped,
            "smoothing": self.beta,
            "loss_fell": round(fell(self.losses), 6),
        }


def check_range(start: float, end: float, steps: int) -> None:
    """The options of the sweep make sense: 0 < start < end, at least two steps."""
    if not (math.isfinite(start) and start > 0):
        raise UsageError(f"the first rate must be above 0, got {start:g}", "--start")
    if not (math.isfinite(end) and end > start):
        raise UsageError(f"the last rate must be above --start ({start:g}), got {end:g}", "--end")
    if steps < 2:
        raise UsageError(f"the test needs at least 2 steps, got {steps}", "--steps")


def rate_at(step: int, start: float, end: float, steps: int) -> float:
    """The rate of `step` (from 0): start at step 0, end at step steps - 1, geometric in between."""
    return float(start * (end / start) ** (step / (steps - 1)))


def smoothing(start: float, end: float, steps: int) -> float:
    """The average's decay: a memory of about one decade of rates (1 - beta = 1 / steps per decade).

    fastai's and Lightning's 0.98 remembers ~50 steps; over their 100 steps from 1e-7 to 10
    that is four decades, so the curve trails the rate far behind and flattens the dip that
    the suggestion looks for. With the default sweep this gives 0.92; long sweeps keep 0.98.
    """
    per_decade = (steps - 1) / math.log10(end / start)
    return min(MAX_BETA, max(0.5, 1 - 1 / max(per_decade, 1.0)))


def smoothed(losses: list[float], beta: float) -> list[float]:
    """The exponentially weighted average of `losses` at each step, divided by 1 - beta^n so that
    the first steps are not pulled towards 0 (Adam's bias correction)."""
    out, avg = [], 0.0
    for n, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**n))
    return out


def suggest(learning_rates: list[float], losses: list[float], start: float, end: float) -> float:
    """A tenth of the rate at which the smoothed loss is lowest (fastai's first rule, Smith's "a bit
    before the minimum"), kept within [start, end].

    Why not the steepest descent of the smoothed loss: the average remembers about one
    decade of rates (`smoothing`), so the curve trails the rate by about a decade and its
    steepest point sits where the loss of the steps themselves is already at its best or
    past it. On the shapes quick start swept over 300 steps it was 0.06, a rate at which
    that model does not learn at all; a tenth of the minimum was 0.0064, which trains it.
    With the curve a decade late, min/10 is about the rate at which the loss was still
    falling, one decade back. The first SKIP_BEGIN steps are left out (their average rests
    on a few batches), unless the test diverged before there were more.
    """
    lo = SKIP_BEGIN if len(losses) > SKIP_BEGIN + 2 else 0
    best = lo + int(np.argmin(losses[lo:]))
    rate = learning_rates[best] / 10
    return float(min(max(float(f"{rate:.3g}"), start), end))  # 3 digits: what a --set line should carry


def fell(losses: list[float]) -> float:
    """How much the smoothed loss fell from its first counted step to its minimum, as a share of it."""
    lo = SKIP_BEGIN if len(losses) > SKIP_BEGIN + 2 else 0
    first, best = losses[lo], min(losses[lo:])
    return float((first - best) / abs(first)) if first else 0.0


class _Stop(Exception):
    """The test has what it needs (or diverged): leave the epoch."""


def range_test(trainer: Any, optimizer: Any, start: float, end: float, steps: int, reporter: Reporter) -> RangeTest:
    """Run the sweep on `trainer` (set up with one step per call and its data), whose `optimizer` starts at `start`."""
    rates: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    stopped = "end"
    beta = smoothing(start, end, steps)

    def after_step(done: int, total: int, logs: dict, seconds: float) -> None:
        nonlocal stopped
        loss = float(logs["loss"])
        trainer.loss_tracker.reset_state()  # so the next results() is the next step's batch alone
        rates.append(rate_at(len(rates), start, end, steps))
        raw.append(loss)
        smooth[:] = smoothed(raw, beta)
        if len(rates) % 10 == 0:
            reporter.message(f"step {len(rates):>4}/{steps}  lr {rates[-1]:.3g}  loss {smooth[-1]:.4f}")
        if len(rates) > 1 and smooth[-1] > DIVERGED * min(smooth):
            stopped = "diverged"
            raise _Stop
        if len(rates) == steps:
            raise _Stop
        optimizer.learning_rate = rate_at(len(rates), start, end, steps)

    from cnncli.train.loop import NonFiniteLoss

    epoch = 0
    try:
        while True:  # as many epochs as the steps need (a small training split)
            trainer.train_epoch(epoch, on_chunk=after_step)
            epoch += 1
    except _Stop:
        pass
    except NonFiniteLoss:
        stopped = "non-finite"
    if not rates:
        raise CnnError(
            f"the loss was not finite at the first step, at learning rate {start:g}: lower --start, "
            "or check the data and the model with cnn train --smoke"
        )
    return RangeTest(rates, smooth, raw, suggest(rates, smooth, start, end), stopped, beta)


def find_learning_rate(opts: LrFindOptions, reporter: Reporter) -> tuple[RangeTest, Path, str]:
    """The range test as `cnn lr-find` runs it: (the test, the folder written, the config key to set)."""
    import secrets

    from cnncli.config.loading import load_config
    from cnncli.model.raw_checks import raw_spec_problems

    check_range(opts.start, opts.end, opts.steps)
    cfg = load_config(opts.config, opts.overrides, spec_check=raw_spec_problems)
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31)
    if cfg.runtime.distribute is not None:  # a short single-process test; the rate carries over
        reporter.message(
            f"note: the range test runs on one device; runtime.distribute={cfg.runtime.distribute} is not used"
        )
        cfg.runtime.distribute = None
    name = cfg.name or "run"
    folder = opts.output
    if folder is None:
        from cnncli.train.rundir import check_output

        check_output(Path("lr_find"), name)
    elif (why := fileio.unwritable(Path(folder))) is not None:
        raise CnnError(f"cannot write to `{folder}`: {why}; choose another --output")
    trainer, optimizer = _setup(cfg, reporter, opts.start)
    reporter.message(
        f"range test: {opts.steps} steps from {opts.start:g} to {opts.end:g}, batch {cfg.train.batch_size}"
    )
    t0 = time.perf_counter()
    test = range_test(trainer, optimizer, opts.start, opts.end, opts.steps, reporter)
    reporter.message(f"{len(test.learning_rates)} steps in {time.perf_counter() - t0:.1f}s ({test.stopped})")
    if test.flat:
        reporter.warning(
            f"the smoothed loss fell by only {fell(test.losses):.1%} before it rose: the sweep saw little "
            f"learning, so the suggestion is a rough guess; more steps show more, e.g. --steps {opts.steps * 3}"
        )
    if folder is None:
        from cnncli.train.rundir import create_run_dir

        folder = create_run_dir(Path("lr_find"), name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_json(folder / "lr_find.json", test.as_json())
    from cnncli.plots import plot_lr_find

    plot_lr_find(test.learning_rates, test.losses, test.suggested, folder / "lr_find.png", raw=test.raw_losses)
    return test, folder, rate_key(cfg)


def rate_key(cfg: Any) -> str:
    """The config key a suggested rate goes to: the first phase's own rate when there are phases."""
    return "train.phases[0].learning_rate" if cfg.train.phases else "train.optimizer.learning_rate"


def _setup(cfg: Any, reporter: Reporter, start: float) -> tuple[Any, Any]:
    """As `cnn train` prepares its first phase: runtime, data, model, optimizer at `start`; a Trainer of one
    step per call on the training split."""
    import keras

    from cnncli.config.learning import make_loss, make_optimizer
    from cnncli.model.builder import build_model, check_layer_args, check_model
    from cnncli.train.augment import build_augmentation, check_augmentation
    from cnncli.train.decisions import model_size, step_macs
    from cnncli.train.job import has_convolutions, load_data
    from cnncli.train.loop import Trainer
    from cnncli.train.phases import apply_trainable, plan_phases
    from cnncli.train.runtime import setup_runtime, with_loss_scaling

    check_layer_args(cfg)
    small, size_reason = model_size(cfg)
    runtime = setup_runtime(cfg.runtime, has_convolutions(cfg), small, step_macs(cfg), size_reason=size_reason)
    reporter.message(f"device {runtime.device}; precision {runtime.precision}: {runtime.precision_reason}")
    check_model(cfg)
    check_augmentation(cfg, runtime.precision)
    keras.utils.set_random_seed(cfg.seed)
    compat.op_determinism(cfg.deterministic)
    data, plan = load_data(cfg, False, reporter, runtime)
    mixed = runtime.precision.startswith("mixed")
    phase = plan_phases(cfg)[0]
    path = "train.phases[0].optimizer" if cfg.train.phases else "train.optimizer"
    strategy: Any = runtime.strategy
    with strategy.scope():
        model = build_model(cfg, plan.shape, output_dtype="float32" if mixed else None)
        augment = build_augmentation(cfg)
        apply_trainable(model, cfg, phase.trainable)
        optimizer = with_loss_scaling(make_optimizer(phase.optimizer, path, learning_rate=start), runtime.precision)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(
        model,
        optimizer,
        make_loss(cfg.train.loss),
        [],
        strategy,
        cfg.train.batch_size,
        cfg.seed,
        augment,
        steps_per_execution=1,  # the rate changes between steps
        jit_compile=cfg.runtime.jit_compile,
        time_input=not compat.determinism_on(),  # TF refuses timestamps under it
    )
    trainer.set_data(data.x_train, data.y_train)
    return trainer, optimizer
