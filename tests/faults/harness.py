"""Run `cnn` commands as real processes for the crash tests, and check what they leave behind.

`Cnn` drives tests/faults/zygote.py (a pre-imported parent that forks one child
per command); `check_intact` and `check_complete` state what a run directory
must look like after a crash and after the resume.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ZYGOTE = Path(__file__).with_name("zygote.py")
TIMEOUT = 240  # seconds for one command: a tiny run takes ~5 s, a loaded CI machine several times that


@dataclass
class Done:
    code: int  # exit status; -9 when killed by SIGKILL
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Zygote:
    """One tests/faults/zygote.py process and its request/reply pipe."""

    def __init__(self):
        self.sources = _source_times()
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        ready = json.loads(self.proc.stdout.readline() or "{}")
        assert ready.get("ready"), "tests/faults/zygote.py did not start"
        assert ready["tasks"] == 1, f"the zygote has {ready['tasks']} threads; forking it would not be safe"

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Child:
    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path):
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err
        self.done: Done | None = None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def state(self) -> str:
        """The process state letter from /proc: R, S, T (stopped), Z (exited, not yet reaped), ..."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return "?"

    def wait_until_stopped(self, timeout: float = TIMEOUT) -> None:
        """Until the child has stopped itself (SIGSTOP, the `stop` fault action)."""
        deadline = time.monotonic() + timeout
        while (state := self.state()) != "T":
            if state in ("Z", "?") or time.monotonic() > deadline:
                raise AssertionError(f"pid {self.pid} never stopped (state {state})\n{self.err.read_text()}")
            time.sleep(0.02)

    def wait(self, timeout: float = TIMEOUT) -> Done:
        if self.done is None:
            answer = self.zygote.ask({"op": "wait", "pid": self.pid, "timeout": timeout})
            if answer.get("timeout"):
                self.kill()
                raise AssertionError(f"`cnn` (pid {self.pid}) did not finish in {timeout} s\n{self.err.read_text()}")
            self.done = Done(answer["status"], self.out.read_text(), self.err.read_text())
        return self.done

    def kill(self) -> None:
        """SIGKILL (and SIGCONT, should it be stopped) and reap: for a test that failed half-way."""
        if self.done is None:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
            answer = self.zygote.ask({"op": "wait", "pid": self.pid, "timeout": 30})
            self.done = Done(answer.get("status", -9), "", "")


class Cnn:
    """`cnn ARGS...` in a fresh process forked from a warm zygote."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.count = 0
        self.zygote = Zygote()
        self.retired: list[Zygote] = []  # replaced after a source edit; their children may still run
        self.children: list[Child] = []

    def start(self, *args, cwd: Path, fault: str | None = None, wrap: dict | None = None,
              umask: int = 0o022) -> Child:
        if _source_times() != self.zygote.sources:  # autograph re-reads source files: the zygote's must be current
            self.retired.append(self.zygote)
            self.zygote = Zygote()
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNNCLI_")}
        env.update(PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
        if fault:
            env["CNNCLI_FAULT"] = fault
        if wrap:
            env["CNNCLI_TEST_WRAP"] = ";".join(f"{target}={point}" for target, point in wrap.items())
        answer = self.zygote.ask({"op": "spawn", "argv": [str(a) for a in args], "cwd": str(cwd), "env": env,
                                  "stdout": str(out), "stderr": str(err), "umask": umask})
        child = Child(self.zygote, answer["pid"], out, err)
        self.children.append(child)
        return child

    def __call__(self, *args, cwd: Path, timeout: float = TIMEOUT, **kwargs) -> Done:
        return self.start(*args, cwd=cwd, **kwargs).wait(timeout)

    def reap(self) -> None:
        """Kill whatever a failed test left running or stopped."""
        for child in self.children:
            child.kill()
        self.children.clear()

    def close(self) -> None:
        self.reap()
        for zygote in (*self.retired, self.zygote):
            zygote.close()


def _source_times() -> dict[str, int]:
    import cnncli

    root = Path(cnncli.__file__).parent
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*.py")}


def uninterrupted(cnn: Cnn, where: Path, config: str) -> Path:
    """Train `config` (YAML text) in `where` without a fault: the run a crashed-and-resumed one must equal."""
    (where / "run.yaml").write_text(config)
    done = cnn("train", "run.yaml", "-o", "runs", "-q", cwd=where)
    assert done.code == 0, done
    return only_run_dir(where / "runs")


# ---------------------------------------------------------------- what a run directory must look like

def run_dirs(output: Path) -> list[Path]:
    return sorted(p for p in output.glob("*/*") if p.is_dir())


def only_run_dir(output: Path) -> Path:
    found = run_dirs(output)
    assert len(found) == 1, found
    return found[0]


def history_epochs(run_dir: Path) -> list[int]:
    from cnncli.train.rundir import read_history

    return [int(row["epoch"]) for row in read_history(run_dir / "history.csv")]


def committed_epochs(run_dir: Path) -> int:
    """Epochs named by checkpoints/state.json, the run's commit record (0 before the first)."""
    path = run_dir / "checkpoints" / "state.json"
    if not path.exists():
        return 0
    state = json.loads(path.read_text())
    return len(state["history"])


