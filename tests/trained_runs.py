"""Small trained runs and their exports, made once per test session and shared by
test_export.py, test_predict.py and test_explain.py (a plain module with cached
functions, so several test modules share one training without a conftest fixture).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
FASHION = Path("/usr/share/datasets/fashion-mnist")
_TMP = Path(tempfile.mkdtemp(prefix="cnncli-test-runs-"))
atexit.register(shutil.rmtree, _TMP, True)

# LeNet of configs/mnist_lenet.yaml on 2,000 Fashion-MNIST images per split, 2 epochs (~12 s on 2 CPU threads;
# ~77% test accuracy, confident enough that int8 keeps ~99% of decisions). float32, so model.keras loaded by
# plain Keras computes exactly what the float32 exports compute.
FASHION_OVERRIDES = ["data.dataset=fashion_mnist", "data.limit=2000", "runtime.precision=float32"]
FASHION_EPOCHS = 2
# The shapes CNN on half the examples and 5 epochs (~8 s; ~98% test accuracy). Precision stays `auto`:
# on CPUs with bfloat16 units the run is mixed_bfloat16, which exercises the float32 copy in explain/export.
SHAPES_OVERRIDES = ["data.shapes.train_examples=4000", "data.shapes.test_examples=500", "train.batch_size=32"]
SHAPES_EPOCHS = 8


def _need_fashion_mnist() -> None:
    """As tests/conftest.py's need_fashion_mnist (not imported: tests/faults/ has a conftest of the same name)."""
    import os

    import pytest

    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION} is missing; .ci/run installs Debian's dataset-fashion-mnist")
        pytest.skip(f"{FASHION} is missing (apt-get install dataset-fashion-mnist)")


def _train(config: str, overrides: list[str], epochs: int, name: str) -> Path:
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    result = run_training(TrainOptions(config=CONFIGS / config, overrides=overrides, output=_TMP / "runs",
                                       name=name, epochs=epochs), Reporter())
    return result.run_dir


@functools.cache
def fashion_run() -> Path:
    _need_fashion_mnist()
    return _train("mnist_lenet.yaml", FASHION_OVERRIDES, FASHION_EPOCHS, "fashion-lenet")


@functools.cache
def shapes_run() -> Path:
    return _train("shapes_cnn.yaml", SHAPES_OVERRIDES, SHAPES_EPOCHS, "shapes")


@functools.cache
def fashion_export(fmt: str, quantize: str | None = None):
    """cnncli.deploy.export.ExportResult of the Fashion run, into a directory of its own."""
    from cnncli.deploy.export import export_run

    return export_run(fashion_run(), fmt, _TMP / "exports", quantize=quantize)


@functools.cache
def fashion_test_images(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The first n test images (uint8, (n, 28, 28, 1)) and labels of the Fashion run's data."""
    from cnncli.deploy.runs import open_run

    data = open_run(fashion_run()).load_data()
    return data.x_test[:n], data.y_test[:n]


@functools.cache
def fashion_keras_probabilities(n: int = 1000) -> np.ndarray:
    """model.keras loaded by plain Keras (no cnncli) on the first n test images."""
    import keras

    model = keras.models.load_model(fashion_run() / "model.keras", compile=False)
    x, _ = fashion_test_images(n)
    return np.asarray(model.predict(x.astype(np.float32), batch_size=250, verbose=0), np.float64)
