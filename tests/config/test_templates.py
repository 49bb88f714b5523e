"""`cnn init` and its templates: each one validates, one trains, and the built wheel carries them all."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import load_config
from cnncli.templates import list_templates

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ("softmax", "mlp", "lenet", "resnet20", "vgg16-transfer", "from-run")
runner = CliRunner()


def image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 8, size=(12, 10)) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size, dtype=np.uint8) + label * 80
            Image.fromarray(pixels, "L").save(root / name / f"{i}.png")
    return root


def test_list_templates():
    assert set(TEMPLATES) <= set(list_templates())
    result = runner.invoke(app, ["list", "templates"])
    assert result.exit_code == 0 and set(result.stdout.split()) == set(list_templates())


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t != "from-run"])
def test_template_validates(tmp_path, template):
    path = tmp_path / f"{template}.yaml"
    result = runner.invoke(app, ["init", str(path), "--template", template])
    assert result.exit_code == 0, result.stderr
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=") and "\n# " in text  # commented
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.stderr


def test_from_run_template_asks_for_the_run(tmp_path):
    path = tmp_path / "reuse.yaml"
    assert runner.invoke(app, ["init", str(path), "--template", "from-run"]).exit_code == 0
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "model.backbone" in result.stderr and "RUN_NAME" in result.stderr


def test_init_from_an_image_folder_then_train_smoke(tmp_path):
    data = image_folder(tmp_path / "photos")
    path = tmp_path / "configs" / "pets.yaml"
    result = runner.invoke(app, ["init", str(path), "--template", "lenet", "--data", f"image_folder:{data}"])
    assert result.exit_code == 0, result.stderr
    cfg = load_config(path)
    assert cfg.name == "pets" and cfg.data.dataset == "image_folder"
    assert cfg.data.path == str(data)  # written relative to the config, read back from there
    assert "path: ../photos" in path.read_text() and "3 classes: cat, dog, owl" in path.read_text()
    assert tuple(cfg.data.image_size) == (12, 10) and cfg.data.color_mode == "grayscale"
    assert cfg.model.layers[-1].args["units"] == 3
    result = runner.invoke(app, ["train", str(path), "--smoke", "--quiet", "--output", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stderr


def test_init_refuses_to_overwrite_and_bad_arguments(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("seed: 1\n")
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == 1 and "already exists" in result.stderr and path.read_text() == "seed: 1\n"
    result = runner.invoke(app, ["init", str(tmp_path / "b.yaml"), "--template", "lenett"])
    flat = " ".join(result.stderr.replace("│", " ").split())
    assert result.exit_code == 2 and "unknown template `lenett` (did you mean `lenet`?)" in flat
    result = runner.invoke(app, ["init", str(tmp_path / "c.yaml"), "--data", "folder:x"])
    assert result.exit_code == 2 and "Invalid value for '--data': takes KIND:DIR" in result.stderr


def test_built_wheel_contains_every_template_and_the_schema(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing behind in the checkout
    shutil.copytree(ROOT / "cnncli", source / "cnncli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("cnncli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"cnncli/templates/{t}.yaml" for t in TEMPLATES} <= set(names)
    assert "cnncli/schema/cnncli.schema.json" in names
