"""What a trained model looks at: gradient saliency maps and pictures of learned filters.

Saliency is the gradient of one class's score with respect to the input
pixels (Simonyan et al. 2013), reduced over colour channels by max |grad|.
The score is the pre-softmax logit, not the probability: a softmax output
saturates near 1 and its gradient then says more about the other classes
than about this one. `smoothgrad` (Smilkov et al. 2017) averages the map over
noisy copies of the image, which removes most of the speckle of a single
gradient. Models compute in float32 here (`artifacts.float32_model`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli.errors import CnnError, UsageError, did_you_mean
from cnncli.model.geometry import all_layers
from cnncli.registry import Registry

if TYPE_CHECKING:
    from cnncli.insight.maps import GradCam

SMOOTHGRAD_SAMPLES = 25  # Smilkov et al. find the map stops improving beyond ~50; 25 is most of the gain
SMOOTHGRAD_SIGMA = 0.15  # noise std as a share of the pixel range; the paper's 10-20% sweet spot
PIXEL_RANGE = 255.0  # models take raw 0..255 pixels (cnncli.model.preprocessing)
MAX_FILTERS = 64  # tiles of a 1- or 3-channel filter picture (8×8 grid)
MAX_FILTERS_MULTI = 16  # rows of a multi-channel filter picture (one row per filter)
MAX_CHANNELS = 16  # columns of a multi-channel filter picture (one per input channel)

METHODS: Registry[str] = Registry(
    "saliency method",
    {
        "gradient": "one gradient of the class logit",
        "smoothgrad": f"mean of {SMOOTHGRAD_SAMPLES} gradients of noisy copies (σ = {SMOOTHGRAD_SIGMA:.0%} of 0..255)",
        "gradcam": "Grad-CAM of a convolution layer (cnncli.insight.maps), beside the gradient map",
    },
)


def list_methods() -> list[str]:
    """Saliency methods `cnn explain --method` takes."""
    return METHODS.names()


# ---------------------------------------------------------------- logits


def logits_model(model: Any) -> Any:
    """(model returning pre-activation scores, "logit") — or (model, "output") when there is nothing to strip.

    Handles a last layer with its own activation (Dense(..., activation="softmax"))
    by a linear copy with the same weights, and a trailing Activation or Softmax
    layer by taking its input.
    """
    import keras

    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a list would warn on every call
    last = model.layers[-1]
    if isinstance(last, (keras.layers.Activation, keras.layers.Softmax)):
        return keras.Model(inputs, last.input, name=f"{model.name}_logits"), "logit"
    activation = getattr(last, "activation", None)
    if activation is None or getattr(activation, "__name__", "") == "linear":
        return model, "output"
    config = {**last.get_config(), "activation": "linear", "name": f"{last.name}_logits"}
    linear = last.__class__.from_config(config)
    outputs = linear(last.input)
    linear.set_weights(last.get_weights())
    return keras.Model(inputs, outputs, name=f"{model.name}_logits"), "logit"


# ---------------------------------------------------------------- saliency


@dataclass
class Saliency:
    image: np.ndarray  # uint8 (H, W, C), the image as the model sees it
    saliency: np.ndarray  # float32 (H, W), max |d score / d pixel| over channels, >= 0
    class_index: int
    class_name: str
    probability: float  # the model's probability for that class
    predicted: str  # the model's top class
    method: str
    score: str  # "logit" or "output"
    gradcam: GradCam | None = None  # when method is gradcam

    def mass_inside(self, box: tuple[int, int, int, int]) -> float:
        """Share of the map's total inside (top, left, bottom, right), bottom/right exclusive."""
        top, left, bottom, right = box
        total = float(self.saliency.sum())
        return float(self.saliency[top:bottom, left:right].sum()) / total if total > 0 else 0.0


