"""`cnn export`: a run's model written in a deployable format, then proven to compute the same thing.

Formats live in `FORMATS` (see `list_formats()`). Every export is written to a
temporary name beside its target, read back with that format's own runtime
and compared with model.keras on up to 1,000 real images of the run's test
split (`cnncli.deploy.export_check`). Only an artefact that passes its format's criterion
is renamed into place; a failing one is deleted. The figures of the check go
into export.json beside the artefact, with the class names and input spec.

Every export computes in float32, whatever policy the model trained under
(see `artifacts.float32_model`), and takes raw pixels 0..255: the scaling is
the model's first layer, so no preprocessing travels separately.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli import __version__, faults, fileio
from cnncli.deploy.artifacts import EXTRA_HINT, export_json_path, float32_model, record_export
from cnncli.deploy.export_check import (
    CHECK_EXAMPLES,
    FLOAT,
    FLOAT16,
    INT8,
    Criterion,
    check_images,
    compare,
    describe_check,
    quiet,
    reference_note,
)
from cnncli.errors import CnnError, UsageError
from cnncli.model.predict_loop import keras_predict
from cnncli.registry import Registry

if TYPE_CHECKING:
    from cnncli.deploy.runs import Run

REPRESENTATIVE_EXAMPLES = 200  # training images int8 calibration sees; TFLite's guide suggests 100-500
REPRESENTATIVE_SEED = 0  # calibration images are the same on every export of a run

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "Criterion",
    "ExportCheckFailed",
    "ExportResult",
    "artifact_size",
    "default_name",
    "describe_check",
    "export_run",
    "list_formats",
    "missing_modules",
    "resolve_output",
    "write_model",
]


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


QUANTIZATIONS: Registry[Quantization] = Registry(
    "quantization",
    {
        "float16": Quantization("float16", FLOAT16, "weights stored as float16 (half the size), computed in float32"),
        "int8": Quantization(
            "int8", INT8, "weights and activations int8, calibrated on training images; float32 input and output"
        ),
    },
)


@dataclass
class _Context:
    run: Run
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
        """The export as `--json` prints it."""
        return {
            "path": Path(self.path),
            "format": self.format,
            "quantize": self.quantize,
            "size_bytes": self.size_bytes,
            "check": self.check,
            "export_json": Path(self.export_json),
        }


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

    archive.add_endpoint(
        "serving_default", tf.function(serve, input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    )
    archive.add_endpoint(
        "serving_uint8", tf.function(serve, input_signature=[tf.TensorSpec(shape, tf.uint8, name="image")])
    )
    archive.write_out(str(path), verbose=False)


def _write_tflite(model, path: Path, ctx: _Context) -> None:
    import tensorflow as tf

    options: dict = {}
    if ctx.quantize == "float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    elif ctx.quantize == "int8":
        x = ctx.representative
        assert x is not None  # int8 calibration images are read before the conversion
        options = {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": lambda: ([x[i : i + 1]] for i in range(len(x))),
            # int8 kernels first; float kernels only for ops that have no int8 version
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]},
        }
    model.export(str(path), format="litert", verbose=False, **options)


def _write_onnx(model, path: Path, ctx: _Context) -> None:
    model.export(str(path), format="onnx", verbose=False)


FORMATS: Registry[Format] = Registry(
    "export format",
    {
        "keras": Format("keras", _write_keras, ".keras", "model.keras", "Keras 3 native file (float32 copy)"),
        "saved_model": Format(
            "saved_model",
            _write_saved_model,
            "",
            "saved_model",
            "TensorFlow SavedModel for TF Serving: serving_default and serving_uint8",
        ),
        "tflite": Format(
            "tflite",
            _write_tflite,
            ".tflite",
            "model.tflite",
            "LiteRT (TensorFlow Lite) flatbuffer; --quantize float16 | int8",
        ),
        "onnx": Format(
            "onnx",
            _write_onnx,
            ".onnx",
            "model.onnx",
            "ONNX via tf2onnx (optional extra `export`)",
            needs=("tf2onnx", "onnx", "onnxruntime"),
        ),  # onnxruntime: the check runs the file
    },
)


def list_formats() -> list[str]:
    """The names `cnn export --format` accepts."""
    return FORMATS.names()


# ---------------------------------------------------------------- paths


def default_name(fmt: Format, quantize: str | None) -> str:
    """The artefact's file name in a directory: `model.tflite`, `model_int8.tflite`, `saved_model`."""
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
        raise UsageError(
            f"`{output}`: a {fmt.name} export is a `{fmt.suffix}` file; "
            f"give a path ending in {fmt.suffix}, or a directory",
            "--output",
        )
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
    probe = fileio.temp_path(path, ".probe")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}; choose another --output") from None


