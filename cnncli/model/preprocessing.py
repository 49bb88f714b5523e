"""Input scaling that lives inside the model, so exports and predictions see raw pixels.

Every model cnncli builds takes raw pixel values (0..255) and scales them
itself: plain models with `Rescaling(1/255)`, backbones with the scaling their
ImageNet weights were trained with (keras.applications' `preprocess_input`
modes). A SavedModel or .tflite therefore needs no separate preprocessing.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# keras.applications.imagenet_utils modes, per backbone family; "none" means the
# application scales its inputs itself (EfficientNet, ConvNeXt, MobileNetV3).
BACKBONE_MODES = {
    "VGG16": "caffe", "VGG19": "caffe", "ResNet50": "caffe", "ResNet101": "caffe", "ResNet152": "caffe",
    "ResNet50V2": "tf", "ResNet101V2": "tf", "ResNet152V2": "tf", "MobileNet": "tf", "MobileNetV2": "tf",
    "InceptionV3": "tf", "InceptionResNetV2": "tf", "Xception": "tf", "NASNetMobile": "tf", "NASNetLarge": "tf",
    "DenseNet121": "torch", "DenseNet169": "torch", "DenseNet201": "torch",
}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def backbone_mode(name: str) -> str:
    """The ImageNet preprocessing (caffe, tf, torch or none) `name`'s weights were trained with."""
    return BACKBONE_MODES.get(name, "none")


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
