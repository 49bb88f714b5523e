"""Maps over an image from inside the network: Grad-CAM and the feature maps of chosen layers.

Grad-CAM (Selvaraju et al. 2017) weights each channel of a convolution's
output by the mean gradient of the class logit over that channel, sums the
weighted channels, keeps the positive part and upsamples it to the image. The
default layer is the last convolution: the one with the longest path from the
input (so in a residual block the second 3×3 convolution wins over the 1×1
shortcut), and inside a backbone when the model has one.

A layer in a nested model (a keras.applications backbone, a `from_run` base)
has no tensor in the outer graph. `probe_model` rebuilds the outer graph with
`keras.models.clone_model(call_function=...)`, calling the nested model through
a copy that also returns the inner layer's output; the layers and weights are
the same objects, nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import CnnError, did_you_mean

MAX_CHANNELS = 64  # feature-map tiles per layer by default (8×8 grid)


# ---------------------------------------------------------------- layers with a spatial output


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _walk(model):
    """Every layer of `model` in graph order, nested models' layers after the nested model itself."""
    for layer in model.layers:
        yield layer
        if _is_model(layer):
            yield from _walk(layer)


def _is_conv(layer) -> bool:
    import keras

    kinds = (
        keras.layers.Conv2D,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        keras.layers.Conv2DTranspose,
    )
    return isinstance(layer, kinds)


def _is_spatial(layer) -> bool:
    import keras

    if isinstance(layer, keras.layers.InputLayer) or _is_model(layer):
        return False
    shape = getattr(layer, "output", None)
    return shape is not None and not isinstance(shape, (list, tuple)) and len(shape.shape) == 4


def spatial_layers(model: Any) -> list:
    """The layers whose output is a (batch, H, W, C) feature map, nested models included, in graph order."""
    return [layer for layer in _walk(model) if _is_spatial(layer)]


def conv_layers(model: Any) -> list:
    """The convolutions (any kind: plain, depthwise, separable, transposed) with a feature map, nested included."""
    return [layer for layer in spatial_layers(model) if _is_conv(layer)]


def _depths(model) -> dict[str, int]:
    """Longest path from the input to each top-level layer, from the model's serialised graph."""
    depth: dict[str, int] = {}
    for i, entry in enumerate(model.get_config().get("layers", [])):
        name = entry.get("name") or entry["config"]["name"]
        if "inbound_nodes" not in entry:  # a Sequential config: the list order is the graph
            depth[name] = i
            continue
        parents = list(_history_names(entry["inbound_nodes"]))
        depth[name] = 1 + max((depth.get(p, 0) for p in parents), default=-1)
    return depth


