"""Input scaling that lives inside the model, so exports and predictions see raw pixels.

Every model cnncli builds takes raw pixel values (0..255) and scales them
itself: plain models with `Rescaling(1/255)`, backbones with the scaling their
ImageNet weights were trained with (keras.applications' `preprocess_input`
modes). A SavedModel or .tflite therefore needs no separate preprocessing.

The scaling is made of Keras's own layers, so that model.keras loads in plain
Keras with nothing of cnncli imported. `ImagenetPreprocess`, the layer models
saved before that used, stays registered so that their runs still load here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import keras
from keras import ops

from cnncli.errors import RunError
from cnncli.fileio import looks_like

# keras.applications.imagenet_utils modes, per backbone family; "none" means the
# application scales its inputs itself (EfficientNet, ConvNeXt, MobileNetV3).
BACKBONE_MODES = {
    "VGG16": "caffe",
    "VGG19": "caffe",
    "ResNet50": "caffe",
    "ResNet101": "caffe",
    "ResNet152": "caffe",
    "ResNet50V2": "tf",
    "ResNet101V2": "tf",
    "ResNet152V2": "tf",
    "MobileNet": "tf",
    "MobileNetV2": "tf",
    "InceptionV3": "tf",
    "InceptionResNetV2": "tf",
    "Xception": "tf",
    "NASNetMobile": "tf",
    "NASNetLarge": "tf",
    "DenseNet121": "torch",
    "DenseNet169": "torch",
    "DenseNet201": "torch",
}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def backbone_mode(name: str) -> str:
    """The ImageNet preprocessing (caffe, tf, torch or none) `name`'s weights were trained with."""
    return BACKBONE_MODES.get(name, "none")


def input_scaling(mode: str, backbone: Any, name: str = "preprocess") -> keras.layers.Layer:
    """The `preprocess_input` arithmetic of `mode` as one of Keras's own layers, in front of `backbone`.

    caffe's RGB -> BGR swap is no per-channel scale, so it moves into the backbone instead:
    the input channels of its first convolution are reversed (conv(flip(x) - mean_bgr, K) equals
    conv(x - mean_rgb, flip(K))), and the layer subtracts the mean in RGB order.
    """
    if mode == "caffe":
        first = next(layer for layer in _layers(backbone) if isinstance(layer, keras.layers.Conv2D))
        first.kernel.assign(ops.flip(first.kernel, axis=2))
        return keras.layers.Rescaling(1.0, offset=[-m for m in reversed(_CAFFE_MEAN_BGR)], name=name)
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    if mode == "torch":
        return keras.layers.Rescaling(
            [1.0 / (255.0 * s) for s in _TORCH_STD],
            offset=[-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)],
            name=name,
        )
    return keras.layers.Identity(name=name)


def _layers(model):
    for layer in model.layers:
        yield from _layers(layer) if isinstance(layer, keras.Model) else (layer,)


@keras.saving.register_keras_serializable(package="cnncli")
class ImagenetPreprocess(keras.layers.Layer):
    """The arithmetic of `keras.applications.*.preprocess_input`, as a saveable layer.

    preprocess_input is a plain function; wrapping it in a Lambda layer would make
    model.keras unloadable in safe mode, so the three modes are restated here.
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ValueError(f"mode must be caffe, tf, torch or none, got {mode!r}")
        self.mode = mode

    def call(self, x: Any) -> Any:
        """Raw 0..255 pixels to what the backbone's weights expect."""
        if self.mode == "caffe":  # RGB -> BGR, then subtract the ImageNet mean
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "tf":  # scale to [-1, 1]
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        """The input's shape: preprocessing keeps it."""
        return input_shape

    def get_config(self) -> dict:
        """The layer's config, with its mode, for saving."""
        return {**super().get_config(), "mode": self.mode}


def load_model(path: str | Path) -> Any:
    """A .keras file as a keras.Model (not compiled), with this module's layer registered.

    A RunError says why not: Keras calls a file that is not a zip archive "not found", even when it is
    there, so such a file is described by what it looks like instead.
    """
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise RunError(
            f"`{path}` is not a Keras model file: a .keras model is a zip archive, and this is {looks_like(Path(path))}"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # a damaged zip, a zip of something else
        from cnncli.config.vocabulary import keras_message

        raise RunError(f"`{path}` cannot be loaded: {keras_message(exc)}") from None
