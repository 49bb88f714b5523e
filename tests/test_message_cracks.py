"""Messages that said the wrong thing, or nothing: the reasons and warnings `cnn train`, `cnn tune`
and `cnn data` print, and where they print them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, ROOT

from cnncli.config.loading import load_config
from cnncli.train.decisions import choose_threads, model_size, thread_warnings, threads_line


def write_folder(root: Path, per_class: int, classes: tuple[str, ...]) -> Path:
    """An image folder of small random grey PNGs: root/<class>/NN.png."""
    import numpy as np
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.random.default_rng(c * 100 + i).integers(0, 256, (8, 6), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def _cnn(*args: str, cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environ.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, text=True, timeout=300,
                          env=environ, cwd=cwd)


TINY_SHAPES = ["--set", "train.epochs=1", "--set", "data.shapes.train_examples=120",
               "--set", "data.shapes.test_examples=30", "--set", "data.shapes.image_size=16"]


# ---------------------------------------------------------------- the thread line

@pytest.mark.parametrize("side", [28, 32])
def test_a_backbone_on_small_images_is_not_called_large_images(side):
    cfg = load_config(CONFIGS / "vgg16_transfer.yaml", [f"model.input_shape=[{side},{side},3]",
                                                        f"data.image_size=[{side},{side}]"])
    small, why = model_size(cfg)
    assert not small
    reason = choose_threads(2, "avx2", "float32", None, small, why)[2]
    assert reason == "cost unknown from the config: a backbone (VGG16), taken as a large model"
    assert "large images" not in reason


def test_the_size_reason_names_the_side():
    small, why = model_size(load_config(CONFIGS / "mnist_lenet.yaml", []))
    assert small and why == "small images (28 px a side, small up to 64)"
    small, why = model_size(load_config(CONFIGS / "mnist_lenet.yaml", ["data.image_size=[128,128]"]))
    assert not small and why == "large images (128 px a side, small up to 64)"
    small, why = model_size(load_config(CONFIGS / "mnist_lenet.yaml", ["data.dataset=npz", "data.path=x.npz"]))
    assert not small and why == "image size unknown, taken as a large model"


def test_zero_threads_read_as_tensorflows_default():
    assert threads_line(0, 2, "set in the config") == \
        "threads 0 (TensorFlow's default) per op, 2 ops at once: set in the config"
    assert threads_line(1, 2, "x") == "threads 1 per op, 2 ops at once: x"


def test_more_threads_than_cores_is_a_warning():
    assert thread_warnings(None, None, 2) == []
    assert thread_warnings(2, 0, 2) == []
    [warning] = thread_warnings(1000, 2, 2)
    assert warning.startswith("runtime.intra_op_threads is 1,000 but this process may run on 2 core(s)")
    assert "use at most 2, or 0 for TensorFlow's default" in warning
    assert len(thread_warnings(3, 3, 2)) == 2


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_train_prints_zero_threads_and_warns_of_too_many(tmp_path):
    cores = len(os.sched_getaffinity(0))
    proc = _cnn("train", "configs/shapes_cnn.yaml", *TINY_SHAPES, "--set", "runtime.intra_op_threads=0",
                "--set", f"runtime.inter_op_threads={cores + 998}", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("threads "))
    assert line.startswith(f"threads 0 (TensorFlow's default) per op, {cores + 998:,} ops at once: set in the config "
                           "(0: TensorFlow chooses, about one thread per core)")
    assert f"warning: runtime.inter_op_threads is {cores + 998:,} but this process may run on {cores} core(s)" \
        in proc.stderr


# ---------------------------------------------------------------- cnn tune

TUNE = """\
name: tiny
seed: 7
data:
  dataset: shapes
  validation_split: 0.2
  shapes: {{image_size: 16, train_examples: 120, test_examples: 30, classes: [x, o, square]}}
model:
  layers:
    - {{type: Conv2D, filters: 4, kernel_size: 3, activation: relu}}
    - {{type: Flatten}}
    - {{type: Dense, units: 3, activation: softmax}}
train:
  epochs: 1
  batch_size: 32
  optimizer: {{type: Adam, learning_rate: 0.005}}
