"""What a run leaves beside its model describes that model, and model.keras stands on its own.

- model.keras loads compiled in plain Keras (keras.saving.load_model with its defaults) in a
  process that never imports cnncli, whatever loss the config names.
- metrics.json's `val` figures are those of the saved weights, also when EarlyStopping restores
  the best epoch's weights or checkpoint.save_best_only keeps the best epoch.
- data.on_corrupt: skip warns, counts and records run.json's data.skipped alike in every cache mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import write_shapes_folder

TINY_MODEL = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
    {"type": "GlobalAveragePooling2D"},
    {"type": "Dense", "units": 3, "activation": "softmax"},
]


def _config(tmp_path: Path, **train) -> Path:
    # deterministic: the same run every time, and immune to op determinism left on by an earlier run in this
    # process (a streamed run that is not deterministic times its input with tf.timestamp, refused then).
    cfg = {"name": "modelfile", "seed": 3, "deterministic": True,
           "data": {"dataset": "shapes", "validation_split": 0.2,
                    "shapes": {"image_size": 16, "classes": ["x", "o", "square"], "train_examples": 240,
                               "test_examples": 60}},
           "model": {"layers": TINY_MODEL},
           "train": {"epochs": 1, "batch_size": 32, **train}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, tmp_path: Path, overrides: list[str] | None = None) -> Path:
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    return run_training(TrainOptions(config=config, overrides=overrides or [], output=tmp_path / "runs"),
                        Reporter()).run_dir


# ---------------------------------------------------------------- model.keras in plain Keras

# What a model loaded by plain Keras reports: run with no cnncli on the path and none imported.
_PLAIN_KERAS = r"""
import json, sys
import numpy as np
import keras

out = []
for path, x_path, y_path in json.loads(sys.argv[1]):
    model = keras.saving.load_model(path)  # the defaults: compile=True, safe_mode=True
    x, y = np.load(x_path), np.load(y_path)
    probs = model.predict(x, verbose=0)
    sparse = type(model.loss).__name__.startswith("Sparse")
    labels = y if sparse else keras.utils.to_categorical(y, probs.shape[-1])
    out.append({"probs": probs.tolist(), "loss": type(model.loss).__name__, "loss_config": model.loss.get_config(),
                "evaluate": model.evaluate(x, labels, verbose=0, return_dict=True)})
assert "cnncli" not in sys.modules, sorted(m for m in sys.modules if m.startswith("cnncli"))
print(json.dumps(out))
"""

LOSSES = {
    "sparse_by_name": ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", {}),
    "categorical_on_class_indices": ("categorical_crossentropy", "CategoricalCrossentropy", {}),
    "mapping_with_arguments": ({"type": "CategoricalCrossentropy", "label_smoothing": 0.1},
                               "CategoricalCrossentropy", {"label_smoothing": 0.1}),
    "sparse_mapping": ({"type": "SparseCategoricalCrossentropy", "from_logits": False},
                       "SparseCategoricalCrossentropy", {"from_logits": False}),
}


def _plain_keras(jobs: list[tuple[str, str, str]], cwd: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _PLAIN_KERAS, json.dumps(jobs)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_run_model_loads_compiled_in_plain_keras(tmp_path):
    """Every kind of train.loss: model.keras loads with keras.saving.load_model's defaults, predicts as
    the run's model does, and evaluates with the configured loss (labels in the form that loss takes)."""
    from cnncli.config.learning import make_loss
    from cnncli.deploy.runs import open_run
    from cnncli.model.predict_loop import keras_predict

    jobs, expected = [], []
    for key, (loss, cls_name, args) in LOSSES.items():
        folder = tmp_path / key
        folder.mkdir()
        run_dir = _train(_config(folder, loss=loss, metrics=["accuracy"]), folder)
        run = open_run(run_dir)
        data = run.load_data()
        x, y = np.asarray(data.x_test[:40]), np.asarray(data.y_test[:40])
        probs = keras_predict(run.load_model(), x)
        np.save(folder / "x.npy", x)
        np.save(folder / "y.npy", y)
        jobs.append((str(run_dir / "model.keras"), str(folder / "x.npy"), str(folder / "y.npy")))
        expected.append((key, cls_name, args, probs, float(np.mean(make_loss(run.cfg.train.loss)(y, probs))),
                         float(np.mean(probs.argmax(-1) == y))))
    plain = _plain_keras(jobs, tmp_path)
    for got, (key, cls_name, args, probs, loss_value, accuracy) in zip(plain, expected, strict=True):
        np.testing.assert_allclose(np.array(got["probs"]), probs, atol=1e-5, err_msg=key)
        assert got["loss"] == cls_name, key
        assert {k: got["loss_config"][k] for k in args} == args, key
        assert got["evaluate"]["loss"] == pytest.approx(loss_value, rel=1e-4, abs=1e-5), key
        assert got["evaluate"]["accuracy"] == pytest.approx(accuracy, abs=1e-6), key


