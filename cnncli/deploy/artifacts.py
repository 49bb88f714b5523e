"""Models read back for inference: a run, a .keras file, a SavedModel, a .tflite or an .onnx.

`open_predictor(path)` gives one `Predictor` whatever the path holds, so
`cnn predict` and the export check run every format through the same call:
raw pixels (N, H, W, C) in, class probabilities (N, K) out. Class names and
the input spec of an exported artefact come from the `export.json` written
beside it (`record_export`). Runtimes of the optional formats (onnxruntime,
LiteRT) are imported inside the branch that needs them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import fileio
from cnncli.errors import CnnError, RunError
from cnncli.model.geometry import all_layers
from cnncli.model.predict_loop import in_batches

EXPORT_JSON = "export.json"
EXTRA_HINT = "pip install 'cnncli[export]'"


@dataclass
class Predictor:
    """Raw pixels in, probabilities out, for one model on disk."""

    kind: str  # run | keras | saved_model | tflite | onnx
    path: Path
    class_names: list[str]
    input_shape: tuple[int, ...]  # (h, w, c) for images; a model of Dense layers may take (h, w)
    run: Callable[[np.ndarray], np.ndarray]  # one float32 batch -> (n, K) probabilities
    warnings: list[str] = field(default_factory=list)
    model: object = None  # the keras.Model of a run or a .keras file (Grad-CAM needs its layers); else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, K) probabilities of uint8 or float (N, H, W, C) images, in batches."""
        return in_batches(self.run, x, len(self.class_names))


# ---------------------------------------------------------------- float32 copies


def float32_model(model: Any) -> Any:
    """`model` computing in float32: itself if it already does, else a copy with the same weights.

    Runs trained under mixed_bfloat16 (the CPU default on machines with AMX) keep
    float32 weights but compute in bfloat16. Exports and gradients want float32:
    TFLite has no bfloat16 kernels, Keras's ONNX exporter requires a float32
    policy, and saliency gradients in bfloat16 are quantised to 3 digits.
    """
    import keras

    if all(_policy_name(layer) == "float32" for layer in all_layers(model)):
        return model
    config = _force_float32(json.loads(model.to_json()))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # layers built without an explicit dtype follow the global policy
    try:
        copy = keras.models.model_from_json(json.dumps(config))
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())  # variables are float32 under mixed policies: an exact copy
    return copy


def trained_precision(model: Any) -> str:
    """The dtype policy most layers computed in when the model was trained (`float32`, `mixed_bfloat16`, …)."""
    names = [_policy_name(layer) for layer in all_layers(model)]
    return max(set(names), key=names.count) if names else "float32"


def _policy_name(layer) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", "float32")


