"""What `cnn evaluate` on other data, and the commands that write beside a run, must not break.

Other data is scored by class name and its pictures go to RUN/evaluations/<data>/;
a run folder that cannot be written is refused before any work; `--data` and
`--errors` mistakes name the option; `cnn export` keeps an artefact unless
--force; `cnn compare` writes only when asked; `cnn schema --output` makes its folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app, fill_optional_values
from cnncli.insight.evaluation import class_index

runner = CliRunner()

CLASSES = ["x", "o", "square", "triangle", "plus", "line"]
CONFIG = """\
name: six
seed: 3
data:
  dataset: shapes
  validation_split: 0.2
  shapes: {image_size: 16, train_examples: 120, test_examples: 60}
model:
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3, activation: relu}
    - {type: GlobalAveragePooling2D}
    - {type: Dense, units: 6, activation: softmax}
train: {epochs: 1, batch_size: 32}
runtime: {precision: float32}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 6-class shapes run (x, o, square, triangle, plus, line), trained for one epoch."""
    tmp = tmp_path_factory.mktemp("six")
    (tmp / "six.yaml").write_text(CONFIG)
    result = runner.invoke(app, ["train", str(tmp / "six.yaml"), "--output", str(tmp / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def write_folder(root: Path, counts: dict[str, int], names: dict[str, str] | None = None) -> Path:
    """Shapes figures as an image folder root/{train,test}/<class>/, `counts[c]` test images of figure c;
    `names` renames the class folders (figure -> folder name)."""
    from cnncli.config.schema import DataConfig, ShapesSpec
    from cnncli.data import load

    figures = list(counts)
    data = load(DataConfig(dataset="shapes", validation_split=0,
                           shapes=ShapesSpec(image_size=16, classes=figures, train_examples=40,
                                             test_examples=40 * len(figures))), seed=11)
    for split, x, y, wanted in (("train", data.x_train, data.y_train, {f: 4 for f in figures}),
                                ("test", data.x_test, data.y_test, counts)):
        for figure in figures:
            folder = root / split / (names or {}).get(figure, figure)
            folder.mkdir(parents=True)
            picked = np.flatnonzero(y == data.class_names.index(figure))[:wanted[figure]]
            for i in picked:
                Image.fromarray(x[i][..., 0]).save(folder / f"{i:04d}.png")
    return root


def files(folder: Path, skip: str = "") -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (skip and p.relative_to(folder).parts[0] == skip)}


def other(path: Path) -> list[str]:
    return ["--data", "data.dataset=image_folder", "--data", f"data.path={path}"]


# === 1. other data writes beside the run's files ===

def test_other_data_pictures_go_to_their_own_folder_and_the_runs_files_stay(run, tmp_path):
    for split in ("test", "val"):  # the run's own pictures: confusion_matrix[_val].png, errors[_val].png, ...
        own = runner.invoke(app, ["evaluate", str(run), "--split", split, "--errors", "4"])
        assert own.exit_code == 0, own.output
    before = files(run)
    assert {"confusion_matrix.png", "confusion_matrix_val.png", "errors.png", "errors_val.png"} <= set(before)
    folder = write_folder(tmp_path / "photos", {"x": 5, "o": 3})
    written = []
    for split in ("test", "val"):
        result = runner.invoke(app, ["evaluate", str(run), *other(folder), "--split", split, "--errors", "4"])
        assert result.exit_code == 0, result.output
        line = next(s for s in result.stdout.splitlines() if s.startswith("confusion matrix: "))
        written.append(Path(line.removeprefix("confusion matrix: ")))
    assert files(run, skip="evaluations") == before  # not one byte of the run's own files changed, none added
    place = written[0].parent
    assert place.parent == run / "evaluations" and place.name.startswith("image_folder-photos-")
    assert [p.name for p in written] == ["confusion_matrix.png", "confusion_matrix_val.png"]
    assert {p.name for p in place.iterdir()} >= {"confusion_matrix.png", "errors.png", "confusion_matrix_val.png",
                                                 "errors_val.png"}
    again = runner.invoke(app, ["evaluate", str(run), *other(folder), "--errors", "4", "--json"])
    assert Path(json.loads(again.stdout)["errors_png"]).parent == place  # the same data, the same folder


# === 2. classes matched by name ===

def test_a_subset_of_the_classes_in_another_order_is_scored_by_name(run, tmp_path):
    from cnncli.deploy.runs import open_run

    folder = write_folder(tmp_path / "photos", {"x": 5, "o": 3})  # folders sort as o, x: the model's 1, 0
    result = runner.invoke(app, ["evaluate", str(run), *other(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(c["class"], c["support"]) for c in report["per_class"]] == [
        ("x", 5), ("o", 3), ("square", 0), ("triangle", 0), ("plus", 0), ("line", 0)]
    opened = open_run(run)
    data = opened.load_data(cfg=opened.data_config(other(folder)[1::2]))
    assert data.class_names == ["o", "x"]
    probs = np.asarray(opened.load_model().predict(data.x_test.astype(np.float32), verbose=0), np.float64)
    true = np.array([CLASSES.index(data.class_names[k]) for k in data.y_test])
    p_true = np.clip(probs[np.arange(len(true)), true], 1e-7, 1 - 1e-7)
    assert report["loss"] == pytest.approx(float(-np.mean(np.log(p_true))), rel=1e-5)
    assert report["accuracy"] == pytest.approx(float(np.mean(probs.argmax(axis=1) == true)))


def test_classes_the_model_does_not_have_are_refused_by_name(run, tmp_path):
    folder = write_folder(tmp_path / "photos", {"x": 2, "o": 2}, names={"x": "boxes", "o": "circles"})
    before = files(run)
    result = runner.invoke(app, ["evaluate", str(run), *other(folder)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == ("Error: the data's classes `boxes`, `circles` are not classes of this model "
                             "(x, o, square, triangle, plus, line); classes are matched by name, so name them "
                             "as the run does\n")
    assert files(run) == before


def test_classes_named_only_by_number_keep_their_positions():
    assert class_index(["0", "1", "2"], CLASSES, 3).tolist() == [0, 1, 2]  # IDX files, an npz without names
    assert class_index(["o", "x"], ["0", "1", "2"], 2).tolist() == [0, 1]  # a run trained on numbered classes
    assert class_index(["o", "x"], CLASSES, 2).tolist() == [1, 0]
    assert class_index(["x", "o", "square"], CLASSES, 3).tolist() == [0, 1, 2]


# === 3. a run folder that cannot be written ===

def _deny(monkeypatch, folder: Path) -> None:
    """As if `folder` were read-only: the tests run as root, which writes through permission bits."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        not (mode & os.W_OK and str(path).startswith(str(folder))) and real(path, mode, **kw)))


