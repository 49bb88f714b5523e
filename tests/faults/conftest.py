"""Fixtures of the crash tests: the warm `cnn` launcher and a tiny config.

Every test here runs real `cnn` processes (forked from tests/faults/zygote.py)
and kills, signals or starves them; the tiny config trains 3 epochs of 16×16
shapes in about a second, so a crash-and-resume pair costs ~10 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.platform != "linux":
    pytest.skip("the crash tests fork, signal and read /proc: Linux only", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cnn, uninterrupted  # noqa: E402
from helpers import small_config  # noqa: E402

EPOCHS = 3
TINY = small_config({  # deterministic: a resumed run must reproduce the uninterrupted one exactly
    "deterministic": True, "data.validation_split": 0.1,
    "data.shapes": {"train_examples": 400, "test_examples": 80, "classes": None},  # the six default classes
    "model.layers": [{"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
                     {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"},
                     {"type": "Dense", "units": 6, "activation": "softmax"}],
    "train": {"epochs": EPOCHS, "optimizer": {"type": "Adam", "learning_rate": 0.01}},
})


@pytest.fixture(scope="session")
def cnn(tmp_path_factory):
    launcher = Cnn(tmp_path_factory.mktemp("cnn-logs"))
    yield launcher
    launcher.close()


@pytest.fixture(autouse=True)
def _reap(cnn):
    """A test that fails half-way must not leave a stopped or running child behind."""
    yield
    cnn.reap()


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def reference(cnn, tmp_path_factory) -> Path:
    """The tiny run, uninterrupted: what every crashed-and-resumed run must end up as."""
    return uninterrupted(cnn, tmp_path_factory.mktemp("reference"), TINY)
