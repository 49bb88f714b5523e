"""Backbones without training: preprocessing and input rules checked against Keras for every
keras.applications model, the backbone schema, weights files, the offline ImageNet error, and
`cnn summary`'s per-phase parameter counts.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import config_from_dict
from cnncli.config.vocabulary import BACKBONES, list_backbones
from cnncli.errors import ConfigError

runner = CliRunner()
VGG16_BLOCK5 = 7_079_424  # 3 × (3·3·512·512 + 512)
VGG16_BASE = 14_714_688

HEAD = [{"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 2, "activation": "softmax"}]


def vgg_config(**backbone) -> dict:
    return {"name": "vgg", "model": {"input_shape": [32, 32, 3],
                                     "backbone": {"name": "VGG16", "weights": None, **backbone}, "layers": HEAD}}


def write(tmp_path: Path, doc: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------- the tables, against Keras's own code

@pytest.mark.parametrize("name", list_backbones())
def test_preprocess_layer_matches_keras_preprocess_input(name):
    """ImagenetPreprocess(mode) computes what the family's own preprocess_input computes."""
    from cnncli.model.preprocessing import ImagenetPreprocess, backbone_mode

    family = importlib.import_module(BACKBONES.get(name).__module__)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = np.asarray(family.preprocess_input(x.copy()))
    ours = np.asarray(ImagenetPreprocess(backbone_mode(name))(x))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", list_backbones())
def test_min_input_size_table_matches_keras(name):
    """Keras refuses one pixel less than our table's minimum, naming that minimum."""
    from cnncli.model.backbones import min_input_size

    low = min_input_size(name)
    with pytest.raises(ValueError, match=f"at least {low}x{low}"):
        BACKBONES.get(name)(include_top=False, weights=None, input_shape=(low - 1, low - 1, 3))


# ---------------------------------------------------------------- input checks (ConfigError, not Keras's message)

def test_too_small_input_names_input_shape_and_minimum(tmp_path):
    doc = vgg_config()
    doc["model"]["input_shape"] = [16, 16, 3]
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "model.input_shape: model.backbone VGG16 needs images of at least 32×32 pixels, but the input is " \
           "16×16; set model.input_shape to at least [32, 32]" in result.stderr
    assert "Traceback" not in result.stderr and "Received" not in result.stderr


def test_too_small_images_point_at_data_image_size(tmp_path):
    doc = {"data": {"dataset": "shapes", "image_size": [24, 24], "shapes": {"train_examples": 10}},
           "model": {"backbone": {"name": "Xception", "weights": None}, "layers": HEAD}}
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "data.image_size: model.backbone Xception needs images of at least 71×71 pixels, but the input is " \
           "24×24" in result.stderr


def test_one_channel_input_is_refused_with_the_fix(tmp_path):
    doc = vgg_config()
    doc["model"]["input_shape"] = [32, 32, 1]
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "model.input_shape: model.backbone VGG16 takes RGB images (3 channels), but the input is 32×32×1" \
           in result.stderr


def test_pinned_grayscale_is_refused_at_color_mode(tmp_path):
    doc = {"data": {"dataset": "shapes", "color_mode": "grayscale", "shapes": {"train_examples": 10}},
           "model": {"backbone": {"name": "VGG16", "weights": None}, "layers": HEAD}}
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "data.color_mode: model.backbone VGG16 takes RGB images (3 channels)" in result.stderr


def test_grayscale_dataset_is_converted_with_a_notice(tmp_path):
    doc = {"data": {"dataset": "shapes", "shapes": {"train_examples": 10}},  # 32×32 grayscale figures
           "model": {"backbone": {"name": "VGG16", "weights": None}, "layers": HEAD}}
    result = runner.invoke(app, ["summary", "--json", str(write(tmp_path, doc))])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["input_shape"] == [None, 32, 32, 3]
    assert any("VGG16 expects 3 colour channels; the grayscale images are converted to RGB" in w
               for w in out["warnings"])


def test_include_top_with_imagenet_at_wrong_size_is_a_config_error(tmp_path):
    doc = vgg_config(include_top=True, weights="imagenet")
    doc["model"]["layers"] = []
    path = write(tmp_path, doc)
    from cnncli.config.loading import load_config
    from cnncli.model.builder import build_model

    with pytest.raises(ConfigError, match=r"model\.input_shape: model\.backbone VGG16: When setting "
                                          r"`include_top=True` and loading `imagenet` weights"):
        build_model(load_config(path), (32, 32, 3))


# ---------------------------------------------------------------- the schema

