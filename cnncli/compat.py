"""Every use of a Keras or TensorFlow internal, in one place, each with its plain-Keras fallback.

Keras 3's public API does not reach everything cnncli does. These are the
internals it uses (names as in Keras 3.15 and TensorFlow 2.21, as tested), what
for, and what happens when a release moves one:

    fast_dropout     keras.src.backend.tensorflow.random: dropout, draw_seed, _cast_seed,
                     _get_concrete_noise_shape. Dropout masks from 16 random bits (train/dropout.py).
                     Without it: Keras's own dropout.
    fused_optimizer  Optimizer._get_variable_index; Adam's _momentums and _velocities, SGD's momentums;
                     tf.raw_ops.ResourceApplyAdam and friends. One TensorFlow kernel per variable update
                     (train/fused.py). Without it: Keras's update.
    variable_index   Optimizer._get_variable_index: which variable an update is for (per-layer rates,
                     train/layer_rates.py). Without it: looked up by the variable's path.
    weights_hint     keras.src.utils.file_utils.get_file and keras.src.backend.config.keras_home: name
                     the weights file a backbone could not download (builder.py). Without it: Keras's
                     own error, without the cache path.
    inbound_nodes    Layer._inbound_nodes, Node.input_tensors: the tensors a layer was called on
                     (geometry.py). Without it: the public Layer.input, which a layer called once has.
    snake_case       keras.src.utils.naming.to_snake_case: Keras's default layer names (layers.py).
                     Without it: the same rule written here.
    coordination     tensorflow.python.eager.context (configure_coordination_service, the cluster's
                     key-value store), distribute.multi_worker_util.coordination_leader and the
                     coordination_config_pb2 that collective_all_reduce_strategy uses: multi_worker
                     heartbeats after runtime.collective_timeout, and the chief telling the other
                     workers its run directory (train/cluster.py). Without it: TensorFlow's own
                     heartbeat timeout, and other workers name no run directory.
    xplane           tensorflow.tsl.profiler.protobuf.xplane_pb2.XSpace: reads back the trace that
                     `cnn train --profile` wrote (train/profile.py). Without it: the trace is still
                     written for TensorBoard, and the top-ops table says it cannot be read here.
    transform_labels BaseImagePreprocessingLayer.transform_labels: which augmentation layers change
                     the labels (MixUp, CutMix), so that only those get them (train/augment.py).
                     Without it: Keras's label-mixing layers by name.
    determinism_off  tensorflow.python.framework.config.disable_op_determinism: a run without
                     `deterministic` turns TensorFlow's op determinism off again, after a deterministic
                     run in the same process (train/job.py). Without it: it stays on, and the later
                     runs of the process are deterministic too (their input wait is not timed).

`check()` looks for each once per process; run.json records the result and which
speed-ups a run actually used (`report()`), so a slower run on a newer Keras
says why.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

_found: dict[str, bool] | None = None  # internal -> usable; None until check()
_used: dict[str, object] = {}  # speed-up -> what it used in this process (a kernel name, True)


def _has(module: str, *names: str) -> bool:
    try:
        owner = importlib.import_module(module)
    except ImportError:
        return False
    return all(hasattr(owner, n) for n in names)


def _optimizer_has(*names: str) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return all(hasattr(keras.optimizers.Optimizer, n) for n in names)


def _probe() -> dict[str, bool]:
    return {
        "fast_dropout": _has(
            "keras.src.backend.tensorflow.random", "dropout", "draw_seed", "_cast_seed", "_get_concrete_noise_shape"
        ),
        "fused_optimizer": _optimizer_has("_get_variable_index")
        and _has(
            "tensorflow.raw_ops", "ResourceApplyAdam", "ResourceApplyGradientDescent", "ResourceApplyKerasMomentum"
        ),
        "variable_index": _optimizer_has("_get_variable_index"),
        "weights_hint": _has("keras.src.utils.file_utils", "get_file")
        and _has("keras.src.backend.config", "keras_home"),
        "inbound_nodes": _layer_has_inbound_nodes(),
        "snake_case": _has("keras.src.utils.naming", "to_snake_case"),
        "coordination": _has("tensorflow.python.eager.context", "context")
        and _has("tensorflow.python.distribute.multi_worker_util", "coordination_leader")
        and _has("tensorflow.python.distribute.collective_all_reduce_strategy", "coordination_config_pb2"),
        "xplane": _has("tensorflow.tsl.profiler.protobuf.xplane_pb2", "XSpace"),
        "transform_labels": hasattr(_image_layer_base(), "transform_labels"),
        "determinism_off": _has("tensorflow.python.framework.config", "disable_op_determinism"),
    }


def _image_layer_base() -> Any:
    """The class of Keras's image augmentation layers, or None."""
    module = "keras.src.layers.preprocessing.image_preprocessing.base_image_preprocessing_layer"
    return getattr(importlib.import_module(module), "BaseImagePreprocessingLayer", None) if _has(module) else None