def _history_names(node):
    if isinstance(node, dict):
        history = node.get("keras_history") or node.get("config", {}).get("keras_history")
        if history:
            yield history[0]
            return
        for value in node.values():
            yield from _history_names(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _history_names(value)


def last_conv(model: Any) -> Any:
    """The default Grad-CAM layer: the deepest convolution of the backbone if there is one, else of the model."""
    nested = [layer for layer in model.layers if _is_model(layer) and conv_layers(layer)]
    if nested:
        return last_conv(nested[-1])
    convs = [layer for layer in model.layers if _is_conv(layer) and _is_spatial(layer)]
    if not convs:
        drawable = ", ".join(layer.name for layer in spatial_layers(model)) or "none"
        raise CnnError(
            f"model `{model.name}` has no convolution with a spatial output; name a layer with "
            f"--layer (layers with feature maps: {drawable})"
        )
    depth = _depths(model)
    order = {id(layer): i for i, layer in enumerate(model.layers)}
    return max(convs, key=lambda layer: (depth.get(layer.name, 0), order[id(layer)]))


def find_spatial_layer(model: Any, name: str) -> Any:
    """The layer called `name` if it has a feature map, else a CnnError listing the ones that do."""
    drawable = spatial_layers(model)
    listed = ", ".join(layer.name for layer in drawable)
    for layer in drawable:
        if layer.name == name:
            return layer
    other = next((layer for layer in _walk(model) if layer.name == name), None)
    if other is not None:
        shape = tuple(other.output.shape) if not _is_model(other) else "a nested model"
        raise CnnError(
            f"layer `{name}` ({type(other).__name__}, output {shape}) has no spatial feature map "
            f"to draw; layers with feature maps: {listed}"
        )
    names = [layer.name for layer in drawable]
    raise CnnError(f"no layer named `{name}`{did_you_mean(name, names)}; layers with feature maps: {listed}")


# ---------------------------------------------------------------- a model that also returns inner outputs


def probe_model(model: Any, targets: list) -> Any:
    """keras.Model: the inputs of `model` -> [model's output, *outputs of `targets`], nested targets included."""
    import keras

    direct = {id(t) for t in targets if any(t is layer for layer in model.layers)}
    nested: dict[int, tuple[Any, list]] = {}  # id(sub-model) -> (sub-model, its targets)
    for target in targets:
        if id(target) in direct:
            continue
        sub = next(layer for layer in model.layers if _is_model(layer) and any(t is target for t in _walk(layer)))
        nested.setdefault(id(sub), (sub, []))[1].append(target)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if not nested:
        return keras.Model(inputs, [model.output, *(t.output for t in targets)])
    probes = {key: (probe_model(sub, inner), inner) for key, (sub, inner) in nested.items()}
    found = {}  # id(target) -> its tensor in the rebuilt graph

    def call(layer, *args, **kwargs):
        if id(layer) in probes:
            probe, inner = probes[id(layer)]
            outs = probe(args[0], **kwargs)
            found.update({id(t): out for t, out in zip(inner, outs[1:], strict=True)})
            return outs[0]
        out = layer(*args, **kwargs)
        if id(layer) in direct:
            found[id(layer)] = out
        return out

    rebuilt = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    rebuilt_inputs = rebuilt.inputs[0] if len(rebuilt.inputs) == 1 else rebuilt.inputs
    return keras.Model(rebuilt_inputs, [rebuilt.output, *(found[id(t)] for t in targets)])


# ---------------------------------------------------------------- Grad-CAM


@dataclass
class GradCam:
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], upsampled to the image
    layer: str
    feature_shape: tuple[int, ...]  # the layer's (h, w, channels)

    def mass_inside(self, box: tuple[int, int, int, int]) -> float:
        """Share of the map's total inside (top, left, bottom, right), bottom/right exclusive."""
        top, left, bottom, right = box
        total = float(self.heatmap.sum())
        return float(self.heatmap[top:bottom, left:right].sum()) / total if total > 0 else 0.0

    def summary(self) -> dict:
        """Peak [row, col] in image pixels and the share of the map's mass in each quadrant."""
        h, w = self.heatmap.shape
        peak = np.unravel_index(int(self.heatmap.argmax()), self.heatmap.shape)
        total = float(self.heatmap.sum()) or 1.0
        cy, cx = h // 2, w // 2  # an odd middle row/column goes to the bottom/right quadrants
        parts = {
            "top_left": self.heatmap[:cy, :cx],
            "top_right": self.heatmap[:cy, cx:],
            "bottom_left": self.heatmap[cy:, :cx],
            "bottom_right": self.heatmap[cy:, cx:],
        }
        return {
            "layer": self.layer,
            "feature_shape": list(self.feature_shape),
            "peak": [int(peak[0]), int(peak[1])],
            "quadrants": {k: round(float(v.sum()) / total, 4) for k, v in parts.items()},
        }


def grad_cam(scores_model: Any, image: np.ndarray, class_index: int, layer: Any = None) -> GradCam:
    """Grad-CAM of one raw-pixel image (H, W, C) for `class_index` under a logits model, at `layer`."""
    return grad_cams(scores_model, np.asarray(image)[None], [class_index], layer)[0]


