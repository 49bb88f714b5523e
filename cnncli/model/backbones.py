"""Backbones: what a keras.applications model asks of its input and weights, and
models reused from your own earlier runs (`model.backbone.from_run`).

keras.applications checks these things itself, but its messages name Keras's
arguments (`input_shape=(16, 16, 3)`), not the config keys a user edits; here
the same rules are stated up front and reported as ConfigErrors at
`model.input_shape` / `data.image_size` / `model.backbone.weights`.

A `from_run` backbone is the earlier model's own graph, cut after one of its
top-level layers and wrapped as one nested model named `from_run`. It starts at
raw pixels, because every cnncli model scales its own input (a Rescaling layer,
or ImagenetPreprocess in older runs), so the new model adds no scaling in front of it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnncli.config.schema import Config
from cnncli.config.vocabulary import BACKBONES, keras_message
from cnncli.errors import ConfigError, did_you_mean

# keras.applications' own minimum sides (imagenet_utils.obtain_input_shape's `min_size`,
# MobileNetV3's explicit check); tests/test_transfer_build.py checks this table against Keras.
MIN_INPUT_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
DEFAULT_MIN_INPUT_SIZE = 32  # every other application
# Suffixes keras.Model.load_weights understands (saving_api.load_weights); `.h5` is the ImageNet files' format.
WEIGHTS_SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".h5", ".hdf5")
FROM_RUN_NAME = "from_run"  # the nested model's name; phases' prefixes match the layers inside it
_DROPOUTS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "AlphaDropout",
    "GaussianNoise",
)


def min_input_size(application: str) -> int:
    """The smallest input side keras.applications accepts for `application`."""
    return MIN_INPUT_SIZE.get(application, DEFAULT_MIN_INPUT_SIZE)


def input_key(cfg: Config) -> tuple:
    """The key a user edits to change the input: the stated shape, else the data's size."""
    return ("model", "input_shape") if cfg.model.input_shape else ("data", "image_size")


def check_application_input(cfg: Config, application: str, input_shape: Sequence[int]) -> None:
    """Raise a ConfigError if `input_shape` cannot feed the keras.applications model."""
    h, w, c = (int(d) for d in input_shape)
    if c != 3:
        # ImageNet weights and the per-channel means of preprocess_input are RGB.
        key = ("model", "input_shape") if cfg.model.input_shape else ("data", "color_mode")
        fix = "model.input_shape to [height, width, 3]" if cfg.model.input_shape else "data.color_mode: rgb"
        raise cfg.error(
            f"model.backbone {application} takes RGB images (3 channels), but the input is "
            f"{h}×{w}×{c}; set {fix} (grayscale images are then repeated into 3 channels)",
            key,
        )
    low = min_input_size(application)
    if h < low or w < low:
        stated = "model.input_shape" if cfg.model.input_shape else "data.image_size"
        raise cfg.error(
            f"model.backbone {application} needs images of at least {low}×{low} pixels, but the "
            f"input is {h}×{w}; set {stated} to at least [{low}, {low}]",
            input_key(cfg),
        )


def check_weights_file(cfg: Config, path: str) -> None:
    """A ConfigError at model.backbone.weights unless `path` is a file."""
    key = ("model", "backbone", "weights")
    if not Path(path).is_file():
        raise cfg.error(
            f"weights file `{path}` does not exist (looked in {Path(path).resolve().parent}); "
            "give a file written by model.save_weights(), `imagenet`, or null",
            key,
        )
    if not path.endswith(WEIGHTS_SUFFIXES):
        raise cfg.error(
            f"weights file `{path}` has none of the suffixes Keras loads weights from: {', '.join(WEIGHTS_SUFFIXES)}",
            key,
        )


def load_weights_file(cfg: Config, model: Any, path: str) -> None:
    """Load a weights file into a freshly built application, with the error at `weights`."""
    from cnncli.config.vocabulary import keras_message

    try:
        model.load_weights(path)
    except Exception as exc:  # Keras: ValueError for a mismatch, OSError for a damaged file
        hint = " (for a model trained with cnncli use `from_run: RUN_DIR` instead)" if path.endswith(".keras") else ""
        raise cfg.error(
            f"weights file `{path}` does not fit {model.name} as configured "
            f"(include_top, input_shape and extra arguments must match the model that wrote it): "
            f"{keras_message(exc)}{hint}",
            ("model", "backbone", "weights"),
        ) from None


# ---------------------------------------------------------------- from_run


