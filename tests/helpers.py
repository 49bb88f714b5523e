"""Constants and checks shared by the test modules (import as `from helpers import ...`).

Kept out of conftest.py: two conftest modules (here and in tests/faults/) would
shadow each other under the one module name `conftest`.
"""

from __future__ import annotations

import os
import socket
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
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            target = root / split / data.class_names[label]
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(target / f"{i:04d}.png")
    return root


# The small config most tests train: a few hundred 16×16 shapes, one small conv layer, one epoch, float32.
SMALL_CONFIG = {
    "name": "tiny",
    "seed": 7,
    "data": {"dataset": "shapes", "validation_split": 0.2,
             "shapes": {"image_size": 16, "train_examples": 200, "test_examples": 40, "classes": ["x", "o"]}},
    "model": {"layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                         {"type": "Flatten"}]},  # the last Dense, one unit per class, is added by small_config
    "train": {"epochs": 1, "batch_size": 32},
    "runtime": {"precision": "float32"},
}


def small_config(*changes: dict | str) -> str:
    """SMALL_CONFIG as YAML text, with `changes` applied in order.

    A change is a mapping (or YAML text of one). A key with dots is a key path
    (`{"train.epochs": 3}`); a nested mapping merges into the section it names; a value of
    None removes the key. Unless the changes give `model.layers`, the model ends in a
    softmax Dense with one unit per class of `data.shapes.classes`.
    """
    import copy

    import yaml

    config = copy.deepcopy(SMALL_CONFIG)
    layers_given = False
    for change in changes:
        change = yaml.safe_load(change) if isinstance(change, str) else change
        for key, value in (change or {}).items():
            path = key.split(".")
            layers_given |= path == ["model", "layers"] or (path == ["model"] and "layers" in (value or {}))
            _merge(config, path, copy.deepcopy(value))
    if not layers_given:
        classes = config["data"].get("shapes", {}).get("classes", SMALL_CONFIG["data"]["shapes"]["classes"])
        config["model"]["layers"].append({"type": "Dense", "units": len(classes), "activation": "softmax"})
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=120)


def _merge(config: dict, path: list[str], value) -> None:
    parent = config
    for part in path[:-1]:
        parent = parent.setdefault(part, {})
    key = path[-1]
    if value is None:
        parent.pop(key, None)
    elif isinstance(value, dict) and isinstance(parent.get(key), dict):
        for sub, subvalue in value.items():
            _merge(parent[key], [sub], subvalue)
    else:
        parent[key] = value


def free_ports(n: int) -> list[int]:
    """n TCP ports on 127.0.0.1 that were free a moment ago, for the workers of a test cluster."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_env(**extra) -> dict:
    """This environment for a cnn worker process: no inherited cluster, fault or worker-dir settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CNNCLI_FAULT", "CNNCLI_WORKER_DIR")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg", **extra})
    return env
