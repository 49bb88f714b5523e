"""The `search:` section as Optuna objects: sampled values, --set overrides, sampler and pruner."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml

from cnncli.config.keypaths import canonical_path
from cnncli.config.loading import Override, load_config
from cnncli.config.schema import Config, Distribution, SearchSpec
from cnncli.errors import ConfigError, Problem, did_you_mean


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def suggest(trial: Any, params: dict[str, Distribution]) -> dict[str, Any]:
    """One value per searched path, drawn through `trial` (an enqueued retry gets its earlier values)."""
    values = {}
    for path, dist in params.items():
        if dist.loguniform is not None:
            values[path] = trial.suggest_float(path, *dist.loguniform, log=True)
        elif dist.uniform is not None:
            values[path] = trial.suggest_float(path, *dist.uniform, step=dist.step)
        elif dist.int_ is not None:
            values[path] = trial.suggest_int(path, *dist.int_, step=int(dist.step or 1))
        else:
            assert dist.choice is not None  # the schema lets a distribution be one of the four kinds only
            if all(_scalar(c) for c in dist.choice):
                values[path] = trial.suggest_categorical(path, dist.choice)
            else:  # Optuna stores only scalars: lists (kernel sizes) go through their JSON text
                values[path] = json.loads(trial.suggest_categorical(path, [json.dumps(c) for c in dist.choice]))
    return values


def grid(params: dict[str, Distribution]) -> dict[str, list]:
    """The grid sampler's search space: every choice, every int on its step."""
    space: dict[str, list] = {}
    for path, dist in params.items():
        if dist.int_ is not None:
            space[path] = list(range(dist.int_[0], dist.int_[1] + 1, int(dist.step or 1)))
        else:
            assert dist.choice is not None  # the grid sampler takes choices and ints only (checked before)
            space[path] = [c if _scalar(c) else json.dumps(c) for c in dist.choice]
    return space


def grid_size(params: dict[str, Distribution]) -> int:
    """How many points the grid sampler has: every combination of the values grid() lists."""
    return math.prod(len(values) for values in grid(params).values())


def probes(dist: Distribution) -> list[Any]:
    """Values that stand for all `dist` can draw: its ends, every choice, and for a float range without
    a step a value inside it that is no whole number (what most draws are)."""
    if dist.choice is not None:
        return list(dist.choice)
    if dist.int_ is not None:
        first, last = dist.int_
        step = int(dist.step or 1)
        return [first, first + (last - first) // step * step]
    bounds = dist.loguniform or dist.uniform
    assert bounds is not None  # the schema lets a distribution be one of the four kinds only
    low, high = bounds
    if dist.step:
        return [float(low), float(low + (high - low) // dist.step * dist.step)]
    if dist.loguniform:
        inside = math.exp(math.log(low) + 0.382 * (math.log(high) - math.log(low)))
    else:
        inside = low + 0.382 * (high - low)
    return [float(low), inside if inside != int(inside) else inside + 1e-3 * (high - low), float(high)]


def value_problems(cfg: Config, config: str | Path | list[str | Path], overrides: list[str]) -> list[Problem]:
    """Searched keys whose distribution draws values the key refuses (a float for `filters`, a word for
    `batch_size`): every such trial would fail the same way, so the sweep stops before the first. Each
    value is tried alone in the config as written; a value refused only beside other sampled values (a
    kernel too large for the image) is left to fail its trial."""
    from cnncli.model.builder import check_model_specs
    from cnncli.model.raw_checks import raw_spec_problems

    assert cfg.search is not None  # asked only of a config with a search section
    problems = []
    for key, dist in cfg.search.params.items():
        target = canonical_path(key)
        for value in probes(dist):
            try:  # the schema, then the Keras names and arguments, as `cnn validate` checks them
                check_model_specs(
                    load_config(config, [*overrides, *as_overrides({key: value})], spec_check=raw_spec_problems)
                )
            except ConfigError as exc:
                refused = [p for p in exc.problems if p.path == target]
                if refused:
                    hint = (
                        "; search whole numbers with `int: [lo, hi]`"
                        if isinstance(value, float) and "integer" in refused[0].message
                        else ""
                    )
                    problems.append(
                        Problem(
                            f"draws {value!r}, which this key refuses: {refused[0].message}{hint}",
                            f"search.params.{key}",
                            cfg.line_of(("search", "params", key)),
                        )
                    )
                    break
    return problems


def search_problems(cfg: Config, config: str | Path | list[str | Path], overrides: list[str]) -> list[Problem]:
    """What would fail every trial alike, found before the first (`cnn tune` and `cnn validate`): values a
    searched key refuses, and a metric the history will not have."""
    from cnncli.train.session import history_columns

    problems = value_problems(cfg, config, overrides)
    assert cfg.search is not None  # asked only of a config with a search section
    metric, line = cfg.search.metric, cfg.line_of(("search", "metric"))
    columns = history_columns(cfg)
    if metric.startswith("val_") and cfg.data.validation_split == 0:
        problems.append(
            Problem(f"searching `{metric}` needs a validation split; set data.validation_split", "search.metric", line)
        )
    elif metric not in columns:
        problems.append(
            Problem(
                f"`{metric}` is not a column of this config's history{did_you_mean(metric, columns)}; "
                f"it records {', '.join(columns)}",
                "search.metric",
                line,
            )
        )
    return problems


def as_overrides(values: dict[str, Any]) -> list[Override]:
    """`path=value` strings for TrainOptions.overrides, values written as YAML flow scalars; a problem with
    one names the sampled value, not a --set the user never typed."""
    out: list[Override] = []
    for path, value in values.items():
        dumped = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        text = f"{path}={dumped}"
        out.append(Override(text, given=f"search.params sampled {text}"))
    return out


def direction(spec: SearchSpec) -> Literal["minimize", "maximize"]:
    """minimize or maximize the metric: search.direction, else minimize losses and errors."""
    if spec.direction:
        return spec.direction
    return "minimize" if "loss" in spec.metric or "error" in spec.metric else "maximize"


def make_sampler(spec: SearchSpec, seed: int | None) -> Any:
    """The sampler named in `spec`. Random and TPE are seeded afresh for each trial from `seed` and the
    trial's number; the grid keeps `seed`, which orders its points the same in every process, and each
    process takes a point no other has taken."""
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(grid(spec.params), seed=seed)

    def seeded(trial_seed):
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=trial_seed)
        # constant_liar: a trial still running elsewhere counts as a poor one, so no process samples beside it
        return optuna.samplers.TPESampler(seed=trial_seed, constant_liar=True)

    return _per_trial_seed(optuna)(seeded, seed)


def _per_trial_seed(optuna):
    class PerTrialSeed(optuna.samplers.BaseSampler):
        """Processes sharing a study each hold a sampler built from the same config seed, and would draw the
        same values in the same order; trial n is drawn with seed + n instead, so each trial's values differ
        and one process alone still draws what it drew before. Optuna's samplers read the study's history,
        not their own state, so a new one per trial loses nothing."""

        def __init__(self, make, seed):
            self._make, self._seed = make, seed
            self._inner = make(seed)

        def before_trial(self, study, trial):
            self._inner = self._make(None if self._seed is None else self._seed + trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self._inner.reseed_rng()

    return PerTrialSeed


def make_pruner(spec: SearchSpec, epochs: int) -> Any:
    """The Optuna pruner search.pruner names."""
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    # A trial is compared with the median of earlier ones at the same epoch once a few have finished.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