@pytest.mark.parametrize("backbone, message", [
    ({"weights": None}, "give exactly one of `name`"),
    ({"name": "VGG16", "from_run": "runs/x"}, "give exactly one of `name`"),
    ({"name": "VGG16", "layers_until": "block3_pool"}, "`layers_until` goes with `from_run`"),
    ({"from_run": "runs/x", "weights": None}, "remove `weights`"),
    ({"from_run": "runs/x", "alpha": 1.0}, "remove `alpha`"),
])
def test_backbone_schema(backbone, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"backbone": backbone, "layers": HEAD}})
    assert str(info.value).startswith("model.backbone: ") and message in str(info.value)


def test_phase_checks_in_the_schema():
    doc = vgg_config()
    doc["train"] = {"phases": [{"epochs": 1, "trainable": "head", "layer_lr_decay": 0.3},
                               {"epochs": 1, "trainable": []}]}
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc)
    text = str(info.value)
    assert "train.phases[0].layer_lr_decay: layer_lr_decay scales the rates of backbone blocks" in text
    assert "train.phases[1].trainable: an empty list trains nothing but the head" in text


def test_unknown_block_prefix_lists_the_blocks(tmp_path):
    doc = vgg_config()
    doc["train"] = {"phases": [{"epochs": 1}, {"epochs": 1, "trainable": ["blok5"]}]}
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert ("train.phases[1].trainable[0]: no layer of vgg16 starts with `blok5` (did you mean `block5`?); "
            "its blocks: block1, block2, block3, block4, block5") in result.stderr


def test_a_phase_that_trains_nothing_is_refused(tmp_path):
    doc = vgg_config(include_top=True, classes=3)
    doc["model"]["layers"] = []
    doc["train"] = {"phases": [{"epochs": 1, "trainable": "head"}, {"epochs": 1, "trainable": "all"}]}
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "train.phases[0].trainable: this phase trains no weights" in result.stderr
    assert "phases[1]" not in result.stderr


def test_layer_lr_decay_refuses_an_optimizer_without_proportional_steps(tmp_path):
    doc = vgg_config()
    doc["train"] = {"phases": [{"epochs": 1, "trainable": ["block5"], "layer_lr_decay": 0.3,
                                "optimizer": {"type": "Ftrl"}}]}
    result = runner.invoke(app, ["validate", str(write(tmp_path, doc))])
    assert result.exit_code == 1
    assert "train.phases[0].layer_lr_decay: layer_lr_decay scales learning rates, but Ftrl's step is not " \
           "proportional to its rate" in result.stderr


# ---------------------------------------------------------------- cnn summary per phase

def test_summary_counts_trainable_and_frozen_parameters_per_phase(tmp_path):
    doc = vgg_config()
    doc["train"] = {"phases": [{"epochs": 2, "trainable": "head"},
                               {"epochs": 1, "trainable": ["block5"], "learning_rate": 1e-4},
                               {"epochs": 1, "trainable": "all", "learning_rate": 1e-5}]}
    path = write(tmp_path, doc)
    result = runner.invoke(app, ["summary", "--json", str(path)])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    head = 512 * 2 + 2
    total = VGG16_BASE + head
    assert [(p["index"], p["trainable"], p["trainable_params"], p["non_trainable_params"]) for p in out["phases"]] == [
        (0, "head", head, VGG16_BASE),
        (1, ["block5"], head + VGG16_BLOCK5, VGG16_BASE - VGG16_BLOCK5),
        (2, "all", total, 0)]
    assert out["trainable_params"] == head  # the layer table shows the first phase

    table = runner.invoke(app, ["summary", str(path)])
    assert table.exit_code == 0
    assert "Training phases" in table.stdout
    assert f"{head + VGG16_BLOCK5:,}" in table.stdout and "head + block5" in table.stdout


# ---------------------------------------------------------------- weights: PATH

def _build(doc: dict, tmp_path: Path, name: str):
    from cnncli.config.loading import load_config
    from cnncli.model.builder import build_model

    return build_model(load_config(write(tmp_path, doc, name)), (32, 32, 3))


def test_weights_file_is_loaded_into_the_backbone(tmp_path):
    import keras

    donor = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(1)
    donor.set_weights([rng.normal(size=w.shape).astype("float32") for w in donor.get_weights()])
    path = tmp_path / "vgg16_custom.weights.h5"
    donor.save_weights(path)

    model = _build(vgg_config(weights=str(path)), tmp_path, "with_file.yaml")
    loaded = model.get_layer("vgg16").get_weights()
    wanted = donor.get_weights()
    assert len(loaded) == len(wanted)
    # VGG16 takes caffe's BGR input: the swap from RGB is folded into the first convolution's kernel,
    # whose input channels come reversed (cnncli.model.preprocessing.input_scaling).
    wanted[0] = wanted[0][:, :, ::-1, :]
    for got, want in zip(loaded, wanted, strict=True):
        np.testing.assert_array_equal(got, want)
    fresh = _build(vgg_config(), tmp_path, "without_file.yaml").get_layer("vgg16").get_weights()
    assert not np.array_equal(fresh[0], loaded[0])  # weights: null would not have given these


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the mismatched file
def test_weights_file_errors(tmp_path):
    import keras

    with pytest.raises(ConfigError,
                       match=r"model\.backbone\.weights: weights file `.*nope\.weights\.h5` does not exist"):
        _build(vgg_config(weights=str(tmp_path / "nope.weights.h5")), tmp_path, "a.yaml")
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"has none of the suffixes Keras loads weights from: \.weights\.h5"):
        _build(vgg_config(weights=str(odd)), tmp_path, "b.yaml")
    other = tmp_path / "vgg19.weights.h5"
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    with pytest.raises(ConfigError, match=r"model\.backbone\.weights: weights file `.*vgg19\.weights\.h5` does not "
                                          r"fit vgg16 as configured"):
        _build(vgg_config(weights=str(other)), tmp_path, "c.yaml")