def _layer_has_inbound_nodes() -> bool:
    """Keras's Node with its input_tensors (each layer's `_inbound_nodes` is looked for at use)."""
    try:
        from keras.src.ops.node import Node
    except ImportError:
        return False
    return isinstance(getattr(Node, "input_tensors", None), property)


def check() -> dict[str, bool]:
    """Which internals this Keras has (looked up once per process)."""
    global _found
    if _found is None:
        _found = _probe()
    return dict(_found)


def usable(name: str) -> bool:
    """Whether the Keras internal `name` was found and may be used."""
    return check()[name]


def reset() -> None:
    """Look again at the next check() and forget what was used (tests simulate a moved internal)."""
    global _found
    _found = None
    _used.clear()


def used(speedup: str, what: object = True) -> None:
    """Note that this process's training ran with `speedup` (for run.json)."""
    _used[speedup] = what


def report() -> dict:
    """run.json's `compat`: the internals found, and the speed-ups the training steps used."""
    found = check()
    return {
        "keras_internals": found,
        "speedups": {
            "fast_dropout": bool(_used.get("fast_dropout", False)),
            "fused_optimizer": _used.get("fused_optimizer"),
        },
    }


# ---------------------------------------------------------------- the internals, each behind a function


def dropout_backend() -> Any:
    """Keras's TensorFlow random module (its dropout and seed helpers), or None."""
    if not usable("fast_dropout"):
        return None
    return importlib.import_module("keras.src.backend.tensorflow.random")


_determinism_on = False  # whether this process turned TensorFlow's op determinism on and could not turn it off


def op_determinism(enabled: bool) -> bool:
    """Turn TensorFlow's op determinism on or off for the run about to start; whether it is on now.

    Turned on, TensorFlow offers no public way back, so one deterministic run would make every later
    run of the process deterministic (and refuse the timestamps that time a streamed run's input)."""
    global _determinism_on
    import tensorflow as tf

    if enabled:
        tf.config.experimental.enable_op_determinism()
        _determinism_on = True
    elif _determinism_on and usable("determinism_off"):
        importlib.import_module("tensorflow.python.framework.config").disable_op_determinism()
        _determinism_on = False
    return _determinism_on


def determinism_on() -> bool:
    """Whether TensorFlow's op determinism is on (as this process's runs left it)."""
    return _determinism_on


def xspace(data: bytes) -> Any:
    """A profiler trace (`.xplane.pb`) parsed into TensorFlow's XSpace message, or None."""
    if not usable("xplane"):
        return None
    space = importlib.import_module("tensorflow.tsl.profiler.protobuf.xplane_pb2").XSpace()
    space.ParseFromString(data)
    return space


def variable_index(optimizer: Any, variable: Any) -> int:
    """The index of `variable` among those `optimizer` was built on."""
    if usable("variable_index"):
        return optimizer._get_variable_index(variable)
    return optimizer._variable_paths.index(_path(variable))  # set by layerwise(), which has the list


def _path(variable) -> str:
    path = getattr(variable, "path", None)
    if path is None:  # a tf.Variable (the local copy in a distributed update): its name is the path
        path = variable.name.rsplit(":", 1)[0]
    return path


def optimizer_slots(optimizer: Any, kind: str) -> list | None:
    """Adam's first and second moments (`kind` "adam") or SGD's momentum (`kind` "sgd"), or None when
    this Keras keeps them elsewhere."""
    names = ("_momentums", "_velocities") if kind == "adam" else ("momentums",)
    slots = [getattr(optimizer, n, None) for n in names]
    return None if any(s is None for s in slots) else slots


