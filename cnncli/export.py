"""`cnn export`: a run's model written in a deployable format, then proven to compute the same thing.

Formats live in `FORMATS` (see `list_formats()`). Every export is written to a
temporary name beside its target, read back with that format's own runtime
(`cnncli.artifacts`), and compared with model.keras on up to 1,000 real images
of the run's test split. Only an artefact that passes its format's criterion
is renamed into place; a failing one is deleted. The figures of the check go
into export.json beside the artefact, with the class names and input spec.

Every export computes in float32, whatever policy the model trained under
(see `artifacts.float32_model`), and takes raw pixels 0..255: the scaling is
the model's first layer, so no preprocessing travels separately.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnncli import __version__
from cnncli.artifacts import (EXTRA_HINT, float32_model, load_runner, native_stderr_silenced, record_export,
                              trained_precision)
from cnncli.errors import CnnError, DataError
from cnncli.registry import Registry

CHECK_EXAMPLES = 1000  # images compared per export: agreement resolves 0.1%, so 98% vs 97% is visible
REPRESENTATIVE_EXAMPLES = 200  # training images int8 calibration sees; TFLite's guide suggests 100-500
REPRESENTATIVE_SEED = 0  # calibration images are the same on every export of a run


@dataclass(frozen=True)
class Criterion:
    """What an export must achieve against model.keras on the check images."""

    max_abs_diff: float | None = None  # bound on |p_export - p_keras| over every probability
    min_agreement: float | None = None  # share of images whose top class must agree

    def describe(self) -> str:
        parts = []
        if self.max_abs_diff is not None:
            parts.append(f"max |Δp| ≤ {self.max_abs_diff:g}")
        if self.min_agreement is not None:
            parts.append(f"top-class agreement ≥ {self.min_agreement:.0%}")
        return " and ".join(parts)

    def passed(self, max_abs_diff: float, agreement: float) -> bool:
        return ((self.max_abs_diff is None or max_abs_diff <= self.max_abs_diff)
                and (self.min_agreement is None or agreement >= self.min_agreement))


FLOAT = Criterion(max_abs_diff=1e-4)  # float32 kernels differ only in summation order
FLOAT16 = Criterion(max_abs_diff=1e-2)  # weights rounded to 11 significant bits (~5e-4 relative each)
INT8 = Criterion(min_agreement=0.98)  # 8-bit activations move probabilities; the decision must hold


@dataclass(frozen=True)
class Format:
    name: str
    write: Callable  # (model, tmp_path, ctx: _Context) -> None
    suffix: str  # the artefact's file suffix; "" for a directory
    default_name: str
    summary: str
    needs: tuple[str, ...] = ()  # optional modules (the `export` extra) this format imports


@dataclass(frozen=True)
class Quantization:
    name: str
    criterion: Criterion
    summary: str


QUANTIZATIONS: Registry[Quantization] = Registry("quantization", {
    "float16": Quantization("float16", FLOAT16, "weights stored as float16 (half the size), computed in float32"),
    "int8": Quantization("int8", INT8, "weights and activations int8, calibrated on training images; "
                                       "float32 input and output"),
})


@dataclass
class _Context:
    run: object  # cnncli.runs.Run
    quantize: str | None
    representative: np.ndarray | None  # float32 training images for int8 calibration


@dataclass
class ExportResult:
    path: Path
    format: str
    quantize: str | None
    size_bytes: int
    check: dict
    record: dict
    export_json: Path

    def as_json(self) -> dict:
        return {"path": str(self.path), "format": self.format, "quantize": self.quantize,
                "size_bytes": self.size_bytes, "check": self.check, "export_json": str(self.export_json)}


class ExportCheckFailed(CnnError):
    """The exported model does not compute what model.keras computes; the artefact was removed."""


# ---------------------------------------------------------------- writers

def _write_keras(model, path: Path, ctx: _Context) -> None:
    model.save(path)


def _write_saved_model(model, path: Path, ctx: _Context) -> None:
    """A SavedModel for TF Serving: `serving_default` (float32) and `serving_uint8`, both raw pixels.

    Both return {"probabilities": (N, K) float32, "class_index": (N,) int64}.
    """
    import keras
    import tensorflow as tf

    shape = (None, *ctx.run.input_shape)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        probabilities = model(tf.cast(image, tf.float32), training=False)
        return {"probabilities": probabilities, "class_index": tf.argmax(probabilities, axis=-1)}

    archive.add_endpoint("serving_default", tf.function(serve, input_signature=[
        tf.TensorSpec(shape, tf.float32, name="image")]))
    archive.add_endpoint("serving_uint8", tf.function(serve, input_signature=[
        tf.TensorSpec(shape, tf.uint8, name="image")]))
    archive.write_out(str(path), verbose=False)


def _write_tflite(model, path: Path, ctx: _Context) -> None:
    import tensorflow as tf

    options: dict = {}
    if ctx.quantize == "float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    elif ctx.quantize == "int8":
        x = ctx.representative
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "representative_dataset": lambda: ([x[i:i + 1]] for i in range(len(x))),
                   # int8 kernels first; float kernels only for ops that have no int8 version
                   "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                     tf.lite.OpsSet.TFLITE_BUILTINS]}}
    model.export(str(path), format="litert", verbose=False, **options)


def _write_onnx(model, path: Path, ctx: _Context) -> None:
    model.export(str(path), format="onnx", verbose=False)


FORMATS: Registry[Format] = Registry("export format", {
    "keras": Format("keras", _write_keras, ".keras", "model.keras", "Keras 3 native file (float32 copy)"),
    "saved_model": Format("saved_model", _write_saved_model, "", "saved_model",
                          "TensorFlow SavedModel for TF Serving: serving_default and serving_uint8"),
    "tflite": Format("tflite", _write_tflite, ".tflite", "model.tflite",
                     "LiteRT (TensorFlow Lite) flatbuffer; --quantize float16 | int8"),
    "onnx": Format("onnx", _write_onnx, ".onnx", "model.onnx", "ONNX via tf2onnx (optional extra `export`)",
                   needs=("tf2onnx", "onnx")),
})


def list_formats() -> list[str]:
    """The names `cnn export --format` accepts."""
    return FORMATS.names()


# ---------------------------------------------------------------- paths

def default_name(fmt: Format, quantize: str | None) -> str:
    if quantize:
        stem, dot, ext = fmt.default_name.rpartition(".")
        return f"{stem}_{quantize}.{ext}"
    return fmt.default_name


def resolve_output(run_dir: Path, fmt: Format, quantize: str | None, output: str | Path | None) -> Path:
    """Where the artefact goes: --output itself, or inside it when it is a directory, or RUN_DIR/exports/.

    For file formats a path without a suffix is a directory (created if needed);
    for saved_model, --output is the SavedModel directory unless it is an
    existing directory holding something else.
    """
    name = default_name(fmt, quantize)
    if output is None:
        return Path(run_dir) / "exports" / name
    output = Path(output)
    if output.is_dir():
        is_target = fmt.suffix == "" and ((output / "saved_model.pb").exists() or not any(output.iterdir()))
        if not is_target:
            return output / name
    if fmt.suffix and not output.suffix:  # `--output exports`: a directory to create
        return output / name
    if fmt.suffix and output.suffix.lower() != fmt.suffix:
        raise CnnError(f"--output `{output}`: a {fmt.name} export is a `{fmt.suffix}` file; "
                       f"give a path ending in {fmt.suffix}, or a directory")
    if not fmt.suffix and output.exists() and not output.is_dir():
        raise CnnError(f"--output `{output}` is a file; a SavedModel is a directory")
    return output


def _prepare_parent(path: Path) -> None:
    """Create the artefact's directory and prove a file can be written there, before any slow work."""
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise CnnError(f"cannot write `{path}`: `{existing}` is a file, not a directory; choose another --output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CnnError(f"cannot write `{path}`: `{existing}` is not writable; choose another --output")
    probe = _temp_path(path, ".probe")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}; choose another --output") from None


