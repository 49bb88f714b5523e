"""Constants and checks shared by the test modules (import as `from helpers import ...`).

Kept out of conftest.py: two conftest modules (here and in tests/faults/) would
shadow each other under the one module name `conftest`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def need_fashion_mnist() -> None:
    """Real-data tests: skip on a developer machine without the Debian package, fail in CI."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION} is missing; .ci/run installs Debian's dataset-fashion-mnist")
        pytest.skip(f"{FASHION} is missing (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=False)
def keep_dtype_policy():
    """In-process `cnn train` may choose a mixed-precision global policy; later tests in the process need theirs."""
    import keras

    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