def test_a_read_only_run_is_refused_before_any_work_and_output_writes_elsewhere(run, tmp_path, monkeypatch):
    _deny(monkeypatch, run)
    before = files(run)
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 1
    assert result.stdout == ""  # refused before the report, not after it
    assert result.stderr == (f"Error: cannot write the pictures in `{run}`: `{run}` is not writable (permission "
                             "denied); give --output DIR to write them elsewhere\n")
    elsewhere = runner.invoke(app, ["evaluate", str(run), "--errors", "4", "--output", str(tmp_path / "pictures")])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert f"confusion matrix: {tmp_path / 'pictures' / 'confusion_matrix.png'}" in elsewhere.stdout
    assert {p.name for p in (tmp_path / "pictures").iterdir()} >= {"confusion_matrix.png", "errors.png"}
    assert runner.invoke(app, ["evaluate", str(run), "--json"]).exit_code == 0  # nothing to write: no refusal
    assert files(run) == before


# === 4. --data mistakes name --data ===

@pytest.mark.parametrize("value, message", [
    ("data.path=/nonexistent", "--data `data.path=/nonexistent`: dataset `shapes` takes no path (its images are "
                               "drawn from the seed); to evaluate on files, also give --data "
                               "data.dataset=image_folder (or idx, npz, records)"),
    ("data.image_size=[8,8]", "--data `data.image_size=[8,8]`: images are read at the model's input size, so "
                              "data.image_size changes nothing here"),
    ("model.layers[0].filters=8", "--data `model.layers[0].filters=8`: --data changes the data (data.* keys, or "
                                  "seed); the model is model.keras as trained, so `model.layers[0].filters` "
                                  "would change nothing"),
    ("data[0]=1", "--data data[0]=1: no list item data[0]"),
])
def test_data_mistakes_are_one_line_naming_data(run, value, message):
    result = runner.invoke(app, ["evaluate", str(run), "--data", value])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"


