"""`cnn benchmark`: every export format of a run measured side by side.

Each variant in `VARIANTS` (a `cnn export` format, with its quantization for
tflite) is written by `export.write_model` into RUN_DIR/benchmark/ (the run's
own files are never touched), read back with its own runtime
(`artifacts.load_runner`, as the export check reads it) and measured: file
size, load time, batch-1 latency (p50/p99 over `repetitions` calls), batch-32
images/s, accuracy on the run's test split, and agreement with model.keras
(top-1 share and max |Δp|, on the same images). A variant whose optional
extra is missing is a skipped row with its install line. Unlike `cnn export`,
nothing is refused for its figures: an int8 model that agrees on 97% of the
images is a row that says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import fileio
from cnncli.deploy.artifacts import EXTRA_HINT, float32_model, load_runner
from cnncli.deploy.export import FORMATS, artifact_size, default_name, missing_modules, write_model
from cnncli.deploy.export_check import check_images, quiet, reference_note
from cnncli.errors import DataError, UsageError
from cnncli.model.predict_loop import in_batches, keras_predict
from cnncli.registry import Registry

FOLDER = "benchmark"  # inside the run directory: the artefacts, benchmark.json and the plot
EXAMPLES = 1000  # test images for accuracy and agreement: resolves 0.1%, as the export check does
REPETITIONS = 50  # batch-1 calls timed per format: p99 of 50 is the second-slowest, enough to see a tail
THROUGHPUT_BATCH = 32  # images per call for the images/s figure
THROUGHPUT_CALLS = 10  # batch-32 calls timed per format (after one warm-up)
AGREEMENT_GOAL = 0.99  # below it, the table says by how many points a quantized model falls short


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: an export format and, for tflite, its quantization."""

    name: str
    format: str  # a name in export.FORMATS
    quantize: str | None = None


# Rows in this order: the reference first, then each format as `cnn export` writes it.
VARIANTS: Registry[Variant] = Registry(
    "benchmark format",
    {
        v.name: v
        for v in (
            Variant("keras", "keras"),
            Variant("saved_model", "saved_model"),
            Variant("tflite", "tflite"),
            Variant("tflite_float16", "tflite", "float16"),
            Variant("tflite_int8", "tflite", "int8"),
            Variant("onnx", "onnx"),
        )
    },
)
ORDER = ["keras", "saved_model", "tflite", "tflite_float16", "tflite_int8", "onnx"]


def list_variants() -> list[str]:
    """The names `cnn benchmark --formats` accepts, in the order rows are shown."""
    return list(ORDER)


def parse_formats(text: str | None) -> list[Variant]:
    """`--formats a,b` as variants (every one when None); an unknown name is a usage error listing the valid."""
    if text is None:
        return [VARIANTS.get(name) for name in ORDER]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError(f"no format given; choose from: {', '.join(ORDER)}", "--formats")
    chosen = {VARIANTS.get(name, "--formats").name for name in names}
    return [VARIANTS.get(name) for name in ORDER if name in chosen]


# ---------------------------------------------------------------- the job


def benchmark_run(
    run_dir: str | Path,
    formats: str | None = None,
    examples: int = EXAMPLES,
    repetitions: int = REPETITIONS,
    plot: str | Path | None = None,
) -> dict:
    """Measure each variant of the run's model; the report `--json` prints (also written to benchmark.json)."""
    from cnncli.deploy.runs import open_run

    variants = parse_formats(formats)
    if examples < 1:
        raise UsageError(f"must be at least 1, not {examples}", "--examples")
    if repetitions < 1:
        raise UsageError(f"must be at least 1, not {repetitions}", "--repetitions")
    run = open_run(run_dir)
    run.model_path()  # an unfinished run says so before any data is read
    trained = run.load_model()
    model = float32_model(trained)  # what every export computes, so the reference for all of them
    data = run.load_data()
    x, split = check_images(data, examples)
    y = _labels(getattr(data, f"y_{split}")[: len(x)])
    reference = keras_predict(model, x)
    folder = run.path / FOLDER
    rows = []
    for variant in variants:
        missing = missing_modules(FORMATS.get(variant.format))
        if missing:
            reason = f"needs {', '.join(missing)}: {EXTRA_HINT}"
            rows.append({"format": variant.name, "status": "skipped", "reason": reason})
            continue
        path = folder / default_name(FORMATS.get(variant.format), variant.quantize)
        rows.append(measure(run, model, data, variant, path, x, y, reference, repetitions))
    report = {
        "run_dir": run.path,
        "split": split,
        "examples": len(x),
        "repetitions": repetitions,
        "reference": reference_note(trained, model, x, reference),
        "formats": rows,
    }
    measured = [r for r in rows if r["status"] == "ok"]
    if measured:
        report["plot"] = plot_accuracy_latency(measured, Path(plot) if plot else folder / "benchmark.png")
    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_json(folder / "benchmark.json", report)
    return report


