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


def write_shapes_folder(root: Path, seed: int, train: int, test: int) -> Path:
    """The shapes dataset (x, o, square; 16×16 grey) as an image folder of PNGs: root/{train,test}/<class>/."""
    from PIL import Image

    from cnncli.config.schema import DataConfig, ShapesSpec
    from cnncli.data import load

    data = load(DataConfig(dataset="shapes", validation_split=0,
                           shapes=ShapesSpec(image_size=16, classes=["x", "o", "square"], train_examples=train,
                                             test_examples=test)), seed=seed)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for i, (image, label) in enumerate(zip(x, y)):
            target = root / split / data.class_names[label]
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(target / f"{i:04d}.png")
    return root