def test_data_without_a_value_is_a_usage_error_with_a_hint(run):  # a malformed command line: exit 2
    result = runner.invoke(app, ["evaluate", str(run), "--data", "/nonexistent"])
    assert result.exit_code == 2
    assert ("Invalid value for '--data': `/nonexistent`: expected KEY.PATH=VALUE, e.g. --data "
            "data.path=/nonexistent") in " ".join(result.stderr.replace("│", " ").split())


def test_shapes_settings_on_a_folder_are_refused(run, tmp_path):
    folder = write_folder(tmp_path / "photos", {"x": 2, "o": 2})
    result = runner.invoke(app, ["evaluate", str(run), *other(folder), "--data", "data.shapes.image_size=32"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: --data `data.shapes.image_size=32`: dataset `image_folder` does not read "
                             "data.shapes\n")


# === 5. --errors with a number that is no count ===

@pytest.mark.parametrize("value", ["-1", "0"])
def test_errors_below_one_names_the_option_and_its_range(value):
    argv = fill_optional_values(["evaluate", "runs/x", "--errors", value])
    assert argv == ["evaluate", "runs/x", "--errors", value]  # the number stays the option's value
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert "No such option" not in result.output
    assert "Invalid value for '--errors'" in result.output
    assert "greater than or equal to 1" in result.output or "x>=1" in result.output  # newer and older Click


# === 6. export keeps an artefact; compare writes when asked ===

def test_export_keeps_an_existing_artefact_unless_forced(run, tmp_path):
    target = tmp_path / "model.keras"
    first = runner.invoke(app, ["export", str(run), "--format", "keras", "--output", str(target)])
    assert first.exit_code == 0, first.output
    kept, record = target.read_bytes(), (tmp_path / "export.json").read_bytes()
    again = runner.invoke(app, ["export", str(run), "--format", "keras", "--output", str(target)])
    assert again.exit_code == 1
    assert again.stderr == f"Error: `{target}` already exists; add --force to replace it, or choose another --output\n"
    assert target.read_bytes() == kept and (tmp_path / "export.json").read_bytes() == record
    forced = runner.invoke(app, ["export", str(run), "--format", "keras", "--output", str(target), "--force"])
    assert forced.exit_code == 0, forced.output
    assert f"wrote {target} (" in forced.stdout


def test_compare_writes_no_png_unless_asked(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare", str(run), str(run)])
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []
    assert "curves: not drawn; add --output compare.png to draw them" in result.stdout
    asked = runner.invoke(app, ["compare", str(run), str(run), "--output", "both.png", "--json"])
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout)["plot"] == str(tmp_path / "both.png") and (tmp_path / "both.png").is_file()


# === 7. schema --output makes its folder ===

def test_schema_output_in_a_new_folder(tmp_path):
    target = tmp_path / "new" / "dir" / "schema.json"
    result = runner.invoke(app, ["schema", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["$schema"].startswith("https://json-schema.org/")