def grad_cams(scores_model: Any, images: np.ndarray, classes: list[int], layer: Any = None) -> list[GradCam]:
    """Grad-CAM of a batch of raw-pixel images (N, H, W, C), image i for class classes[i], in one pass."""
    import tensorflow as tf

    layer = layer if layer is not None else last_conv(scores_model)
    probe = probe_model(scores_model, [layer])
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    pick = tf.constant([[i, int(k)] for i, k in enumerate(classes)])
    with tf.GradientTape() as tape:
        scores, features = probe(x, training=False)
        tape.watch(features)
        score = tf.gather_nd(scores, pick)  # the images are independent: one sum's gradient is each one's
    grads = tape.gradient(score, features)
    if grads is None:
        raise CnnError(f"layer `{layer.name}` does not lead to the model's output; choose another --layer")
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel: its mean gradient
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    up = np.maximum(tf.image.resize(cams, x.shape[1:3], method="bilinear")[..., 0].numpy(), 0.0)
    shape = tuple(int(d) for d in features.shape[1:])
    tops = up.max(axis=(1, 2), keepdims=True)
    up = np.divide(up, tops, out=np.zeros_like(up), where=tops > 0).astype(np.float32)
    return [GradCam(m, layer.name, shape) for m in up]


# ---------------------------------------------------------------- feature maps


@dataclass
class FeatureMap:
    layer: str
    maps: np.ndarray  # float32 (h, w, channels shown)
    channels: int  # the layer's channels, shown or not
    means: list[float]  # mean activation of each shown channel

    @property
    def tiles(self) -> int:
        """How many channels the grid shows."""
        return self.maps.shape[-1]


def feature_maps(model: Any, image: np.ndarray, layers: list, max_channels: int = MAX_CHANNELS) -> list[FeatureMap]:
    """Each layer's output for one raw-pixel image (H, W, C), its first `max_channels` channels."""
    if max_channels < 1:
        raise CnnError(f"--max must be at least 1, got {max_channels}")
    outs = probe_model(model, layers)(np.asarray(image, np.float32)[None], training=False)[1:]
    result = []
    for layer, out in zip(layers, outs, strict=True):
        fmap = np.asarray(out, np.float32)[0]
        shown = fmap[..., :max_channels]
        result.append(FeatureMap(layer.name, shown, int(fmap.shape[-1]), [float(m) for m in shown.mean(axis=(0, 1))]))
    return result


def draw_activations(
    run_dir: str | Path,
    image_path: str | Path,
    layer_names: list[str] | None,
    max_channels: int = MAX_CHANNELS,
    output: str | Path | None = None,
) -> tuple[list[FeatureMap], list]:
    """One PNG grid per layer (default: the convolutions in order) of one image's feature maps.

    The PNGs go to `output` (a directory) or RUN_DIR/activations/<image stem>/, named <layer>.png.
    """
    from pathlib import Path

    from cnncli.deploy.artifacts import float32_model
    from cnncli.deploy.runs import open_run
    from cnncli.fileio import writing
    from cnncli.images import read_for_model
    from cnncli.insight.pictures import plot_feature_grid

    run = open_run(run_dir)
    model = float32_model(run.load_model())
    if layer_names:
        layers = [find_spatial_layer(model, name) for name in layer_names]
    else:
        layers = conv_layers(model)
        if not layers:
            drawable = ", ".join(layer.name for layer in spatial_layers(model)) or "none"
            raise CnnError(
                f"model `{model.name}` has no convolution layer; name layers with --layer "
                f"(layers with feature maps: {drawable})"
            )
    image = read_for_model(image_path, run.input_shape)  # as training and cnn predict read it
    folder = Path(output) if output else run.path / "activations" / Path(image_path).stem
    if folder.exists() and not folder.is_dir():
        raise CnnError(f"--output `{folder}` is a file; give a directory for the PNGs")
    maps, paths = feature_maps(model, image, layers, max_channels), []
    for fmap in maps:
        path = folder / f"{fmap.layer}.png"
        shown = (
            f"{fmap.tiles} of {fmap.channels} channels" if fmap.tiles < fmap.channels else f"{fmap.channels} channels"
        )
        with writing(path, hint="; choose another --output"):
            paths.append(
                plot_feature_grid(
                    fmap.maps,
                    fmap.means,
                    path,
                    f"{Path(image_path).name} at {fmap.layer}: {shown}, {fmap.maps.shape[0]}×{fmap.maps.shape[1]}",
                )
            )
    return maps, paths