def measure(
    run: Any,
    model: Any,
    data: Any,
    variant: Variant,
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    reference: np.ndarray,
    repetitions: int,
) -> dict:
    """Write `variant` at `path` (replacing an earlier benchmark's copy) and measure it."""
    format_ = FORMATS.get(variant.format)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.replacing(path, format_.suffix) as tmp:
        write_model(run, model, data, format_, variant.quantize, tmp)
    t0 = time.perf_counter()
    with quiet():
        predict, _ = load_runner(variant.format, path)
    load_seconds = time.perf_counter() - t0
    with quiet():
        probs = in_batches(predict, x, reference.shape[-1])
        latencies = _latencies(predict, x, repetitions)
        images_per_second = _throughput(predict, x)
    agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    row: dict[str, Any] = {
        "format": variant.name,
        "status": "ok",
        "export_format": variant.format,
        "quantize": variant.quantize,
        "path": path,
        "size_bytes": artifact_size(path),
        "load_seconds": round(load_seconds, 4),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)) * 1000, 3),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)) * 1000, 3),
        "images_per_second": round(images_per_second, 1),
        "accuracy": float(np.mean(probs.argmax(1) == y)),
        "agreement": agreement,
        "max_abs_diff": float(np.abs(probs.astype(np.float64) - reference).max()),
    }
    if agreement < AGREEMENT_GOAL:
        row["agreement_shortfall"] = round(AGREEMENT_GOAL - agreement, 6)
    return row


def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim > 1:  # one-hot labels
        return y.argmax(-1)
    return y.astype(np.int64)


def _latencies(predict, x: np.ndarray, repetitions: int) -> np.ndarray:
    """Seconds of `repetitions` batch-1 calls, after one warm-up call (graph tracing, allocation)."""
    predict(x[:1])
    seconds = []
    for i in range(repetitions):
        one = x[i % len(x)][None]
        t0 = time.perf_counter()
        predict(one)
        seconds.append(time.perf_counter() - t0)
    if not seconds:
        raise DataError("no latency measured")
    return np.array(seconds)


def _throughput(predict, x: np.ndarray) -> float:
    """Images per second over `THROUGHPUT_CALLS` calls of `THROUGHPUT_BATCH` images (cycled if fewer)."""
    batch = np.resize(x, (THROUGHPUT_BATCH, *x.shape[1:]))  # repeats the images when there are fewer than 32
    predict(batch)
    t0 = time.perf_counter()
    for _ in range(THROUGHPUT_CALLS):
        predict(batch)
    return THROUGHPUT_BATCH * THROUGHPUT_CALLS / (time.perf_counter() - t0)


# ---------------------------------------------------------------- words and pictures


def describe_agreement(row: dict) -> str:
    """`100.0%`, or `97.2% (1.8 pt under 99%)` for a model that changes more decisions than the goal allows."""
    text = f"{row['agreement']:.1%}"
    if "agreement_shortfall" in row:
        text += f" ({row['agreement_shortfall'] * 100:.1f} pt under {AGREEMENT_GOAL:.0%})"
    return text


PLOT_SIZE = (7.0, 4.5)  # inches: 700×450 px, room for six labelled points


def plot_accuracy_latency(rows: list[dict], path: Path) -> Path:
    """Test accuracy against batch-1 p50 latency, one labelled point per format, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in rows:
        ax.scatter(row["latency_ms_p50"], row["accuracy"], s=40)
        ax.annotate(row["format"], (row["latency_ms_p50"], row["accuracy"]), xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")  # Keras's eager call and LiteRT differ by tens of times
    ax.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    ax.set_xlabel("batch-1 latency, p50 (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against latency, per export format")
    ax.grid(True, alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.replacing(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