def source_run(cfg: Config) -> tuple[Path, Path]:
    """(run directory, its model.keras) of `model.backbone.from_run`, or a ConfigError saying what is wrong."""
    assert cfg.model.backbone is not None and cfg.model.backbone.from_run is not None  # asked for from_run only
    raw = cfg.model.backbone.from_run
    key = ("model", "backbone", "from_run")
    run_dir = Path(raw).expanduser()
    if not run_dir.is_dir():
        hint = " (it is a file; give the run directory that holds it)" if run_dir.is_file() else ""
        raise cfg.error(
            f"`{raw}` is not a directory{hint}; give a run directory written by cnn train, "
            "such as runs/<name>/<timestamp>",
            key,
        )
    model_file = run_dir / "model.keras"
    if not model_file.is_file():
        status = _run_status(run_dir)
        if status is None:
            why = "it has no run.json either: is it a cnncli run directory?"
        else:
            why = (
                f"run status: {status}; finish it with `cnn train --resume {raw}`"
                if status != "complete"
                else "the run reports complete, so the file was moved or deleted"
            )
        raise cfg.error(f"`{raw}` has no model.keras to take layers from ({why})", key)
    return run_dir, model_file


def _run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status", "unknown")
    except (OSError, ValueError):
        return None


def load_source_model(cfg: Config) -> Any:
    """The earlier run's whole model, in the current dtype policy."""
    from cnncli.errors import RunError
    from cnncli.model.preprocessing import load_model

    _, model_file = source_run(cfg)
    try:
        model = load_model(model_file)
    except RunError as exc:  # a damaged zip, a foreign file
        raise cfg.error(str(exc), ("model", "backbone", "from_run")) from None
    return _in_current_policy(model)