def _occupied(path: Path) -> bool:
    """Something is at `path` that an export would replace (an empty folder holds nothing to lose)."""
    return path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir()))


def artifact_size(path: Path) -> int:
    """Bytes of an artefact: the file, or every file of a SavedModel directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ---------------------------------------------------------------- the job


def export_run(
    run_dir: str | Path,
    fmt: str,
    output: str | Path | None = None,
    quantize: str | None = None,
    examples: int = CHECK_EXAMPLES,
    force: bool = False,
) -> ExportResult:
    """Write the run's model as `fmt`, check it against model.keras, and record the figures.

    An artefact already at the path is replaced only with `force`."""
    from cnncli.deploy.runs import open_run

    format_ = FORMATS.get(fmt, "--format")
    if quantize is not None:
        if format_.name != "tflite":
            raise UsageError(f"applies to --format tflite only, not `{format_.name}`", "--quantize")
        quantize = QUANTIZATIONS.get(quantize, "--quantize").name
    _require(format_)
    run = open_run(run_dir)
    run.model_path()  # no model yet: say so before loading data or writing anything
    path = resolve_output(run.path, format_, quantize, output)
    if not force and _occupied(path):
        raise CnnError(f"`{path}` already exists; add --force to replace it, or choose another --output")
    _prepare_parent(path)

    trained = run.load_model()
    model = float32_model(trained)
    data = run.load_data()
    x_check, split = check_images(data, examples)
    reference = keras_predict(model, x_check)

    for target in (path, export_json_path(path)):
        fileio.remove_stale_temps(target)  # what a killed export left beside it
    with fileio.replacing(path, format_.suffix) as tmp:  # kept only when it passes the check
        write_model(run, model, data, format_, quantize, tmp)
        faults.point("export_written")
        criterion = QUANTIZATIONS.get(quantize).criterion if quantize else FLOAT
        check = compare(format_.name, tmp, criterion, x_check, reference)
        check.update(split=split, reference=reference_note(trained, model, x_check, reference))
        if not check["passed"]:
            raise ExportCheckFailed(
                f"{format_.name} export does not match model.keras: {describe_check(check)}; "
                f"the artefact was not kept (`{path}`)"
            )
        size = artifact_size(tmp)
        faults.point("export_checked")
    record = _record(run, format_, quantize, path, size, check)
    json_path = record_export(path, record)
    return ExportResult(path, format_.name, quantize, size, check, record, json_path)


def write_model(run: Run, model: Any, data: Any, format_: Format, quantize: str | None, path: Path) -> None:
    """Write the float32 `model` as `format_` at `path`, unchecked; a converter's failure is a CnnError.

    int8 calibrates on training images of `data`. `cnn export` checks what this wrote
    before keeping it; `cnn benchmark` measures it whatever its figures.
    """
    representative = _representative(data) if quantize == "int8" else None
    try:
        with quiet():
            format_.write(model, path, _Context(run, quantize, representative))
    except (OSError, CnnError):
        raise
    except Exception as exc:  # a converter's limits (an op it cannot express), not a bug of ours
        message = str(exc).strip().splitlines()
        raise CnnError(
            f"the {format_.name} converter failed: {message[0] if message else type(exc).__name__} "
            "(--debug shows the full report)"
        ) from exc


def missing_modules(fmt: Format) -> list[str]:
    """The optional modules `fmt` needs that are not installed (the `export` extra brings them)."""
    import importlib.util

    return [m for m in fmt.needs if importlib.util.find_spec(m) is None]


def _require(fmt: Format) -> None:
    missing = missing_modules(fmt)
    if missing:
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise CnnError(
            f"the {fmt.name} export needs {names}, which {'are' if len(missing) > 1 else 'is'} "
            f"not installed: {EXTRA_HINT}"
        )


def _representative(data) -> np.ndarray:
    x = data.x_train if len(data.x_train) else data.x_test
    pick = np.random.default_rng(REPRESENTATIVE_SEED).permutation(len(x))[:REPRESENTATIVE_EXAMPLES]
    return x[np.sort(pick)].astype(np.float32)


def _input_spec(run, fmt: Format) -> dict:
    spec: dict[str, Any] = {
        "name": "image",
        "shape": [None, *run.input_shape],
        "dtype": "float32",
        "range": [0, 255],
        "layout": "NHWC",
        "preprocessing": "none: raw pixels; scaling is inside the model",
    }
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
