"""Property tests: whatever YAML or layer dict comes in, the loader and the builder answer with a Config
(or a model) or a CnnError, never another exception.

Hypothesis feeds random text to the YAML reader, random trees to the schema,
and random layer specs (types from the Keras registry, arguments from their
real signatures, values of every kind) to the spec checks and the model
builder. Seeds are derandomized so the default run is repeatable; set
HYPOTHESIS_PROFILE=explore for a longer, random search.
"""

from __future__ import annotations

import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cnncli.config.loading import load_config, validate_data
from cnncli.config.yamlio import parse_yaml
from cnncli.errors import CnnError

settings.register_profile("default-run", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("explore", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default-run")

YAML_ALPHABET = st.sampled_from(list("abkxyz019 -_.:,[]{}#&*!|>'\"%@`?\n\t<=\\/~") + ["<<", "!!", "---", "...",
                                                                                    "&a", "*a", "\x00", "\x85"])
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10) | st.integers() | st.none(), inner, max_size=4),
                     max_leaves=25)
CONFIG_KEYS = {"name": st.text(max_size=8), "seed": scalars, "deterministic": scalars,
               "data": st.fixed_dictionaries({}, optional={
                   "dataset": st.sampled_from(["shapes", "mnist", "npz", "image_folder", "idx", "x"]) | scalars,
                   "validation_split": scalars, "image_size": trees, "color_mode": scalars, "limit": scalars,
                   "augment": trees, "on_corrupt": scalars, "path": scalars, "shapes": trees}),
               "model": trees, "train": st.fixed_dictionaries({}, optional={
                   "epochs": scalars, "batch_size": scalars, "optimizer": trees, "lr_schedule": trees,
                   "loss": scalars, "metrics": trees, "early_stopping": trees, "phases": trees}),
               "runtime": trees}
configs = st.fixed_dictionaries({}, optional=CONFIG_KEYS) | trees


def _answers(call):
    """Run `call`; a CnnError is an answer too. Anything else fails the property."""
    try:
        return call()
    except CnnError as exc:
        assert str(exc).strip(), "an error must say something"
        return exc


@settings.get_profile(PROFILE)
@given(st.lists(YAML_ALPHABET, max_size=60).map("".join))
def test_any_text_parses_or_is_a_config_error(text):
    _answers(lambda: parse_yaml(text, "random.yaml"))


@settings.get_profile(PROFILE)
@given(configs)
def test_any_tree_validates_or_is_a_config_error(data):
    from cnncli.model.raw_checks import raw_spec_problems

    _answers(lambda: validate_data(data, {}, "random.yaml", spec_check=raw_spec_problems))


@settings.get_profile(PROFILE)
@given(configs)
def test_any_yaml_file_loads_or_is_a_config_error(tmp_path_factory, data):
    from cnncli.model.raw_checks import raw_spec_problems

    path = tmp_path_factory.mktemp("cfg") / "random.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as a YAML file
    _answers(lambda: load_config(path, spec_check=raw_spec_problems))


# ---------------------------------------------------------------- layer specs

LAYER_TYPES = ["Conv2D", "conv2d", "MaxPooling2D", "max_pooling2d", "AveragePooling2D", "Dense", "Dropout",
               "BatchNormalization", "Flatten", "GlobalAveragePooling2D", "Activation", "Reshape", "ZeroPadding2D",
               "Cropping2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "UpSampling2D",
               "RandomFlip", "RandomRotation", "Rescaling", "Add", "Concatenate", "LayerNormalization",
               "SpatialDropout2D", "LeakyReLU", "ReLU", "Softmax", "Lambda", "TFSMLayer", "Conv2d", "Dens", ""]
arg_values = (scalars | st.lists(st.integers(min_value=-3, max_value=40), max_size=4)
              | st.sampled_from(["same", "valid", "relu", "softmax", "he_normal", "channels_last", "channels_first",
                                 "bilinear", "nearest", "horizontal", "zeros", "l2"])
              | st.dictionaries(st.sampled_from(["class_name", "config", "module", "registered_name"]),
                                scalars | st.dictionaries(st.text(max_size=6), scalars, max_size=2), max_size=4))


@st.composite
def layer_specs(draw):
    from cnncli.config.vocabulary import LAYERS, accepted_args

    kind = draw(st.sampled_from(LAYER_TYPES))  # mostly real types, so most specs reach the builder
    names = accepted_args(LAYERS.get(kind)) if kind in LAYERS else []
    keys = draw(st.lists(st.sampled_from(names) if names else st.text(max_size=8), max_size=3, unique=True))
    if draw(st.integers(0, 9)) == 0:
        keys.append(draw(st.text(max_size=8)))  # now and then an argument no layer takes
    spec = {"type": kind, **{k: draw(arg_values) for k in keys if k not in ("type", "inputs")}}
    if "name" in spec and not isinstance(spec["name"], str):
        spec["name"] = str(spec["name"])
    return spec


def _config(specs: list[dict]) -> dict:
    return {"model": {"input_shape": [8, 8, 1], "layers": [*specs, {"type": "Flatten"},
                                                            {"type": "Dense", "units": 2}]}}


@settings.get_profile(PROFILE)
@given(st.lists(layer_specs(), min_size=1, max_size=2))
def test_any_layer_spec_builds_or_is_a_config_error(specs):
    """What `cnn validate`, `cnn summary` and `cnn train` do with a config's layers: schema, spec checks,
    the model, its geometry."""
    from cnncli.model.builder import build_model, check_model_specs
    from cnncli.model.raw_checks import raw_spec_problems

    cfg = _answers(lambda: validate_data(_config(specs), {}, "random.yaml", spec_check=raw_spec_problems))
    if isinstance(cfg, CnnError):
        event("refused by the schema")
        return
    if isinstance(_answers(lambda: check_model_specs(cfg)), CnnError):
        event("refused by the spec checks")
        return
    model = _answers(lambda: build_model(cfg, (8, 8, 1)))
    if isinstance(model, CnnError):
        event("refused while building")
    else:
        event("built")
        assert model.outputs[0].shape[-1] == 2
        from cnncli.model.geometry import summarize

        _answers(lambda: summarize(model).as_json())  # `cnn summary`: shapes, receptive fields, parameter counts


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e308, -1, 0, 2**63])
def test_special_numbers_in_the_schema_are_config_errors(value):
    """NaN sneaks past `ge=`/`lt=` bounds in some validators: every numeric field must refuse it cleanly."""
    for key, section in (("validation_split", "data"), ("epochs", "train"), ("batch_size", "train"),
                         ("limit", "data")):
        data = {"model": {"input_shape": [8, 8, 1], "layers": [{"type": "Dense", "units": 2}]},
                section: {key: value}}
        result = _answers(lambda data=data: validate_data(data, {}, "x.yaml"))
        if isinstance(value, float) and not math.isfinite(value):
            assert isinstance(result, CnnError), (key, value)