runtime:
  precision: float32
search:
  trials: {trials}
  sampler: {sampler}
  params:
{params}
{extra}"""


def tune_config(tmp_path: Path, params: str = "    model.layers[0].filters: {choice: [2, 4]}", trials: int = 2,
                sampler: str = "random", extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TUNE.format(params=params, trials=trials, sampler=sampler, extra=extra))
    return path


def test_tune_without_mlflow_refuses_before_the_sweep_directory(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cnncli.cli import app

    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails as if not installed
    config = tune_config(tmp_path, extra=f"tracking: {{mlflow: {{uri: 'file:{tmp_path / 'mlruns'}'}}}}\n")
    monkeypatch.chdir(tmp_path)
    for args in ([], ["--output", str(tmp_path / "sweep")]):
        result = CliRunner().invoke(app, ["tune", str(config), *args])
        assert result.exit_code == 1, result.output
        assert result.stderr == "Error: MLflow tracking needs the optional extra: pip install 'cnncli[mlflow]'\n"
        assert "sweep directory" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no sweeps/, no sweep/, no study.db


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_a_grid_smaller_than_the_trials_runs_each_point_once_and_says_so(tmp_path, monkeypatch):
    """Also: every run directory in `cnn tune --json` is absolute, whatever --output was given as."""
    import json

    config = tune_config(tmp_path, trials=3, sampler="grid")
    monkeypatch.chdir(tmp_path)
    proc = _cnn("tune", str(config), "--output", "sweep", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: search.trials asks for 3 trials but the grid has 2 points: running 2, each point once\n" \
        in proc.stderr
    assert "GridSampler" not in proc.stderr  # Optuna's own "re-evaluating a configuration" warning
    doc = json.loads(proc.stdout)
    assert [t["number"] for t in doc["trials"]] == [0, 1]
    assert sorted(t["model.layers[0].filters"] for t in doc["trials"]) == [2, 4]
    sweep = tmp_path / "sweep"
    assert doc["sweep_dir"] == str(sweep)
    assert [t["run_dir"] for t in doc["trials"]] == [str(sweep / "trials" / "0000"), str(sweep / "trials" / "0001")]
    assert doc["best"]["run_dir"] == str(sweep / "trials" / f"{doc['best']['number']:04d}")
    with open(sweep / "trials.csv") as f:  # the table beside the trials keeps names relative to it
        assert "trials/0000" in f.read()

    proc = _cnn("tune", str(config), "--output", "sweep", "--trials", "5", cwd=tmp_path)  # continues: nothing to run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("note: --trials asks for 5 trials but the grid has 2 points: running 2, "
                                  "each point once\nsweep directory: sweep")
    assert "trial " not in proc.stdout.replace("best trial", "")


def test_a_diverging_rate_reads_in_four_significant_digits():
    from cnncli.tune.compare import cell

    assert cell(1e21) == "1e+21"
    assert cell(1.4210736239935779e20) == "1.421e+20"
    assert cell(-3e12) == "-3e+12"
    assert [cell(v) for v in (11832.4, 123456789.0, 3e-05, 0.123456)] == ["11,832", "123,456,789", "3e-05", "0.1235"]


def test_every_path_in_a_json_document_is_absolute(tmp_path, monkeypatch, capsys):
    import json

    from cnncli.commands.common import emit_json
    from cnncli.fileio import absolute

    monkeypatch.chdir(tmp_path)
    emit_json({"run_dir": Path("runs/x/1"), "nested": [{"output": Path("../y.png")}], "name": "runs/x"})
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"run_dir": str(tmp_path / "runs/x/1"), "nested": [{"output": str(tmp_path.parent / "y.png")}],
                   "name": "runs/x"}
    assert absolute("gs://bucket/records") == "gs://bucket/records"


# ---------------------------------------------------------------- cnn data

def test_data_progress_goes_to_stderr_and_stdout_keeps_the_result(tmp_path):
    from typer.testing import CliRunner

    from cnncli.cli import app

    root = write_folder(tmp_path / "pictures", per_class=5, classes=("a", "b"))
    runner = CliRunner()
    packed = runner.invoke(app, ["data", "pack", str(root), "--output", str(tmp_path / "packed")])
    assert packed.exit_code == 0, packed.stderr
    assert packed.stdout.startswith("packed ") and packed.stdout.count("\n") == 1
    assert "packing: 0/10 pictures\n" in packed.stderr and "packing: 10/10 pictures\n" in packed.stderr
    inspected = runner.invoke(app, ["data", "inspect", str(tmp_path / "packed")])
    assert inspected.exit_code == 0, inspected.stderr
    assert "pictures\n" not in inspected.stdout.replace("per class", "") and "reading:" not in inspected.stdout
    assert "reading: 10/10 pictures\n" in inspected.stderr


# ---------------------------------------------------------------- a split that leaves classes out

def test_a_split_leaving_fewer_training_examples_than_classes_is_a_warning():
    import numpy as np

    from cnncli.config.schema import DataConfig
    from cnncli.data.prepare import training_class_warnings

    names = [str(i) for i in range(10)]
    source = np.arange(300) % 10
    cfg = DataConfig(dataset="npz", path="x.npz", validation_split=0.99)
    [warning] = training_class_warnings(np.array([0, 3, 7]), source, names, cfg)
    assert warning == ("the training split holds 3 example(s) of 10 classes after data.validation_split 0.99; "
                       "no training example of `1`, `2`, `4`, `5`, `6` and 2 more, which the model cannot learn to "
                       "predict; lower data.validation_split")
    assert training_class_warnings(source[:270], source, names, cfg) == []  # every class, more than 10 examples
    cfg = DataConfig(dataset="npz", path="x.npz", validation_split=0, limit=12)
    [warning] = training_class_warnings(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8]), source[source != 9], names,
                                        cfg)
    assert warning == ("the training split holds 12 example(s) of 10 classes after data.limit 12; no training "
                       "example of `9`, which the model cannot learn to predict; raise data.limit or add training "
                       "images of `9`")


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_train_warns_of_a_class_the_split_left_out(tmp_path):
    proc = _cnn("train", "configs/shapes_cnn.yaml", *TINY_SHAPES, "--set", "data.validation_split=0.99",
                "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "warning: the training split holds 1 example(s) of 6 classes after data.validation_split 0.99; " \
           "no training example of " in proc.stderr


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_resident_and_streamed_folders_warn_alike(tmp_path, cache):
    from cnncli.config.schema import DataConfig
    from cnncli.data import open_data

    root = write_folder(tmp_path / "pictures", per_class=4, classes=("a", "b", "c"))
    data = open_data(DataConfig(dataset="image_folder", path=str(root), validation_split=0.9, cache=cache), seed=1)
    assert len(data.y_train) == 1
    assert [w for w in data.warnings if w.startswith("the training split")] == [
        "the training split holds 1 example(s) of 3 classes after data.validation_split 0.9; no training example "
        f"of {', '.join(f'`{c}`' for c in 'abc' if c != data.class_names[int(data.y_train[0])])}, which the model "
        "cannot learn to predict; lower data.validation_split"]


def test_a_diverging_loss_reads_in_four_significant_digits_wherever_it_is_shown():
    from cnncli.train.progress import _logs_text, metric_text
    from cnncli.tune.progress import _value

    assert metric_text(0.123456) == "0.1235" and metric_text(3.2e15) == "3.2e+15" and metric_text(float("nan")) == "nan"
    assert _logs_text({"epoch": 1, "loss": 3.2e15, "accuracy": 0.25}) == "loss 3.2e+15  accuracy 0.2500"
    assert _value(1e21) == "1e+21" and _value(0.5) == "0.5000"


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_train_json_names_its_run_directory_absolute_under_a_relative_output(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    proc = _cnn("train", str(CONFIGS / "shapes_cnn.yaml"), *TINY_SHAPES, "--output", "runs", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = json.loads(proc.stdout)["run_dir"]
    assert Path(run_dir).is_absolute() and Path(run_dir).parent == tmp_path / "runs" / "shapes-cnn"