def inbound_tensors(layer: Any) -> list:
    """The tensors `layer` was first called on in its functional model."""
    import keras

    nodes = getattr(layer, "_inbound_nodes", None) if usable("inbound_nodes") else None
    if nodes is not None:
        return list(nodes[0].input_tensors) if nodes else []
    try:
        return list(keras.tree.flatten(layer.input))
    except (AttributeError, ValueError):  # never called, or called more than once
        return []


def snake_case(name: str) -> str:
    """Keras's default layer naming: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    if usable("snake_case"):
        from keras.src.utils.naming import to_snake_case

        return to_snake_case(name)
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def is_image_augmentation(cls: type) -> bool:
    """Whether a keras.layers class is one of Keras's image preprocessing and augmentation layers
    (RandomFlip ... CutMix, MixUp, RandAugment): they live together in keras.src.layers.preprocessing."""
    return ".image_preprocessing." in getattr(cls, "__module__", "")


_LABEL_MIXERS = ("MixUp", "CutMix")  # without transform_labels: Keras's layers that mix labels, by name


class _Untouchable:
    """A random transformation that raises when a layer reads it."""

    def __getitem__(self, key: Any) -> Any:
        raise LookupError(key)

    def get(self, *args: Any) -> Any:
        """Raise: dict.get reads it too."""
        raise LookupError(args)


def changes_labels(layer: Any) -> bool:
    """Whether an augmentation layer changes the labels of the images it changes (MixUp, CutMix mix them).

    Keras's image layers take {"images", "labels"} and pass the labels through `transform_labels`,
    with the batch's random transformation. A layer that hands the labels back untouched without
    reading the transformation leaves them alone; so does one without `transform_labels` (it takes
    images only). Every other layer changes them, or may: it gets them.
    """
    if not usable("transform_labels"):
        return type(layer).__name__ in _LABEL_MIXERS
    base = _image_layer_base()
    if base is None or not isinstance(layer, base):
        return False
    labels = object()
    try:
        return layer.transform_labels(labels, transformation=_Untouchable(), training=True) is not labels
    except NotImplementedError:  # the base class's: the layer takes no labels
        return False
    except Exception:  # it read the transformation (or worked on the labels): it changes them
        return True


def file_utils() -> Any:
    """keras.src.utils.file_utils (whose get_file keras.applications calls), or None."""
    if not usable("weights_hint"):
        return None
    return importlib.import_module("keras.src.utils.file_utils")


def keras_home() -> str:
    """Where Keras caches downloads: $KERAS_HOME as Keras read it at import, else ~/.keras."""
    if usable("weights_hint"):
        from keras.src.backend.config import keras_home as home

        return home()
    return _home_now()


def _home_now() -> str:
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def cache_dir(subdir: str, home: str | None = None) -> Path:
    """Keras's cache folder `subdir` under `home` (default: $KERAS_HOME as it is now, else ~/.keras),
    with Keras's own fallback to /tmp/.keras when the home folder is not writable."""
    base = os.path.expanduser(home if home is not None else _home_now())
    parent = base if os.path.exists(base) else os.path.dirname(base)
    if not os.access(parent, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / subdir


# ---------------------------------------------------------------- multi-worker coordination


def configure_heartbeats(cluster_spec: Any, timeout: float) -> bool:
    """Set up TensorFlow's coordination service as MultiWorkerMirroredStrategy would, with our heartbeat
    and shutdown timeouts (seconds); False (TensorFlow's defaults stay) where the internals moved."""
    if not usable("coordination"):
        return False
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.collective_all_reduce_strategy import coordination_config_pb2
    from tensorflow.python.eager import context

    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
        for job in ("chief", "worker")
        if job in cluster_spec.jobs
    ]
    ms = int(timeout * 1000)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=ms,
        shutdown_barrier_timeout_in_ms=ms,
    )
    return True


def set_cluster_value(key: str, value: str) -> None:
    """Publish a value to every task of the cluster (the coordination service's key-value store)."""
    if usable("coordination"):
        from tensorflow.python.eager import context

        context.context().set_config_key_value(key, value)


def get_cluster_value(key: str) -> str | None:
    """A value another task published (waits for it); None where the store is out of reach."""
    if not usable("coordination"):
        return None
    from tensorflow.python.eager import context

    return context.context().get_config_key_value(key)