def _force_float32(node):
    """Every DTypePolicy in a serialized model config set to float32."""
    if isinstance(node, dict):
        if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(node.get("config"), dict):
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {k: _force_float32(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_force_float32(v) for v in node]
    if node in ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16"):
        return "float32"
    return node


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hide what C++ runtimes write straight to file descriptor 2 (LiteRT's "Created XNNPACK delegate",
    the converter's quantization summary); Python exceptions still carry their messages."""
    import sys

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ---------------------------------------------------------------- export.json


def export_json_path(artifact: Path) -> Path:
    """The export.json beside an exported artefact."""
    return Path(artifact).parent / EXPORT_JSON


def read_export_info(artifact: Path) -> dict | None:
    """The record `cnn export` wrote for `artifact` in export.json beside it, or None."""
    path = export_json_path(artifact)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"`{path}` cannot be read: {exc}") from None
    return (doc.get("artifacts") or {}).get(Path(artifact).name)


def record_export(artifact: Path, record: dict) -> Path:
    """Add or replace `artifact`'s entry in export.json beside it (one entry per artefact name).

    Several artefacts (float32 and int8 .tflite, say) may share a directory, so
    the file maps artefact names to records; a lock keeps concurrent exports
    into one directory from losing each other's entries.
    """
    path = export_json_path(artifact)
    with fileio.locked(path.parent):
        doc: dict[str, Any] = {"artifacts": {}}
        if path.exists():
            try:
                doc = json.loads(path.read_text())
            except ValueError:
                pass  # a foreign or damaged file: replaced by a valid one
        doc.setdefault("artifacts", {})[Path(artifact).name] = record
        fileio.write_json(path, doc)
    return path


# ---------------------------------------------------------------- runtimes per format


def kind_of(path: Path) -> str:
    """Which kind of model `path` holds, from its name and contents."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "saved_model"
        if (path / "config.yaml").exists():
            return "run"
        raise RunError(f"`{path}` is neither a run directory (no config.yaml) nor a SavedModel (no saved_model.pb)")
    if not path.exists():
        raise RunError(f"`{path}` does not exist; give a run directory or an exported model")
    kinds = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}
    if path.suffix.lower() not in kinds:
        raise RunError(
            f"`{path}`: cannot tell the model format from the name; expected a run directory, "
            "a SavedModel directory, or a .keras, .tflite or .onnx file"
        )
    return kinds[path.suffix.lower()]


def load_runner(kind: str, path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int, int]]:
    """(batch -> probabilities, input (H, W, C)) for a model file of `kind`."""
    return _RUNNERS[kind](Path(path))


def _keras_runner(path: Path):
    from cnncli.model.preprocessing import load_model

    model = load_model(path)
    return _keras_call(model), tuple(int(d) for d in model.input_shape[1:])


def _keras_call(model):
    def call(x):
        # Keras's compiled predict step (a graph traced once per batch shape until it generalises), not an
        # eager call: a LeNet-sized batch of 1 takes about a quarter of the time, which a server feels
        return np.asarray(model.predict_on_batch(x), np.float32)

    call.model = model  # open_predictor hands it on for Grad-CAM
    return call


def _saved_model_runner(path: Path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise RunError(f"`{path}` cannot be loaded as a SavedModel: {str(exc).splitlines()[0]}") from None
    if "serving_default" not in loaded.signatures:
        raise RunError(f"`{path}` has no serving_default signature; signatures: {', '.join(loaded.signatures)}")
    fn = loaded.signatures["serving_default"]
    ((name, spec),) = fn.structured_input_signature[1].items()

    def run(x):
        out = fn(**{name: tf.constant(x.astype(spec.dtype.as_numpy_dtype))})
        probs = out["probabilities"] if "probabilities" in out else next(iter(out.values()))
        return probs.numpy()

    run.__dict__["module"] = loaded  # keep the loaded object (and its variables) alive with the function
    return run, tuple(int(d) for d in spec.shape[1:])


def tflite_interpreter(path: Path) -> Any:
    """A LiteRT interpreter: ai-edge-litert when installed, else TensorFlow's own copy."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = getattr(tf.lite, "Interpreter", None)
        if Interpreter is None:
            raise CnnError(f"no LiteRT interpreter: {EXTRA_HINT} (it brings ai-edge-litert)") from None
    try:
        with native_stderr_silenced():
            interpreter = Interpreter(model_path=str(path))
            interpreter.allocate_tensors()  # the XNNPACK notice is printed here, once
        return interpreter
    except Exception as exc:
        raise RunError(f"`{path}` cannot be loaded as a .tflite model: {str(exc).splitlines()[0]}") from None


def _tflite_runner(path: Path):
    interpreter = tflite_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = tuple(int(d) for d in inp["shape"][1:])

    def run(x):
        interpreter.resize_tensor_input(inp["index"], [len(x), *shape])
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], _quantize(x, inp))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(out["index"]), out)

    return run, shape


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels to a tensor's dtype; integer inputs follow the tensor's (scale, zero point)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    q = np.round(x / scale + zero) if scale else x
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _onnx_runner(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnError(f"running .onnx models needs onnxruntime: {EXTRA_HINT}") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RunError(f"`{path}` cannot be loaded by onnxruntime: {str(exc).splitlines()[0]}") from None
    inp = session.get_inputs()[0]
    shape = tuple(int(d) for d in inp.shape[1:])
    return (lambda x: session.run(None, {inp.name: x.astype(np.float32)})[0]), shape


_RUNNERS = {"keras": _keras_runner, "saved_model": _saved_model_runner, "tflite": _tflite_runner, "onnx": _onnx_runner}


def open_predictor(path: str | Path) -> Predictor:
    """A Predictor for a run directory or an exported model (class names from export.json beside it)."""
    from cnncli.deploy.runs import open_run

    path = Path(path)
    kind = kind_of(path)
    if kind == "run":
        run = open_run(path)
        model = run.load_model()
        k = int(model.outputs[0].shape[-1])
        names = run.class_names if len(run.class_names) == k else [str(i) for i in range(k)]
        return Predictor("run", path, names, tuple(run.input_shape), _keras_call(model), model=model)
    fn, shape = load_runner(kind, path)
    info = read_export_info(path)
    warnings = []
    if info and info.get("class_names"):
        names = list(info["class_names"])
    else:
        k = fn(np.zeros((1, *shape), np.float32)).shape[-1]
        names = [str(i) for i in range(k)]
        warnings.append(f"no entry for `{path.name}` in {export_json_path(path)}: classes are shown as indices")
    return Predictor(kind, path, names, shape, fn, warnings, getattr(fn, "model", None))