def temporary_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if (p.name.startswith(".") and ".tmp-" in p.name) or p.name.endswith("_temp")
                  or ".tempstate" in p.name)


def _check_keras_file(path: Path) -> None:
    assert zipfile.is_zipfile(path), f"{path} is not a complete .keras (zip) file"
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, f"{path} has a damaged member"
        assert {"config.json", "model.weights.h5"} <= set(zf.namelist()), zf.namelist()


def check_intact(run_dir: Path) -> int:
    """Whatever the crash, every file present is whole and state.json names a whole checkpoint.

    Returns the number of committed epochs.
    """
    import yaml

    assert (run_dir / "config.yaml").exists(), sorted(os.listdir(run_dir))
    yaml.safe_load((run_dir / "config.yaml").read_text())
    if (run_dir / "run.json").exists():
        json.loads((run_dir / "run.json").read_text())
    committed = committed_epochs(run_dir)
    if committed:
        state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
        assert [row["epoch"] for row in state["history"]] == list(range(1, committed + 1)), state["history"]
        prefix = run_dir / state["checkpoint"]
        assert prefix.with_name(prefix.name + ".index").stat().st_size > 0
        assert list(prefix.parent.glob(prefix.name + ".data-*")), f"{prefix}: no data file"
    epochs = history_epochs(run_dir)
    # history.csv is written just before the checkpoint: it may be one epoch ahead of state.json, never behind.
    assert epochs in (list(range(1, committed + 1)), list(range(1, committed + 2))), (epochs, committed)
    if (run_dir / "model.keras").exists():
        _check_keras_file(run_dir / "model.keras")
    if (run_dir / "metrics.json").exists():
        assert "test" in json.loads((run_dir / "metrics.json").read_text())
    return committed


def check_complete(run_dir: Path, epochs: int) -> dict:
    """A finished run: every epoch exactly once, model and metrics whole, no temporary files left."""
    assert history_epochs(run_dir) == list(range(1, epochs + 1)), history_epochs(run_dir)
    assert committed_epochs(run_dir) == epochs
    _check_keras_file(run_dir / "model.keras")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert (run_dir / "curves.png").stat().st_size > 0
    assert temporary_files(run_dir) == []
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("epoch-*.index"))
    assert checkpoints == [f"epoch-{e:04d}.index" for e in range(max(1, epochs - 1), epochs + 1)], checkpoints
    return metrics


def world_writable(root: Path) -> list[str]:
    return [str(p) for p in [root, *root.rglob("*")] if not p.is_symlink() and p.stat().st_mode & stat.S_IWOTH]


def history_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))
