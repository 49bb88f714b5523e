"""cnn predict: image files of every common kind, read and converted as in training; any model kind.

Reading and top-k are checked on small synthetic files; the end-to-end cases
use the Fashion-MNIST LeNet run and its exports from tests/trained_runs.py.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import trained_runs as tr
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.deploy.predict import read_image, top_k
from cnncli.errors import DataError

runner = CliRunner()


# ---------------------------------------------------------------- reading files

@pytest.mark.parametrize("suffix", ["png", "jpg", "bmp", "gif"])
def test_reads_every_listed_format_as_rgb(tmp_path, suffix):
    rgb = np.zeros((6, 9, 3), np.uint8)
    rgb[:, :, 0] = 200  # red: survives jpg and the gif palette
    path = tmp_path / f"red.{suffix}"
    Image.fromarray(rgb).save(path)
    image = read_image(path)
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8
    assert abs(int(image[..., 0].mean()) - 200) <= 3 and image[..., 1:].max() <= 3


def test_grey_png_stays_one_channel_and_alpha_goes(tmp_path):
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").shape == (4, 5, 1)
    Image.fromarray(np.full((4, 5, 4), 90, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (4, 5, 3)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.max() == 255


@pytest.mark.parametrize("content, reason", [
    (b"not an image", "cannot identify image file: not a format Pillow reads (png, jpg, bmp, gif, tiff, webp, ...)"),
    (None, "no such file"),
])
def test_unreadable_image_names_the_path(tmp_path, content, reason):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: cannot read image ({reason})"


def test_truncated_png_is_a_clean_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"^{path}: cannot read image \("):
        read_image(path)


def test_top_k_orders_and_caps():
    probs = np.array([0.1, 0.5, 0.1, 0.3])
    assert top_k(probs, list("abcd"), 3) == [{"class": "b", "probability": 0.5},
                                              {"class": "d", "probability": 0.3},
                                              {"class": "a", "probability": 0.1}]  # tie: the lower index first


# ---------------------------------------------------------------- end to end

def _png(tmp_path, array, name="item.png"):
    path = tmp_path / name
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
    return path


def test_predict_png_gives_the_models_top_class_on_the_array(tmp_path):
    x, _ = tr.fashion_test_images()
    probs = tr.fashion_keras_probabilities()
    names = json.loads((tr.fashion_run() / "run.json").read_text())["class_names"]
    paths = [_png(tmp_path, x[i], f"test{i}.png") for i in range(5)]
    result = runner.invoke(app, ["predict", str(tr.fashion_run()), *map(str, paths), "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["image"] for row in rows] == [str(p) for p in paths]
    for i, row in enumerate(rows):
        assert len(row["predictions"]) == 3
        assert set(row["predictions"][0]) == {"class", "probability"}
        assert row["predictions"][0]["class"] == names[int(probs[i].argmax())]
        assert row["predictions"][0]["probability"] == pytest.approx(probs[i].max(), abs=1e-5)
        shown = [p["probability"] for p in row["predictions"]]
        assert shown == sorted(shown, reverse=True)


def test_predict_table(tmp_path):
    x, _ = tr.fashion_test_images()
    path = _png(tmp_path, x[0])
    result = runner.invoke(app, ["predict", str(tr.fashion_run()), str(path), "-k", "2"])
    assert result.exit_code == 0, result.stderr
    names = json.loads((tr.fashion_run() / "run.json").read_text())["class_names"]
    top = names[int(tr.fashion_keras_probabilities()[0].argmax())]
    lines = result.stdout.splitlines()
    assert lines[0] == f"{tr.fashion_run()} (run)"
    assert "probability" in lines[2] and "item.png" in result.stdout  # long paths fold inside their column
    assert f"│ 1 │ {top} " in result.stdout
    assert sum("│ 2 │ " in line for line in lines) == 1


def test_colour_image_is_converted_for_a_grayscale_model(tmp_path):
    x, _ = tr.fashion_test_images()
    path = _png(tmp_path, np.repeat(x[0], 3, axis=-1), "colour.png")  # grey as RGB: luminance gives it back
    result = runner.invoke(app, ["predict", str(tr.fashion_run()), str(path), "--json"])
    names = json.loads((tr.fashion_run() / "run.json").read_text())["class_names"]
    assert json.loads(result.stdout)[0]["predictions"][0]["class"] == \
        names[int(tr.fashion_keras_probabilities()[0].argmax())]


@pytest.mark.parametrize("fmt", ["saved_model", "tflite", "onnx", "keras"])
def test_predict_with_exported_models_uses_export_json_class_names(tmp_path, fmt):
    if fmt == "onnx" and (importlib.util.find_spec("onnxruntime") is None
                          or importlib.util.find_spec("tf2onnx") is None):
        pytest.skip("onnxruntime / tf2onnx not installed (pip install 'cnncli[export]')")
    artefact = tr.fashion_export(fmt).path
    x, _ = tr.fashion_test_images()
    paths = [_png(tmp_path, x[i], f"t{i}.png") for i in range(3)]
    result = runner.invoke(app, ["predict", str(artefact), *map(str, paths), "--json"])
    assert result.exit_code == 0, result.stderr
    names = json.loads((tr.fashion_run() / "run.json").read_text())["class_names"]
    probs = tr.fashion_keras_probabilities()
    for i, row in enumerate(json.loads(result.stdout)):
        assert len(row["predictions"]) == 5
        assert row["predictions"][0]["class"] == names[int(probs[i].argmax())]
        assert row["predictions"][0]["probability"] == pytest.approx(probs[i].max(), abs=1e-4)


def test_unreadable_image_exits_1_before_loading_the_model(tmp_path):
    bad = tmp_path / "bad.gif"
    bad.write_text("GIF? no")
    result = runner.invoke(app, ["predict", str(tr.fashion_run()), str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {bad}: cannot read image (")
    assert "Traceback" not in result.stderr


def test_predict_on_something_that_is_not_a_model(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {tmp_path / 'x.png'}: cannot read image (no such file)")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path / "x.png")])
    assert result.stderr == (f"Error: `{tmp_path}` is neither a run directory (no config.yaml) nor a SavedModel "
                             "(no saved_model.pb)\n")


def test_exported_model_without_export_json_shows_class_indices(tmp_path):
    import shutil

    lone = tmp_path / "lone.keras"
    shutil.copy(tr.fashion_export("keras").path, lone)
    x, _ = tr.fashion_test_images()
    image = _png(tmp_path, x[0])
    result = runner.invoke(app, ["predict", str(lone), str(image), "--json", "-k", "1"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"warning: no entry for `lone.keras` in {tmp_path / 'export.json'}: "
                             "classes are shown as indices\n")
    top = json.loads(result.stdout)[0]["predictions"][0]["class"]
    assert top == str(int(tr.fashion_keras_probabilities()[0].argmax()))


def test_a_folder_stands_for_its_pictures_below_it_in_name_order(tmp_path):
    x, _ = tr.fashion_test_images()
    probs = tr.fashion_keras_probabilities()
    folder = tmp_path / "batch"
    (folder / "inner").mkdir(parents=True)
    for image, where, name in ((x[0], folder, "b.png"), (x[1], folder / "inner", "a.png"), (x[2], folder, "a.png")):
        _png(where, image, name)
    (folder / "notes.txt").write_text("not a picture")
    single = _png(tmp_path, x[3], "single.png")
    result = runner.invoke(app, ["predict", str(tr.fashion_run()), str(single), str(folder), "-k", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    expected = [single, folder / "a.png", folder / "b.png", folder / "inner" / "a.png"]
    assert [row["image"] for row in rows] == [str(p) for p in expected]
    names = json.loads((tr.fashion_run() / "run.json").read_text())["class_names"]
    assert [row["predictions"][0]["class"] for row in rows] == [names[int(probs[i].argmax())] for i in (3, 2, 0, 1)]
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["predict", str(tr.fashion_run()), str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {tmp_path / 'empty'}: a folder with no pictures in it "
                             "(.jpg, .jpeg, .png, .bmp, .gif)\n")