# ---------------------------------------------------------------- metrics.json describes model.keras

def _val_of_saved_model(run_dir: Path) -> dict:
    """Loss and accuracy of model.keras on the run's validation split, computed afresh."""
    from cnncli.config.learning import make_loss
    from cnncli.deploy.runs import open_run
    from cnncli.model.predict_loop import keras_predict

    run = open_run(run_dir)
    data = run.load_data()
    probs = keras_predict(run.load_model(), np.asarray(data.x_val))
    return {"loss": float(np.mean(make_loss(run.cfg.train.loss)(data.y_val, probs))),
            "accuracy": float(np.mean(probs.argmax(-1) == data.y_val))}


# A rate high enough that validation loss goes up and down between the 5 epochs.
UNSTEADY = ["train.epochs=5", "train.optimizer.type=SGD", "train.optimizer.learning_rate=0.8"]


@pytest.mark.parametrize("keeps_best", [
    "train.early_stopping={monitor: val_loss, patience: 5, restore_best_weights: true}",
    "train.checkpoint={monitor: val_loss, save_best_only: true}",
], ids=["restore_best_weights", "save_best_only"])
def test_val_metrics_are_those_of_the_saved_weights(tmp_path, keeps_best):
    import csv

    run_dir = _train(_config(tmp_path, metrics=["accuracy"]), tmp_path, UNSTEADY + [keeps_best])
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    losses = [float(r["val_loss"]) for r in rows]
    best = int(np.argmin(losses))
    assert best != len(rows) - 1, f"the last epoch was the best ({losses}): the test shows nothing"
    val = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert val["loss"] == pytest.approx(losses[best], rel=1e-5)
    assert val["accuracy"] == pytest.approx(float(rows[best]["val_accuracy"]), abs=1e-6)
    fresh = _val_of_saved_model(run_dir)
    assert val["loss"] == pytest.approx(fresh["loss"], rel=1e-4)
    assert val["accuracy"] == pytest.approx(fresh["accuracy"], abs=1e-6)


# ---------------------------------------------------------------- on_corrupt: skip in every cache mode

@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory):
    """The shapes as PNGs, two training files and one test file of which are garbage bytes."""
    root = write_shapes_folder(tmp_path_factory.mktemp("corrupt") / "folder", seed=5, train=48, test=15)
    bad = [sorted((root / "train" / "x").iterdir())[0], sorted((root / "train" / "o").iterdir())[1],
           sorted((root / "test" / "square").iterdir())[0]]
    for path in bad:
        path.write_bytes(b"not a picture " * 20)
    return root, sorted(str(p) for p in bad)


@pytest.mark.parametrize("cache", ["memory", "disk", "none", "auto"])
def test_skipped_images_are_warned_counted_and_recorded_alike(tmp_path, corrupt_folder, cache, capsys):
    from cnncli.config.schema import DataConfig
    from cnncli.data import SOURCES
    from cnncli.data.pipeline import split_listing

    root, bad = corrupt_folder
    data_cfg = {"dataset": "image_folder", "path": str(root), "validation_split": 0.25, "on_corrupt": "skip",
                "cache": cache, "cache_dir": str(tmp_path / "cache")}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "skip", "seed": 3, "deterministic": True, "data": data_cfg,
                                      "model": {"layers": TINY_MODEL},
                                      "train": {"epochs": 1, "batch_size": 16}}))
    # The files each split is given (as streamed), less the unreadable ones.
    listed = split_listing(SOURCES.get("image_folder").files(DataConfig(**data_cfg)), DataConfig(**data_cfg), 3)
    expected = {split: len(set(s.files) - set(bad)) for split, s in listed.items()}
    assert sum(len(s.files) for s in listed.values()) - sum(expected.values()) == len(bad)

    run_dir = _train(config, tmp_path)
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "unreadable" in line] == [
        f"warning: skipped 3 unreadable image(s): {', '.join(bad)}"]
    data = json.loads((run_dir / "run.json").read_text())["data"]
    assert data["skipped"] == bad
    assert {split: data[split] for split in expected} == expected
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert int(np.sum(metrics["test"]["confusion_matrix"])) == expected["test"]


# ---------------------------------------------------------------- a backbone's scaling is Keras's own

_PLAIN_PREDICT = r"""
import json, sys
import numpy as np
import keras

out = {}
for key, path, x_path in json.loads(sys.argv[1]):
    out[key] = keras.saving.load_model(path).predict(np.load(x_path), verbose=0).tolist()
assert "cnncli" not in sys.modules, sorted(m for m in sys.modules if m.startswith("cnncli"))
print(json.dumps(out))
"""

