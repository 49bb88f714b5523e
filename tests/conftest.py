"""Shared fixtures: small configs and trained runs, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def need_fashion_mnist() -> None:
    """Real-data tests: skip on a developer machine without the Debian package, fail in CI."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION} is missing; .ci/run installs Debian's dataset-fashion-mnist")
        pytest.skip(f"{FASHION} is missing (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config (text) to tmp_path and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
