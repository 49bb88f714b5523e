"""`cnn train --resume RUN` on runs it should not train: a finished run, a CONFIG given too, a config.yaml
edited since the checkpoint. Each either does what was asked or leaves every file of the run as it was."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import small_config
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def _train(where: Path, epochs: int, stop_after_first: bool, extra: dict | None = None) -> Path:
    """A tiny run of `epochs`; with `stop_after_first`, Ctrl-C'd after epoch 1 (status interrupted)."""
    from cnncli.errors import Interrupted
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    config = where / "tiny.yaml"
    config.write_text(small_config({"train.epochs": epochs}, extra or {}))

    def ctrl_c(row: dict) -> None:
        raise KeyboardInterrupt

    opts = TrainOptions(config=config, output=where / "runs", on_epoch=ctrl_c if stop_after_first else None)
    try:
        run_training(opts, Reporter())
    except Interrupted:
        pass
    (run_dir,) = (where / "runs").glob("*/*")
    return run_dir


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("complete"), epochs=1, stop_after_first=False)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("interrupted"), epochs=2, stop_after_first=True)


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def snapshot(run_dir: Path) -> dict:
    """Every path under the run; for files, their bytes and mtime."""
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(run_dir.rglob("*"))}


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


def history_epochs(run_dir: Path) -> list[int]:
    from cnncli.train.rundir import read_history

    return [row["epoch"] for row in read_history(run_dir / "history.csv")]


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


# ------------------------------------------------------------------ a finished run

@pytest.mark.parametrize("extra", [[], ["--epochs", "1"], ["--quiet"]])
def test_resuming_a_complete_run_answers_so_and_changes_nothing(complete_run, tmp_path, extra):
    run_dir = copy_of(complete_run, tmp_path)
    before = snapshot(run_dir)
    result = runner.invoke(app, ["train", "--resume", str(run_dir), *extra])
    assert result.exit_code == 0, result.output
    if "--quiet" in extra:
        assert result.stdout == f"{run_dir}\n"
    else:
        assert result.stdout == (f"`{run_dir}` is already complete (1 epoch trained); nothing to do. To train it "
                                 f"longer: cnn train --resume {run_dir} --epochs N, with N over 1\n")
    assert result.stderr == ""
    assert snapshot(run_dir) == before


def test_resuming_a_complete_run_as_json_changes_nothing(complete_run, tmp_path):
    run_dir = copy_of(complete_run, tmp_path)
    before = snapshot(run_dir)
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run_dir"] == str(run_dir) and document["status"] == "complete"
    assert document["trained"] is False
    assert document["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert snapshot(run_dir) == before


def test_more_epochs_continue_a_complete_run(complete_run, tmp_path):
    run_dir = copy_of(complete_run, tmp_path)
    first = (run_dir / "history.csv").read_text().splitlines()
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert history_epochs(run_dir) == [1, 2]
    assert (run_dir / "history.csv").read_text().splitlines()[:2] == first  # epoch 1's row is kept as it was
    assert status(run_dir) == "complete"
    assert "epochs: 2\n" in (run_dir / "config.yaml").read_text()  # the run's record says how long it trained
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["checkpoint"] == "checkpoints/epoch-0002" and len(state["history"]) == 2
    # Continued once, the run is complete again: a plain resume now changes nothing.
    before = snapshot(run_dir)
    again = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert again.exit_code == 0 and "is already complete (2 epochs trained)" in again.stdout, again.output
    assert snapshot(run_dir) == before


def test_a_run_early_stopping_ended_is_complete_and_cannot_train_longer(tmp_path):
    # Epoch 1 improves on infinity; epoch 2 cannot improve by 100: stopped after epoch 2 of 4.
    run_dir = _train(tmp_path, epochs=4, stop_after_first=False,
                     extra={"train.early_stopping": {"monitor": "loss", "patience": 0, "min_delta": 100.0}})
    assert history_epochs(run_dir) == [1, 2] and status(run_dir) == "complete"
    before = snapshot(run_dir)
    result = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"`{run_dir}` is already complete (early stopping ended it after epoch 2); "
                             "nothing to do\n")
    longer = runner.invoke(app, ["train", "--resume", str(run_dir), "--epochs", "6"])
    assert one_error(longer) == (f"Error: `{run_dir}` is complete: early stopping ended it after epoch 2, so it "
                                 f"cannot train longer; start a new run with cnn train {run_dir / 'config.yaml'} "
                                 "--epochs N\n")
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------ CONFIG and --resume together

@pytest.mark.parametrize("config", ["nonexistent.yaml", "other.yaml"])
def test_a_config_given_with_resume_is_refused(interrupted_run, tmp_path, config):
    run_dir = copy_of(interrupted_run, tmp_path)
    if config == "other.yaml":
        (tmp_path / config).write_text(small_config({"train.epochs": 5}))
    before = snapshot(run_dir)
    result = runner.invoke(app, ["train", str(tmp_path / config), "--resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    flat = "".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # the box breaks long paths anywhere
    assert "Usage: " in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (f"give a config file or --resume RUN_DIR, not both: --resume continues `{run_dir}` with its own "
            f"config.yaml, so `{tmp_path / config}` cannot apply (change a setting of the resumed run with --set "
            "KEY.PATH=VALUE or --epochs N)").replace(" ", "") in flat, flat
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------ a resume that cannot fit the checkpoint

def test_an_edited_config_yaml_is_named_and_the_run_left_as_it_was(interrupted_run, tmp_path):
    run_dir = copy_of(interrupted_run, tmp_path)
    config = run_dir / "config.yaml"
    text = config.read_text()
    assert text.count("filters: 4\n") == 1
    config.write_text(text.replace("filters: 4\n", "filters: 2\n"))
    line = text[:text.index("filters: 4")].count("\n") + 1
    before = snapshot(run_dir)
    result = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert one_error(result) == (
        f"Error: {config}:{line}: model.layers[0].filters: changed since the checkpoint of epoch 1 was written "
        f"(was 4, now 2); that checkpoint fits only the config it was written with: put the value back to "
        f"resume, or start a new run with cnn train {config}\n")
    assert snapshot(run_dir) == before
    assert status(run_dir) == "interrupted"

    # Put back, the run resumes as it would have.
    config.write_text(text)
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert history_epochs(run_dir) == [1, 2] and status(run_dir) == "complete"


def test_a_set_that_breaks_the_checkpoint_is_named_and_the_run_left_as_it_was(interrupted_run, tmp_path):
    run_dir = copy_of(interrupted_run, tmp_path)
    before = snapshot(run_dir)
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "model.layers[0].filters=2"])
    message = one_error(result)
    assert message.startswith(f"Error: cannot restore the checkpoint `{run_dir / 'checkpoints' / 'epoch-0001'}` "
                              "that state.json names: "), message
    assert message.endswith("; the config differs from the one it was written with: model.layers[0].filters "
                            "was 4, now 2\n"), message
    assert snapshot(run_dir) == before
    assert status(run_dir) == "interrupted"


def test_epochs_may_change_between_checkpoint_and_resume(interrupted_run, tmp_path):
    """How long a run trains is not in its checkpoint: train.epochs edited (or given with --epochs, which
    config.yaml then records) resumes as asked."""
    run_dir = copy_of(interrupted_run, tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("  epochs: 2\n", "  epochs: 3\n"))
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert history_epochs(run_dir) == [1, 2, 3] and status(run_dir) == "complete"
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["config"] == config.read_text()
