"""What `cnn train --resume RUN` settles before it writes anything in the run.

A resume continues a run with the run's own config.yaml, the one its
checkpoints were written with (checkpoints/state.json keeps that text beside
each checkpoint). So: a CONFIG argument cannot also be given; a config.yaml
edited since the checkpoint is named, key by key, before anything is touched;
and a finished run is left exactly as it is unless the resume asks for more
epochs than it trained.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cnncli.config.keypaths import MISSING, differences, nearest_line, parse_path
from cnncli.config.schema import Config
from cnncli.errors import CnnError, ConfigError, UsageError, describe
from cnncli.train import rundir

# How long a run trains is not in its checkpoint: these keys may change between a checkpoint and its resume
# (--epochs writes train.epochs into config.yaml when the resume starts, before the next state.json).
_LENGTH = re.compile(r"train\.epochs|train\.phases\[\d+\]\.epochs")


def check_sources(config: Any, resume: Path | None) -> None:
    """A new run from CONFIG, or a resume of RUN with its own config: exactly one of the two."""
    if config is None and resume is None:
        raise UsageError("give a config file, or --resume RUN_DIR")
    if config is not None and resume is not None:
        given = ", ".join(f"`{c}`" for c in config) if isinstance(config, (list, tuple)) else f"`{config}`"
        raise UsageError(
            f"give a config file or --resume RUN_DIR, not both: --resume continues `{resume}` with "
            f"its own config.yaml, so {given} cannot apply (change a setting of the resumed run with "
            "--set KEY.PATH=VALUE or --epochs N)"
        )


def changes(recorded: str, current: dict) -> list[tuple[str, object, object]]:
    """(key path, value at the checkpoint, value now) for each leaf that differs, epoch counts aside."""
    found = differences([yaml.safe_load(recorded) or {}, current or {}])
    return [(key, was, now) for key, (was, now) in found.items() if not _LENGTH.fullmatch(key)]


def check_config_unchanged(run_dir: Path, state: dict | None) -> None:
    """config.yaml must be the config the last checkpoint was written with (runs from before
    state.json kept it cannot be checked)."""
    recorded = (state or {}).get("config")
    path = Path(run_dir) / "config.yaml"
    if recorded is None or path.read_text() == recorded:
        return
    from cnncli.config.yamlio import read_yaml_file

    data, lines, shown = read_yaml_file(path)
    found = changes(recorded, data)
    if not found:  # comments, layout or epoch counts only
        return
    key, was, now = found[0]
    assert state is not None  # it held the recorded config
    more = f"; {len(found) - 1} other key(s) changed too" if len(found) > 1 else ""
    raise ConfigError.single(
        f"changed since the checkpoint of epoch {len(state['history'])} was written (was {_shown(was)}, "
        f"now {_shown(now)}){more}; that checkpoint fits only the config it was written with: put the value "
        f"back to resume, or start a new run with cnn train {shown}",
        key,
        nearest_line(lines, parse_path(key)),
        shown,
    )


def config_cause(state: dict | None, cfg: Config) -> str:
    """Why a checkpoint may not fit the resumed model: the first key (the model's first) where the
    resume's config, --set included, differs from the one the checkpoint was written with; '' if none."""
    recorded = (state or {}).get("config")
    if recorded is None:
        return ""
    found = sorted(changes(recorded, yaml.safe_load(cfg.to_yaml())), key=lambda c: not c[0].startswith("model."))
    if not found:
        return ""
    key, was, now = found[0]
    return f"the config differs from the one it was written with: {key} was {_shown(was)}, now {_shown(now)}"


def epochs_left(cfg: Config, state: dict) -> int:
    """Epochs the config plans after those state.json has committed."""
    from cnncli.train.phases import plan_phases

    phases = plan_phases(cfg)
    at, done = state["phase"], state["phase_epochs_done"]
    if at >= len(phases):
        return 0
    return phases[at].epochs - done + sum(p.epochs for p in phases[at + 1 :])


def finished(run_dir: Path, cfg: Config, state: dict | None, epochs: int | None) -> str | None:
    """The one line to answer when `run_dir` is complete and the resume asks for nothing more
    (nothing in the run changes then); None when there is training to do. `epochs`: --epochs."""
    info = run_dir / "run.json"
    if state is None or not info.exists() or rundir.read_json(info).get("status") != "complete":
        return None
    done = len(state["history"])
    trained = f"{done} epoch{'s' if done != 1 else ''}"
    if state.get("stopped"):
        if epochs is not None and epochs > done:
            raise CnnError(
                f"`{run_dir}` is complete: early stopping ended it after epoch {done}, so it cannot "
                f"train longer; start a new run with cnn train {run_dir / 'config.yaml'} --epochs N"
            )
        return f"`{run_dir}` is already complete (early stopping ended it after epoch {done}); nothing to do"
    if epochs_left(cfg, state) > 0:
        return None
    if cfg.train.phases:
        last = len(cfg.train.phases) - 1
        how = f"--set train.phases[{last}].epochs=N, with N over {cfg.train.phases[last].epochs}"
    else:
        how = f"--epochs N, with N over {done}"
    return (
        f"`{run_dir}` is already complete ({trained} trained); nothing to do. To train it longer: "
        f"cnn train --resume {run_dir} {how}"
    )


def lengthened(run_dir: Path, cfg: Config, state: dict) -> str | None:
    """config.yaml's text with the train.epochs this resume trains to (--epochs or --set changed it;
    never fewer than state.json has committed); None when it stays as it is. Session writes it once
    the checkpoint is restored."""
    from cnncli.config.loading import load_config

    path = Path(run_dir) / "config.yaml"
    epochs = max(cfg.train.epochs, len(state["history"]))
    written = ((yaml.safe_load(path.read_text()) or {}).get("train") or {}).get("epochs")
    if cfg.train.phases or epochs == written:  # with phases, each phase counts its own epochs
        return None
    return load_config(path, [f"train.epochs={epochs}"]).to_yaml()


def _shown(value) -> str:
    return MISSING if value == MISSING else describe(value)