def gradients(model: Any, x: np.ndarray, class_index: int) -> np.ndarray:
    """d model(x)[:, class_index] / d x for a float32 batch (N, H, W, C)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = model(x, training=False)[:, class_index]
    return tape.gradient(score, x).numpy()  # the images are independent, so one sum's gradient is each one's


def saliency_map(
    model: Any,
    image: np.ndarray,
    class_index: int,
    method: str = "gradient",
    samples: int = SMOOTHGRAD_SAMPLES,
    sigma: float = SMOOTHGRAD_SIGMA,
    seed: int = 0,
) -> np.ndarray:
    """float32 (H, W) saliency of one raw-pixel image (H, W, C) for `class_index` under a logits model."""
    method = METHODS.canonical(method) or method
    x = np.asarray(image, np.float32)[None]
    if method in ("gradient", "gradcam"):  # gradcam is drawn beside the plain gradient map
        batch = x
    elif method == "smoothgrad":
        if samples < 1:
            raise CnnError(f"--samples must be at least 1, got {samples}")
        noise = np.random.default_rng(seed).normal(0.0, sigma * PIXEL_RANGE, (samples, *x.shape[1:]))
        batch = (x + noise).astype(np.float32)  # not clipped: the paper adds noise to the input as is
    else:
        raise CnnError(METHODS.unknown_message(method))
    maps = np.abs(gradients(model, batch, class_index)).max(axis=-1)
    return maps.mean(axis=0).astype(np.float32)


def explain_image(
    run_dir: str | Path,
    image_path: str | Path,
    class_name: str | None = None,
    method: str = "gradient",
    samples: int = SMOOTHGRAD_SAMPLES,
    seed: int = 0,
    layer: str | None = None,
) -> Saliency:
    """Saliency of a run's model for one image file; the class defaults to the predicted one."""
    from cnncli.deploy.artifacts import float32_model
    from cnncli.deploy.runs import open_run
    from cnncli.images import conform, model_view, read_image

    if method not in METHODS:
        raise UsageError(METHODS.unknown_message(method), "--method")
    picture = read_image(image_path)
    run = open_run(run_dir)
    model = float32_model(run.load_model())
    image = conform(picture, *model_view(run.input_shape))  # as cnn predict and training read it
    probs = np.asarray(model(image[None].astype(np.float32), training=False), np.float32)[0]
    names = run.class_names if len(run.class_names) == len(probs) else [str(i) for i in range(len(probs))]
    index = int(probs.argmax()) if class_name is None else class_index(class_name, names)
    scores, score = logits_model(model)
    kind = METHODS.canonical(method)
    assert kind is not None  # checked against METHODS above
    saliency = saliency_map(scores, image, index, kind, samples=samples, seed=seed)
    cam = _gradcam(scores, image, index, layer) if kind == "gradcam" else None
    return Saliency(
        image, saliency, index, names[index], float(probs[index]), names[int(probs.argmax())], kind, score, cam
    )


def _gradcam(scores, image, index: int, layer: str | None):
    from cnncli.insight.maps import find_spatial_layer, grad_cam

    return grad_cam(scores, image, index, find_spatial_layer(scores, layer) if layer else None)


def class_index(name: str, names: list[str]) -> int:
    """A class given by name (case-insensitive) or by index."""
    lowered = [n.lower() for n in names]
    if str(name).lower() in lowered:
        return lowered.index(str(name).lower())
    if str(name).isdigit() and int(name) < len(names):
        return int(name)
    raise CnnError(f"unknown class `{name}`{did_you_mean(name, names)}; the model's classes: {', '.join(names)}")


# ---------------------------------------------------------------- filters


@dataclass
class Filters:
    layer: str
    kernel_shape: tuple[int, int, int, int]  # (kh, kw, in_channels, filters)
    images: np.ndarray  # rgb/single channel: (N, kh, kw, 1 | 3) tiles; multi-channel: (filters, channels, kh, kw)
    ncols: int
    shown_filters: int
    shown_channels: int  # 3 for RGB tiles
    mode: str  # "rgb" | "channels"


def conv_layers(model: Any) -> list:
    """Every Conv2D in the model, nested backbones included, in graph order."""
    import keras

    return [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Conv2D)]


def find_conv_layer(model: Any, name: str | None) -> Any:
    """The Conv2D layer called `name` (default: the first), or a CnnError listing the model's convolutions."""
    convs = conv_layers(model)
    if not convs:
        raise CnnError(f"model `{model.name}` has no Conv2D layer, so no filters to draw")
    if name is None:
        return convs[0]
    by_name = {layer.name: layer for layer in convs}
    if name in by_name:
        return by_name[name]
    listed = ", ".join(by_name)
    other = next((each for each in all_layers(model) if each.name == name), None)
    if other is not None:
        raise CnnError(f"layer `{name}` is a {type(other).__name__}, not a convolution; convolution layers: {listed}")
    raise CnnError(f"no layer named `{name}`{did_you_mean(name, by_name)}; convolution layers: {listed}")