# ---------------------------------------------------------------- weights: imagenet, offline

@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_imagenet_weights_offline_name_the_file_and_the_cache(tmp_path):
    """A real `cnn train` process with an empty KERAS_HOME and no network: exit 1, one readable line."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "photos" / cls / f"{i}.png")
    doc = vgg_config(weights="imagenet")
    doc["data"] = {"dataset": "image_folder", "path": str(tmp_path / "photos"), "validation_split": 0}
    config = write(tmp_path, doc)
    home = tmp_path / "keras_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    dead = "http://127.0.0.1:9"  # the discard port: refused at once, so "no network" does not depend on the host
    env.update(KERAS_HOME=str(home), HTTPS_PROXY=dead, HTTP_PROXY=dead, https_proxy=dead, http_proxy=dead,
               TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", "cnncli", "train", str(config), "--output", str(tmp_path / "runs"),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    fname = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cache = home / "models"
    assert f"place `{fname}` in `{cache}` so that {cache / fname} exists" in done.stderr
    assert "model.backbone.weights: ImageNet weights for VGG16 are not in Keras's cache" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # --quiet: not even Keras's "Downloading data from …"
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1


# ---------------------------------------------------------------- pooling, dtype of a reused model, every application

def test_application_pooling_ends_the_backbone_in_a_vector(tmp_path):
    doc = vgg_config(pooling="max")
    doc["model"]["layers"] = [{"type": "Dense", "units": 2, "activation": "softmax"}]
    model = _build(doc, tmp_path, "pooled.yaml")
    assert model.get_layer("vgg16").output.shape == (None, 512)


def test_a_reused_model_computes_in_the_current_dtype_policy(tmp_path):
    """A source saved under mixed_bfloat16 is rebuilt in float32 for a float32 run, with the same weights."""
    import keras

    from cnncli.model.backbones import load_source_model

    before = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_bfloat16")
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(2, 3, name="block1_conv")(inputs)
        outputs = keras.layers.Dense(3, name="classifier")(keras.layers.Flatten(name="fc_flatten")(x))
        source = keras.Model(inputs, outputs)
        (tmp_path / "run").mkdir()
        source.save(tmp_path / "run" / "model.keras")
        keras.config.set_dtype_policy("float32")
        cfg = config_from_dict({"model": {"backbone": {"from_run": str(tmp_path / "run")},
                                          "layers": [{"type": "Dense", "units": 2}]}})
        reused = load_source_model(cfg)
    finally:
        keras.config.set_dtype_policy(before)
    assert {layer.dtype_policy.name for layer in reused.layers} == {"float32"}
    for a, b in zip(reused.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_backbones())
def test_every_application_builds_at_its_minimum_size_with_phases(name, tmp_path):
    """Each keras.applications model, untrained, at its smallest input, under a head, with per-phase counts."""
    from cnncli.model.backbones import min_input_size
    from cnncli.train.layer_rates import block_name

    low = min_input_size(name)
    base = BACKBONES.get(name)(include_top=False, weights=None, input_shape=(low, low, 3))
    last_block = next(block_name(layer.name) for layer in reversed(base.layers)
                      if layer.trainable_weights and type(layer).__name__ != "BatchNormalization")
    doc = {"name": "every", "model": {"input_shape": [low, low, 3],
                                      "backbone": {"name": name, "weights": None, "pooling": "avg"},
                                      "layers": [{"type": "Dense", "units": 2, "activation": "softmax"}]},
           "train": {"phases": [{"epochs": 1}, {"epochs": 1, "trainable": [last_block]},
                                {"epochs": 1, "trainable": "all"}]}}
    result = runner.invoke(app, ["summary", "--json", str(write(tmp_path, doc))])
    assert result.exit_code == 0, result.output
    phases = json.loads(result.stdout)["phases"]
    head, partial, everything = (p["trainable_params"] for p in phases)
    assert head < partial <= everything
    assert phases[2]["non_trainable_params"] == json.loads(result.stdout)["total_params"] - everything