# One keras.applications family per preprocess_input mode (caffe, tf, torch, none), small ones where possible.
BACKBONE_PER_MODE = {"caffe": ("VGG16", {}), "tf": ("MobileNet", {"alpha": 0.25}),
                     "torch": ("DenseNet121", {}), "none": ("EfficientNetB0", {})}


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_backbone_models_scale_as_preprocess_input_and_load_in_plain_keras(tmp_path):
    import importlib

    import keras

    from cnncli.config.loading import config_from_dict
    from cnncli.config.vocabulary import BACKBONES
    from cnncli.model.builder import build_model
    from cnncli.model.preprocessing import backbone_mode

    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    jobs, expected, same_scaling = [], {}, []
    for mode, (name, args) in BACKBONE_PER_MODE.items():
        assert backbone_mode(name) == mode
        cfg = config_from_dict({"name": "bb", "model": {
            "input_shape": [32, 32, 3], "backbone": {"name": name, "weights": None, **args},
            "layers": [{"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 3, "activation": "softmax"}]}})
        model = build_model(cfg, (32, 32, 3))
        base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        # Keras's own pipeline with the same weights: preprocess_input, then the application as Keras builds it
        # (whose first convolution takes BGR in caffe mode).
        reference = keras.models.clone_model(base)
        weights = base.get_weights()
        if mode == "caffe":
            first = next(i for i, w in enumerate(weights) if w.ndim == 4)
            weights[first] = weights[first][:, :, ::-1, :]
        reference.set_weights(weights)
        family = importlib.import_module(BACKBONES.get(name).__module__)
        ours = np.asarray(base(model.get_layer("preprocess")(x)))
        theirs = np.asarray(reference(family.preprocess_input(x.copy())))
        same_scaling.append((name, ours, theirs))
        model.save(tmp_path / f"{mode}.keras")
        jobs.append((mode, str(tmp_path / f"{mode}.keras"), str(tmp_path / "x.npy")))
        expected[mode] = np.asarray(model(x))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _PLAIN_PREDICT, json.dumps(jobs)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for mode, probs in expected.items():
        np.testing.assert_allclose(np.array(got[mode]), probs, atol=1e-5, err_msg=mode)
    for name, ours, theirs in same_scaling:
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(np.abs(theirs).max()), err_msg=name)


def test_smoke_check_names_the_classes_keras_cannot_find_alone(tmp_path):
    """--smoke's reload runs where cnncli's classes are registered, so it reads model.keras's config instead."""
    import keras

    from cnncli.model.preprocessing import ImagenetPreprocess
    from cnncli.train.ending import _foreign_classes

    inputs = keras.Input((8, 8, 3))
    old = keras.Model(inputs, ImagenetPreprocess("caffe")(inputs))
    old.save(tmp_path / "old.keras")
    assert _foreign_classes(tmp_path / "old.keras") == ["cnncli.model.preprocessing.ImagenetPreprocess"]
    plain = keras.Model(inputs, keras.layers.Rescaling(1.0, offset=[-1.0, -2.0, -3.0])(inputs))
    plain.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    plain.save(tmp_path / "plain.keras")
    assert _foreign_classes(tmp_path / "plain.keras") == []


def test_a_caffe_backbone_run_started_before_rgb_scaling_is_not_resumed(tmp_path):
    """Its checkpoints hold a first convolution trained on BGR, which the model built now does not feed."""
    from cnncli.config.loading import config_from_dict
    from cnncli.errors import CnnError
    from cnncli.train.session import INPUT_SCALING, _check_scaling

    def cfg(name):
        return config_from_dict({"name": "bb", "model": {"input_shape": [32, 32, 3],
                                                         "backbone": {"name": name, "weights": None},
                                                         "layers": [{"type": "Flatten"},
                                                                    {"type": "Dense", "units": 3}]}})

    with pytest.raises(CnnError, match=r"`runs/bb/1` was started by an older cnncli, whose VGG16 took its input in "
                                       r"BGR order; .* start it again with cnn train runs/bb/1/config.yaml"):
        _check_scaling(cfg("VGG16"), {"phase": 0}, Path("runs/bb/1"))
    _check_scaling(cfg("VGG16"), {"input_scaling": INPUT_SCALING}, Path("runs/bb/1"))
    _check_scaling(cfg("MobileNet"), {"phase": 0}, Path("runs/bb/1"))  # tf mode: the same arithmetic as before
    run_dir = _train(_config(tmp_path), tmp_path)
    assert json.loads((run_dir / "checkpoints" / "state.json").read_text())["input_scaling"] == INPUT_SCALING