def filter_tiles(model: Any, layer: Any) -> Filters:
    """A conv layer's kernels as picture tiles: RGB kernels when it sees 3 channels, else one grey tile per channel."""
    from cnncli.model.preprocessing import ImagenetPreprocess

    kernel = np.asarray(layer.kernel.numpy() if hasattr(layer.kernel, "numpy") else layer.kernel, np.float32)
    kh, kw, cin, cout = kernel.shape
    if cin == 3:
        caffe = any(isinstance(each, ImagenetPreprocess) and each.mode == "caffe" for each in all_layers(model))
        if caffe and layer is conv_layers(model)[0]:
            kernel = kernel[:, :, ::-1, :]  # an older run: its first conv took BGR; show RGB
        n = min(cout, MAX_FILTERS)
        tiles = kernel[..., :n].transpose(3, 0, 1, 2)
        return Filters(layer.name, kernel.shape, tiles, math.ceil(math.sqrt(n)), n, 3, "rgb")
    if cin == 1:
        n = min(cout, MAX_FILTERS)
        tiles = kernel[:, :, 0, :n].transpose(2, 0, 1)[..., None]
        return Filters(layer.name, kernel.shape, tiles, math.ceil(math.sqrt(n)), n, 1, "channels")
    n, c = min(cout, MAX_FILTERS_MULTI), min(cin, MAX_CHANNELS)
    tiles = kernel[:, :, :c, :n].transpose(3, 2, 0, 1)  # (filter, channel, kh, kw): a row per filter
    return Filters(layer.name, kernel.shape, tiles, c, n, c, "channels")


def draw_filters(run_dir: str | Path, layer_name: str | None, output: str | Path | None) -> tuple[Filters, Path]:
    """Draw a run's conv filters; the picture goes to --output or RUN_DIR/filters_<layer>.png."""
    from cnncli.deploy.runs import open_run
    from cnncli.plots import plot_image_grid, plot_kernel_mosaic

    run = open_run(run_dir)
    model = run.load_model()
    layer = find_conv_layer(model, layer_name)
    filters = filter_tiles(model, layer)
    path = Path(output) if output else run.path / f"filters_{layer.name}.png"
    _check_png(path)
    with _writing(path):
        if filters.mode == "channels" and filters.kernel_shape[2] > 1:
            kh, kw, cin, cout = filters.kernel_shape
            plot_kernel_mosaic(
                filters.images,
                path,
                f"{layer.name}: {filters.shown_filters} of {cout} filters × "
                f"{filters.shown_channels} of {cin} input channels",
            )
        else:
            plot_image_grid(filters.images, path, ncols=filters.ncols)
    return filters, path


def default_saliency_path(run_dir: Path, image: Path, result: Saliency) -> Path:
    """RUN_DIR/saliency/<image>_<class>_<method>.png, where a saliency map goes by default."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in result.class_name)
    return Path(run_dir) / "saliency" / f"{Path(image).stem}_{safe}_{result.method}.png"


def _check_png(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise UsageError(f"`{path}`: pictures are written as PNG; give a path ending in .png", "--output")
    probe = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("/"))
    if not probe.is_dir():
        raise CnnError(f"cannot write `{path}`: `{probe}` is a file, not a directory; choose another --output")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CnnError(f"cannot write `{path}`: `{probe}` is not writable; choose another --output")


def _writing(path: Path):
    """What os.access cannot foresee (root on a read-only mount, /proc, a full disk) still ends as one line."""
    from cnncli.fileio import writing

    return writing(path, hint="; choose another --output")


def draw_saliency(run_dir: str | Path, image: str | Path, result: Saliency, output: str | Path | None) -> Path:
    """Draw `result` to `output` (default: under the run directory) and return the PNG's path."""
    from cnncli.insight.pictures import plot_gradcam
    from cnncli.plots import plot_saliency

    path = Path(output) if output else default_saliency_path(Path(run_dir), Path(image), result)
    _check_png(path)
    title = (
        f"{Path(image).name}: {result.class_name} (p = {result.probability:.3f}, "
        f"predicted {result.predicted}) · {result.method}"
    )
    with _writing(path):
        if result.gradcam is not None:
            return plot_gradcam(
                result.image, result.saliency, result.gradcam.heatmap, path, f"{title} at {result.gradcam.layer}"
            )
        return plot_saliency(result.image, result.saliency, path, title)