def _in_current_policy(model):
    """A copy of `model` computing in the global dtype policy.

    Layers keep the dtype policy they were saved with, so a source trained in
    mixed_bfloat16 would keep computing in bfloat16 inside a float32 run.
    """
    import keras

    policy = keras.config.dtype_policy().name
    if all(layer.dtype_policy.name == policy for layer in _all_layers(model)):
        return model

    def clone(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def default_cut(model: Any) -> str:
    """The last layer kept by default: the one before the last Dense (the classifier), skipping
    the Dropout in front of it, which would otherwise keep dropping features of a frozen base."""
    names = [layer.name for layer in model.layers]
    kinds = [type(layer).__name__ for layer in model.layers]
    last_dense = max((i for i, k in enumerate(kinds) if k == "Dense"), default=len(kinds) - 1)
    i = last_dense - 1
    while i > 0 and kinds[i] in _DROPOUTS:
        i -= 1
    return names[i]


def source_input_shape(cfg: Config) -> tuple[int, int, int]:
    """The input the earlier model was trained on: the new model takes the same."""
    run_dir, _ = source_run(cfg)
    try:
        shape = json.loads((run_dir / "run.json").read_text()).get("input_shape")
    except (OSError, ValueError):
        shape = None
    if not shape:  # an older or foreign run.json: ask the model itself
        shape = load_source_model(cfg).inputs[0].shape[1:]
    height, width, channels = (int(d) for d in shape)
    return height, width, channels


def build_from_run(cfg: Config, input_shape: Sequence[int]) -> Any:
    """The earlier model's layers up to `layers_until` (default: before its classifier), as one model."""
    import keras

    spec = cfg.model.backbone
    assert spec is not None  # built only for a config with a from_run backbone
    source = load_source_model(cfg)
    expected = tuple(int(d) for d in source.inputs[0].shape[1:])
    if tuple(input_shape) != expected:
        raise cfg.error(
            f"the model of run `{spec.from_run}` takes {_fmt(expected)} images, but the input is "
            f"{_fmt(input_shape)}; remove model.input_shape (the data is then converted) or set it "
            f"to {list(expected)}",
            input_key(cfg),
        )
    names = [layer.name for layer in source.layers if type(layer).__name__ != "InputLayer"]
    cut = spec.layers_until or default_cut(source)
    if cut not in names:
        raise cfg.error(
            f"the model of run `{spec.from_run}` has no top-level layer `{cut}`"
            f"{did_you_mean(cut, names)}; its layers: {', '.join(names)}",
            ("model", "backbone", "layers_until"),
        )
    if cut == names[-1]:
        raise cfg.error(
            f"`{cut}` is that model's output layer; cut earlier so the new head has "
            "features to classify (by default the base ends before the last Dense layer)",
            ("model", "backbone", "layers_until"),
        )
    x = source.get_layer(cut).output
    if spec.pooling is not None:
        if len(x.shape) != 4:
            raise cfg.error(
                f"pooling needs a feature map, but layer `{cut}` outputs {_fmt(x.shape[1:])}; "
                "remove pooling or cut at a convolution or pooling layer",
                ("model", "backbone", "pooling"),
            )
        pool = keras.layers.GlobalAveragePooling2D if spec.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool(name=f"{spec.pooling}_pool")(x)
    return keras.Model(source.inputs, x, name=FROM_RUN_NAME)


def build_backbone(cfg: Config, input_shape: Sequence[int], load_weights: bool = True) -> Any:
    """The base model of `model.backbone`: a keras.applications model, or layers of an earlier run."""
    spec = cfg.model.backbone
    assert spec is not None  # callers build a backbone only when the config has one
    if spec.from_run is not None:
        base = build_from_run(cfg, input_shape)
        base.trainable = spec.trainable
        return base
    assert spec.name is not None  # the schema asks for `name` or `from_run`
    fn = BACKBONES.get(spec.name)
    check_application_input(cfg, fn.__name__, input_shape)
    weights = spec.weights if load_weights else None
    weights_file = weights if weights not in (None, "imagenet") else None
    if weights_file:
        check_weights_file(cfg, weights_file)
    # A weights file is loaded below, not by keras.applications, so that a mismatch is reported at `weights`.
    kwargs: dict[str, Any] = dict(
        include_top=spec.include_top, weights=None if weights_file else weights, input_shape=tuple(input_shape)
    )
    if not spec.include_top:
        kwargs["pooling"] = spec.pooling
    try:
        with _offline_weights_hint(fn.__name__) as hint:
            base = fn(**kwargs, **spec.args)
    except ConfigError:
        raise
    except Exception as exc:  # Keras raises ValueError for shapes, OSError/URL errors for downloads
        if hint.missing:
            raise cfg.error(hint.message(), ("model", "backbone", "weights")) from None
        message = keras_message(exc)
        where = input_key(cfg) if "input_shape" in message else ("model", "backbone")
        raise cfg.error(f"model.backbone {fn.__name__}: {message}", where) from None
    if weights_file:
        load_weights_file(cfg, base, weights_file)
    base.trainable = spec.trainable
    return base


class _WeightsHint:
    def __init__(self, backbone: str):
        self.backbone = backbone
        self.missing: tuple[str, str] | None = None  # (file name, cache dir)
        self.was_corrupt = False  # a file was there but failed Keras's checksum

    def message(self) -> str:
        assert self.missing is not None  # asked only once a missing file was seen
        fname, cache = self.missing
        found = (
            " (a file of that name was there but did not match its published checksum, an incomplete "
            "download?, and Keras removed it)"
            if self.was_corrupt
            else ""
        )
        return (
            f"ImageNet weights for {self.backbone} are not in Keras's cache and cannot be downloaded{found}; "
            f"place `{fname}` in `{cache}` so that {os.path.join(cache, fname)} exists "
            "(Keras's cache is $KERAS_HOME/models, by default ~/.keras/models), "
            "or set `weights: null` or a path to a weights file"
        )


@contextlib.contextmanager
def _offline_weights_hint(backbone: str):
    """Remember which file keras.applications asked for, so an offline failure can name it.

    keras.applications calls keras.src.utils.file_utils.get_file directly and, when the
    download fails, reports only the URL; the cache location is what a user needs.
    """
    from cnncli import compat

    hint = _WeightsHint(backbone)
    file_utils = compat.file_utils()
    if file_utils is None:  # this Keras moved get_file: its own error, without the cache path
        yield hint
        return
    real = file_utils.get_file

    def recording_get_file(fname=None, origin=None, *args, cache_subdir="datasets", cache_dir=None, **kw):
        cache = compat.cache_dir(cache_subdir, cache_dir or compat.keras_home())  # where get_file looks
        hint.missing = (fname or os.path.basename(origin or ""), str(cache))
        hint.was_corrupt = os.path.exists(os.path.join(*reversed(hint.missing)))
        path = real(fname, origin, *args, cache_subdir=cache_subdir, cache_dir=cache_dir, **kw)
        hint.missing = None
        return path

    file_utils.get_file = recording_get_file
    try:
        yield hint
    finally:
        file_utils.get_file = real


def _fmt(shape) -> str:
    return "×".join(str(d) for d in shape)
