"""`cnn tune`: search paths checked up front, trials as runs, failures, pruning, best.yaml."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from helpers import small_config
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()

SWEPT = {  # three classes and a dropout layer: model.layers[2].rate is a searchable number
    "deterministic": True,
    "data.shapes": {"train_examples": 240, "test_examples": 60, "classes": ["x", "o", "square"]},
    "model.layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                     {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Dropout", "rate": 0.1}, {"type": "Flatten"},
                     {"type": "Dense", "units": 3, "activation": "softmax"}],
    "train.optimizer": {"type": "Adam", "learning_rate": 0.005},
}


def tiny_sweep(tmp_path: Path, params: str, trials: int = 2, epochs: int = 1, sampler: str = "random") -> Path:
    path = tmp_path / "tiny.yaml"
    search = f"search:\n  trials: {trials}\n  sampler: {sampler}\n  params:\n{params}\n"  # as typed: lines are read
    path.write_text(small_config(SWEPT, {"train.epochs": epochs}) + search)
    return path


def read_trials(sweep: Path) -> list[dict]:
    with open(sweep / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_typo_in_a_search_path_is_an_error_with_its_line_before_anything_runs(tmp_path):
    config = tiny_sweep(tmp_path, "    train.optimzer.learning_rate: {loguniform: [0.001, 0.01]}")
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    line = config.read_text().splitlines().index("    train.optimzer.learning_rate: {loguniform: [0.001, 0.01]}") + 1
    assert result.stderr.startswith(f"Error: {config}:{line}: search.params.train.optimzer.learning_rate: "
                                    "unknown key `optimzer` (did you mean `optimizer`?)")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("path, fragment", [
    ("model.layers[9].filters", "`model.layers` has 5 item(s); there is no [9]"),
    ("model.layers.filters", "`model.layers` is a list; index it"),
    ("train.epochs.value", "`train.epochs` is a single value, not a mapping"),
    ("data.shapes.noize", "unknown key `noize` (did you mean `noise`?)"),
])
def test_search_paths_name_values_of_the_config(tmp_path, path, fragment):
    config = tiny_sweep(tmp_path, f"    {path}: {{choice: [1, 2]}}")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert f"search.params.{path}: {fragment}" in result.stderr


@pytest.mark.parametrize("distribution, fragment", [
    ("{loguniform: [0, 0.1]}", "loguniform bounds must be positive, got [0.0, 0.1]"),
    ("{uniform: [0.5, 0.1]}", "the low bound must be below the high one, got [0.5, 0.1]"),
    ("{int: [1, 4], step: 0.5}", "an `int` step is a whole number, got 0.5"),
    ("{choice: [0.1, 0.2], step: 2}", "`step` goes with `int` or `uniform`"),
    ("{uniform: [0, 1], int: [0, 1]}", "give exactly one of"),
])
def test_distributions_are_checked(tmp_path, distribution, fragment):
    config = tiny_sweep(tmp_path, f"    model.layers[2].rate: {distribution}")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert f"search.params.model.layers[2].rate: {fragment}" in result.stderr


def test_the_grid_sampler_needs_choices_or_ints(tmp_path):
    config = tiny_sweep(tmp_path, "    model.layers[2].rate: {uniform: [0, 0.5]}", sampler="grid")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert "search.params.model.layers[2].rate: the grid sampler needs `choice` or `int` values" in result.stderr


def test_train_trains_the_config_as_written_and_says_tune_uses_search(tmp_path):
    config = tiny_sweep(tmp_path, "    model.layers[0].filters: {int: [2, 8], step: 2}")
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("`cnn tune` uses the `search:` section") == 1
    run = next((tmp_path / "runs" / "tiny").iterdir())
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["layers"][0]["filters"] == 4


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """Three grid trials of kernel sizes; 40 does not fit a 16-pixel image, so the builder rejects it."""
    tmp = tmp_path_factory.mktemp("grid")
    config = tiny_sweep(tmp, "    model.layers[0].kernel_size: {choice: [3, 5, 40]}", trials=3, sampler="grid")
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp / "sweep"), "--json"])
    return tmp, config, result


def test_a_rejected_trial_fails_with_its_message_and_the_sweep_completes(grid_sweep):
    tmp, _, result = grid_sweep
    assert result.exit_code == 0, result.output
    trials = read_trials(tmp / "sweep")
    assert list(trials[0])[:5] == ["number", "state", "model.layers[0].kernel_size", "value", "seconds"]
    rows = {r["model.layers[0].kernel_size"]: r for r in trials}
    assert sorted(rows) == ["3", "40", "5"]
    assert rows["40"]["state"] == "FAIL"
    assert "model.layers[0]" in rows["40"]["message"]
    assert [rows[k]["state"] for k in ("3", "5")] == ["COMPLETE", "COMPLETE"]
    report = json.loads(result.stdout)
    assert [t["state"] for t in report["trials"]].count("COMPLETE") == 2


def test_sweep_directory_holds_runs_and_pictures(grid_sweep):
    tmp, _, _ = grid_sweep
    sweep = tmp / "sweep"
    for row in read_trials(sweep):
        if row["state"] == "COMPLETE":
            run = sweep / row["run_dir"]
            assert run.name == f"{int(row['number']):04d}"
            assert json.loads((run / "run.json").read_text())["status"] == "complete"
            assert (run / "model.keras").exists()
    for name in ("study.db", "best.yaml", "optimization_history.png", "param_importances.png",
                 "parallel_coordinate.png"):
        assert (sweep / name).stat().st_size > 0, name
    assert not list(sweep.glob(".*.tmp-*"))


def test_best_yaml_reproduces_the_best_trials_validation_metric(grid_sweep):
    tmp, _, result = grid_sweep
    best = json.loads(result.stdout)["best"]
    assert "search" not in yaml.safe_load((tmp / "sweep" / "best.yaml").read_text())
    again = runner.invoke(app, ["train", str(tmp / "sweep" / "best.yaml"), "--output", str(tmp / "again"), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"]["val"]["accuracy"] == pytest.approx(best["value"], abs=1e-6)


def test_compare_reads_a_sweep_as_its_trials(grid_sweep):
    tmp, _, _ = grid_sweep
    result = runner.invoke(app, ["compare", str(tmp / "sweep"), "--output", str(tmp / "c.png"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["runs"]) == 2  # the rejected trial left no run directory
    assert list(report["differences"]) == ["model.layers[0].kernel_size"]


def test_a_pruned_trial_stops_at_that_epoch_and_is_marked_pruned(tmp_path):
    import optuna

    from cnncli.tune.study import next_trial
    from cnncli.tune.sweep import TuneOptions, open_sweep, run_trial

    config = tiny_sweep(tmp_path, "    model.layers[0].filters: {choice: [4]}", trials=1, epochs=3)
    sweep = open_sweep(TuneOptions(config=config, output=tmp_path / "sweep"))
    sweep.study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never 2: prune at once
    outcome = run_trial(sweep, next_trial(sweep))
    assert outcome.state == "PRUNED"
    run = tmp_path / "sweep" / "trials" / "0000"
    assert json.loads((run / "run.json").read_text())["status"] == "pruned"
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header and epoch 1
    assert sweep.study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert next_trial(sweep) is None  # the pruned trial counts towards the requested one


def test_a_config_without_search_is_refused(tmp_path):
    config = tmp_path / "plain.yaml"
    config.write_text(small_config(SWEPT))
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {config}: the config has no `search:` section")


def test_the_trial_table_grows_as_trials_finish():
    import io

    from rich.console import Console

    from cnncli.tune.progress import SweepDisplay
    from cnncli.tune.sweep import TrialOutcome

    buf = io.StringIO()
    with SweepDisplay(Console(file=buf, force_terminal=True, width=120), live=True) as display:
        display.trial(TrialOutcome(0, "COMPLETE", 0.75, {"train.epochs": 2}, 3.0, metric="val_accuracy"))
        display.trial(TrialOutcome(1, "FAIL", None, {"train.epochs": 3}, 1.0, "kernel too large", None,
                                   "val_accuracy"))
    text = buf.getvalue()
    assert "val_accuracy" in text and "0.7500" in text and "kernel too large" in text
    assert len(display.rows) == 2


def test_plain_lines_when_not_a_terminal():
    import io

    from rich.console import Console

    from cnncli.tune.progress import SweepDisplay
    from cnncli.tune.sweep import TrialOutcome

    buf = io.StringIO()
    with SweepDisplay(Console(file=buf, width=200), live=False) as display:
        display.trial(TrialOutcome(4, "PRUNED", 0.5, {"model.layers[0].filters": 8}, 2.0, "pruned after epoch 1",
                                   None, "val_accuracy"))
    assert buf.getvalue() == ("trial    4  PRUNED    val_accuracy 0.5000  2.0s  model.layers[0].filters=8  "
                              "(pruned after epoch 1)\n")


def test_sampled_values_show_four_significant_digits_however_small():
    import io

    from rich.console import Console

    from cnncli.tune.progress import SweepDisplay
    from cnncli.tune.sweep import TrialOutcome

    buf = io.StringIO()
    params = {"train.optimizer.learning_rate": 3.4567e-05, "model.layers[2].rate": 0.25}
    with SweepDisplay(Console(file=buf, width=200), live=False) as display:
        display.trial(TrialOutcome(0, "COMPLETE", 0.5, params, 2.0, metric="val_accuracy"))
    assert buf.getvalue() == ("trial    0  COMPLETE  val_accuracy 0.5000  2.0s  "
                              "train.optimizer.learning_rate=3.457e-05  model.layers[2].rate=0.25\n")


def test_ctrl_c_fails_the_trial_uncounted_retries_it_with_the_same_values_and_says_how_to_continue(
        tmp_path, monkeypatch):
    import optuna

    import cnncli.train.job
    from cnncli.errors import Interrupted

    def interrupted(opts, reporter):
        raise Interrupted("stopped")

    config = tiny_sweep(tmp_path, "    train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}", trials=1)
    sweep = tmp_path / "sweep"
    with monkeypatch.context() as m:
        m.setattr(cnncli.train.job, "run_training", interrupted)
        result = runner.invoke(app, ["tune", str(config), "--output", str(sweep)])
    assert result.exit_code == 130
    assert f"cnn tune {config} --output {sweep}" in result.stderr
    result = runner.invoke(app, ["tune", str(config), "--output", str(sweep), "--json"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep / 'study.db'}")
    first, retry = study.trials
    assert (first.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.params == first.params and retry.user_attrs["retry_of"] == 0
    assert [t["state"] for t in json.loads(result.stdout)["trials"]] == ["FAIL", "COMPLETE"]


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_the_hyperband_pruner_runs_a_sweep_to_its_trial_count(tmp_path):
    import optuna

    from cnncli.tune.sweep import TuneOptions, open_sweep

    params = "    train.optimizer.learning_rate: {loguniform: [0.0001, 0.05]}"
    config = tiny_sweep(tmp_path, params, trials=4, epochs=3)
    config.write_text(config.read_text().replace("  sampler: random", "  sampler: random\n  pruner: hyperband"))
    pruner = open_sweep(TuneOptions(config=config, output=tmp_path / "probe")).study.pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource) == (1, 3)  # one epoch up to train.epochs
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp_path / "sweep"), "--json"])
    assert result.exit_code == 0, result.output
    rows = read_trials(tmp_path / "sweep")
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    for row in rows:
        history = (tmp_path / "sweep" / row["run_dir"] / "history.csv").read_text().splitlines()[1:]
        assert len(history) == int(row["epochs"]) == (3 if row["state"] == "COMPLETE" else len(history))


def test_a_trial_asked_for_beyond_the_count_by_another_machine_is_ended_unrun(tmp_path):
    from optuna.trial import TrialState

    from cnncli.tune.report import trial_rows
    from cnncli.tune.study import _surplus, counted, next_trial
    from cnncli.tune.sweep import TuneOptions, open_sweep

    config = tiny_sweep(tmp_path, "    model.layers[0].filters: {choice: [4]}", trials=1)
    sweep = open_sweep(TuneOptions(config=config, output=tmp_path / "sweep"))
    first, second = sweep.study.ask(), sweep.study.ask()  # two machines asked at the same moment
    assert not _surplus(sweep, first)
    assert _surplus(sweep, second)
    ended = sweep.study.trials[second.number]
    assert ended.state == TrialState.FAIL and not counted(ended)
    assert trial_rows(sweep)[1]["message"] == "not run: the study already had its 1 trials"
    assert next_trial(sweep) is None  # the first still runs: nothing more to ask for


def test_a_storage_that_is_no_url_is_a_usage_error(tmp_path):
    config = tiny_sweep(tmp_path, "    train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}")
    result = runner.invoke(app, ["tune", str(config), "--storage", "nonsense", "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 2
    assert "Invalid value for '--storage': `nonsense` is not a database URL" in " ".join(result.stderr.split())
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("url, fragment", [
    ("postgresql+pg8000://ann:s3cret@localhost/sweeps", "--storage `postgresql+pg8000://ann:***@localhost/sweeps` "
     "needs the database driver `pg8000`, which is not installed: pip install \"pg8000\""),
    ("sqlite:////no/such/folder/study.db", "--storage `sqlite:////no/such/folder/study.db`: cannot open the "
     "database: unable to open database file"),
])
def test_a_storage_that_cannot_be_opened_is_one_error_line_and_leaves_no_sweep_directory(tmp_path, url, fragment):
    config = tiny_sweep(tmp_path, "    train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}")
    result = runner.invoke(app, ["tune", str(config), "--storage", url, "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {fragment}") and result.stderr.count("\n") == 1
    assert "s3cret" not in result.output
    assert not (tmp_path / "sweep").exists()


def test_a_process_that_loses_the_race_to_create_the_tables_opens_them_on_its_next_look(monkeypatch):
    import optuna
    import sqlalchemy.exc

    from cnncli.tune import sweep as sweep_module

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):  # another machine created the tables between our look and our CREATE
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(sweep_module.time, "sleep", lambda seconds: None)
    storage = sweep_module.open_storage("sqlite:///:memory:")
    assert isinstance(storage, real) and len(calls) == 2


def test_trials_of_processes_sharing_a_seed_draw_different_values_and_one_process_draws_as_before(tmp_path):
    from cnncli.tune import space
    from cnncli.tune.study import next_trial
    from cnncli.tune.sweep import TuneOptions, open_sweep

    config = tiny_sweep(tmp_path, "    train.optimizer.learning_rate: {loguniform: [0.0001, 0.1]}", trials=4)
    params = open_sweep(TuneOptions(config=config, output=tmp_path / "probe")).cfg.search.params

    def draws(*sweeps):
        return [space.suggest(next_trial(s), params)["train.optimizer.learning_rate"] for s in sweeps]

    here, there = (open_sweep(TuneOptions(config=config, output=tmp_path / "shared")) for _ in range(2))
    shared = draws(here, there, here, there)
    assert len(set(shared)) == 4
    alone = open_sweep(TuneOptions(config=config, output=tmp_path / "alone"))
    assert draws(alone, alone, alone, alone) == shared  # trial n is drawn from seed + n, whoever runs it


def test_values_a_searched_key_refuses_are_errors_with_their_lines_before_any_trial(tmp_path):
    params = ("    model.layers[0].filters: {uniform: [4, 12]}\n"
              "    train.batch_size: {choice: [16, big]}\n"
              "    model.layers[2].rate: {uniform: [0.0, 1.5]}\n"
              "    model.layers[0].kernel_size: {choice: [3, 40]}")  # 40 is refused only by the shapes: a trial's
    config = tiny_sweep(tmp_path, params)
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    lines = config.read_text().splitlines()
    at = {key: lines.index(next(line for line in lines if line.startswith(f"    {key}:"))) + 1
          for key in ("model.layers[0].filters", "train.batch_size", "model.layers[2].rate")}
    assert result.stderr.splitlines() == [
        "Error: 3 problems",
        f"  {config}:{at['model.layers[0].filters']}: search.params.model.layers[0].filters: draws 4.0, which this "
        "key refuses: expected an integer, got 4.0; search whole numbers with `int: [lo, hi]`",
        f"  {config}:{at['train.batch_size']}: search.params.train.batch_size: draws 'big', which this key refuses: "
        "input should be a valid integer, unable to parse string as an integer, got 'big'",
        f"  {config}:{at['model.layers[2].rate']}: search.params.model.layers[2].rate: draws 1.5, which this key "
        "refuses: must be at least 0 and below 1, got 1.5"]
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_whose_every_trial_failed_ends_with_one_error_line(tmp_path):
    config = tiny_sweep(tmp_path, "    model.layers[0].kernel_size: {choice: [40, 50]}", trials=2)
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: every trial failed (2), so there is no best trial; trial 0: ")
    assert result.stderr.rstrip().endswith(f"(all in {tmp_path / 'sweep' / 'trials.csv'})")
    assert [row["state"] for row in read_trials(tmp_path / "sweep")] == ["FAIL", "FAIL"]
    assert not (tmp_path / "sweep" / "best.yaml").exists()


def test_a_search_metric_the_history_will_not_have_is_an_error_with_its_line(tmp_path):
    config = tiny_sweep(tmp_path, "    train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}")
    config.write_text(config.read_text().replace("search:\n", "search:\n  metric: val_acuracy\n"))
    result = runner.invoke(app, ["tune", str(config), "--output", str(tmp_path / "sweep")])
    assert result.exit_code == 1
    line = config.read_text().splitlines().index("  metric: val_acuracy") + 1
    assert result.stderr == (f"Error: {config}:{line}: search.metric: `val_acuracy` is not a column of this config's "
                             "history (did you mean `val_accuracy`?); it records loss, accuracy, val_loss, "
                             "val_accuracy, learning_rate\n")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("extra", ["", "--set=data.validation_split=0",
                                   "--set=train.metrics=[accuracy, top_5_accuracy]"])
def test_the_history_columns_a_sweep_checks_against_are_those_training_writes(tmp_path, extra):
    from cnncli.config.loading import load_config
    from cnncli.train.session import history_columns

    config = tiny_sweep(tmp_path, "    train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}")
    config.write_text(config.read_text().replace("classes: [x, o, square]",
                                                 "classes: [x, o, square, plus, line, triangle]")
                      .replace("units: 3,", "units: 6,"))
    sets = [extra.removeprefix("--set=")] if extra else []
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--json",
                                 *(["--set", sets[0]] if sets else [])])
    assert result.exit_code == 0, result.output
    header = (Path(json.loads(result.stdout)["run_dir"]) / "history.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", *history_columns(load_config(config, sets))]


def test_cnn_validate_finds_what_cnn_tune_would_refuse_before_its_first_trial(tmp_path):
    params = "    model.layers[0].filters: {uniform: [4, 12]}"
    config = tiny_sweep(tmp_path, params)
    config.write_text(config.read_text().replace("search:\n", "search:\n  metric: val_acuracy\n"))
    lines = config.read_text().splitlines()
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: 2 problems",
        f"  {config}:{lines.index(params) + 1}: search.params.model.layers[0].filters: draws 4.0, which this key "
        "refuses: expected an integer, got 4.0; search whole numbers with `int: [lo, hi]`",
        f"  {config}:{lines.index('  metric: val_acuracy') + 1}: search.metric: `val_acuracy` is not a column of this "
        "config's history (did you mean `val_accuracy`?); it records loss, accuracy, val_loss, val_accuracy, "
        "learning_rate"]
    good = tiny_sweep(tmp_path, "    model.layers[0].filters: {int: [4, 12]}")
    assert runner.invoke(app, ["validate", str(good)]).exit_code == 0