def _temp_path(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _move_into_place(tmp: Path, path: Path) -> None:
    """A file is renamed over the target; a directory replaces an old one with two renames."""
    try:
        if tmp.is_dir() and path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ---------------------------------------------------------------- the job

def export_run(run_dir: str | Path, fmt: str, output: str | Path | None = None,
               quantize: str | None = None, examples: int = CHECK_EXAMPLES) -> ExportResult:
    """Write the run's model as `fmt`, check it against model.keras, and record the figures."""
    from cnncli.runs import open_run

    format_ = FORMATS.get(fmt)
    if quantize is not None:
        if format_.name != "tflite":
            raise CnnError(f"--quantize applies to --format tflite only, not `{format_.name}`")
        quantize = QUANTIZATIONS.get(quantize).name
    _require(format_)
    run = open_run(run_dir)
    run.model_path()  # no model yet: say so before loading data or writing anything
    path = resolve_output(run.path, format_, quantize, output)
    _prepare_parent(path)

    trained = run.load_model()
    model = float32_model(trained)
    data = run.load_data()
    x_check, split = _check_images(data, examples)
    reference = _predict(model, x_check)
    representative = _representative(data) if quantize == "int8" else None
    ctx = _Context(run, quantize, representative)

    tmp = _temp_path(path, format_.suffix)
    _remove(tmp)
    try:
        try:
            with _quiet():
                format_.write(model, tmp, ctx)
        except (OSError, CnnError):
            raise
        except Exception as exc:  # a converter's limits (an op it cannot express), not a bug of ours
            message = str(exc).strip().splitlines()
            raise CnnError(f"the {format_.name} converter failed: {message[0] if message else type(exc).__name__} "
                           "(--debug shows the full report)") from exc
        check = _verify(format_, tmp, quantize, x_check, reference)
    except OSError as exc:
        _remove(tmp)
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise
    check.update(split=split, reference=_reference_note(trained, model, x_check, reference))
    if not check["passed"]:
        _remove(tmp)
        raise ExportCheckFailed(f"{format_.name} export does not match model.keras: {describe_check(check)}; "
                                f"the artefact was not kept (`{path}`)")
    size = _size(tmp)
    _move_into_place(tmp, path)
    record = _record(run, format_, quantize, path, size, check)
    json_path = record_export(path, record)
    return ExportResult(path, format_.name, quantize, size, check, record, json_path)


def _require(fmt: Format) -> None:
    import importlib.util

    missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise CnnError(f"the {fmt.name} export needs {', '.join(missing)}, which is not installed: {EXTRA_HINT}")


def _check_images(data, examples: int) -> tuple[np.ndarray, str]:
    """Up to `examples` real images: the test split, else validation, else training."""
    for split in ("test", "val", "train"):
        x = getattr(data, f"x_{split}")
        if len(x):
            return x[:examples].astype(np.float32), split
    raise DataError("the run's data has no images to check the export with")


def _representative(data) -> np.ndarray:
    x = data.x_train if len(data.x_train) else data.x_test
    pick = np.random.default_rng(REPRESENTATIVE_SEED).permutation(len(x))[:REPRESENTATIVE_EXAMPLES]
    return x[np.sort(pick)].astype(np.float32)


def _predict(model, x: np.ndarray) -> np.ndarray:
    from cnncli.artifacts import BATCH

    return np.concatenate([np.asarray(model(x[i:i + BATCH], training=False), np.float32)
                           for i in range(0, len(x), BATCH)])


def _verify(fmt: Format, path: Path, quantize: str | None, x: np.ndarray, reference: np.ndarray) -> dict:
    """Reload the artefact with its own runtime and compare its probabilities with Keras's."""
    criterion = QUANTIZATIONS.get(quantize).criterion if quantize else FLOAT
    t0 = time.perf_counter()
    with _quiet():
        run, _ = load_runner(fmt.name, path)
        probs = np.concatenate([np.asarray(run(x[i:i + 256]), np.float32) for i in range(0, len(x), 256)])
    seconds = time.perf_counter() - t0
    if probs.shape != reference.shape:
        return {"examples": len(x), "passed": False, "criterion": criterion.describe(),
                "error": f"output shape {probs.shape} differs from model.keras's {reference.shape}"}
    diff = np.abs(probs.astype(np.float64) - reference)
    agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    check = {"examples": len(x), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "class_agreement": agreement, "criterion": criterion.describe(),
             "passed": criterion.passed(float(diff.max()), agreement), "seconds": round(seconds, 3)}
    if fmt.name == "saved_model":  # the uint8 signature must give the same answers as the float one
        check.update(_check_uint8_signature(path, x, probs))
    return check


def _check_uint8_signature(path: Path, x: np.ndarray, probs: np.ndarray) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_uint8"](image=tf.constant(x[:BATCH_UINT8].astype(np.uint8)))
    same = float(np.abs(out["probabilities"].numpy() - probs[:BATCH_UINT8]).max())
    index_ok = bool(np.array_equal(out["class_index"].numpy(), probs[:BATCH_UINT8].argmax(1)))
    extra = {"uint8_signature_max_abs_diff": same, "class_index_matches": index_ok}
    if same > FLOAT.max_abs_diff or not index_ok:
        extra["passed"] = False
    return extra


BATCH_UINT8 = 256  # the uint8 signature is the same graph behind a cast: one batch proves it


def _reference_note(trained, model, x: np.ndarray, reference: np.ndarray) -> dict:
    """What 'model.keras' means in the check; for mixed-precision runs, how far bfloat16 was from float32."""
    precision = trained_precision(trained)
    note = {"model": "model.keras", "trained_precision": precision, "computed_in": "float32"}
    if model is not trained:
        as_trained = _predict(trained, x)
        note["as_trained_max_abs_diff"] = float(np.abs(as_trained.astype(np.float64) - reference).max())
    return note


def _input_spec(run, fmt: Format) -> dict:
    spec = {"name": "image", "shape": [None, *run.input_shape], "dtype": "float32", "range": [0, 255],
            "layout": "NHWC", "preprocessing": "none: raw pixels; scaling is inside the model"}
    if fmt.name == "saved_model":
        spec["signatures"] = {"serving_default": "float32", "serving_uint8": "uint8"}
    return spec


def _record(run, fmt: Format, quantize: str | None, path: Path, size: int, check: dict) -> dict:
    import keras
    import tensorflow as tf

    k = len(run.class_names)
    return {
        "format": fmt.name,
        "quantize": quantize,
        "artifact": path.name,
        "run_dir": str(run.path),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class_names": run.class_names,
        "input": _input_spec(run, fmt),
        "output": {"name": "probabilities", "shape": [None, k], "dtype": "float32"}
        | ({"class_index": {"shape": [None], "dtype": "int64"}} if fmt.name == "saved_model" else {}),
        "size_bytes": size,
        "check": check,
        "versions": {"cnncli": __version__, "tensorflow": tf.__version__, "keras": keras.__version__},
    }


def describe_check(check: dict) -> str:
    """One line of figures: `max |Δp| 2.4e-07, mean 3.1e-09, top class agrees on 100.0% of 1,000 test images`."""
    if "error" in check:
        return check["error"]
    text = (f"max |Δp| {check['max_abs_diff']:.2e}, mean {check['mean_abs_diff']:.2e}, top class agrees on "
            f"{check['class_agreement']:.1%} of {check['examples']:,} {check.get('split', '')} images".replace("  ", " "))
    return f"{text} (required: {check['criterion']})"


@contextlib.contextmanager
def _quiet():
    """The converters print progress and deprecation notes to stdout; --json owns stdout."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        yield
