"""cnn benchmark: one row per installed format with sane figures; the run's own files untouched; clean errors.

A tiny shapes run is trained once for the module, and benchmarked once with
every format (few images, few repetitions); the other tests reuse that report
or ask for a single format.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from helpers import small_config
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.deploy import benchmark as bench
from cnncli.deploy.export import FORMATS

runner = CliRunner()
FAST = ["--examples", "32", "--repetitions", "5"]  # enough for every figure, seconds per format
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _installed(name: str) -> bool:
    needs = FORMATS.get(bench.VARIANTS.get(name).format).needs
    return all(importlib.util.find_spec(m) is not None for m in needs)


def _fingerprint(run_dir: Path) -> dict[str, str]:
    """Every file of the run outside benchmark/, by content."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and bench.FOLDER not in p.relative_to(run_dir).parts
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter

    root = tmp_path_factory.mktemp("benchmark")
    config = root / "tiny.yaml"
    config.write_text(small_config())
    return run_training(TrainOptions(config=config, output=root / "runs", name="tiny"), Reporter()).run_dir


@pytest.fixture(scope="module")
def full(run_dir, tmp_path_factory) -> tuple[dict, Path, dict, dict]:
    """(report, PNG path, run files before, run files after) of one benchmark of every format."""
    before = _fingerprint(run_dir)
    png = tmp_path_factory.mktemp("plot") / "accuracy.png"
    result = runner.invoke(app, ["benchmark", str(run_dir), "--json", "--output", str(png), *FAST])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), png, before, _fingerprint(run_dir)


def test_every_installed_format_has_a_measured_row(full):
    report, _, _, _ = full
    rows = {row["format"]: row for row in report["formats"]}
    assert list(rows) == bench.list_variants()
    assert report["examples"] == 32 and report["repetitions"] == 5 and report["split"] == "test"
    for name, row in rows.items():
        if not _installed(name):
            assert row["status"] == "skipped"
            continue
        assert row["status"] == "ok", row
        assert row["size_bytes"] > 0
        assert row["load_seconds"] >= 0
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert row["images_per_second"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 <= row["agreement"] <= 1.0
        assert Path(row["path"]).exists()
    assert rows["keras"]["agreement"] == 1.0
    assert rows["keras"]["max_abs_diff"] == 0.0
    int8 = rows["tflite_int8"]
    assert ("agreement_shortfall" in int8) == (int8["agreement"] < 0.99)


def test_the_plot_is_a_png_and_the_run_is_unchanged(full, run_dir):
    report, png, before, after = full
    assert Path(report["plot"]) == png
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert after == before
    saved = json.loads((run_dir / bench.FOLDER / "benchmark.json").read_text())
    assert [r["format"] for r in saved["formats"]] == bench.list_variants()


def test_one_format_gives_one_row_and_the_table_shows_agreement(run_dir):
    result = runner.invoke(app, ["benchmark", str(run_dir), "--formats", "tflite-int8", *FAST])
    assert result.exit_code == 0, result.output
    assert "tflite_int8" in result.stdout and "keras " not in result.stdout
    result = runner.invoke(app, ["benchmark", str(run_dir), "--formats", "tflite_int8", "--json", *FAST])
    rows = json.loads(result.stdout)["formats"]
    assert [r["format"] for r in rows] == ["tflite_int8"]
    assert (run_dir / bench.FOLDER / "benchmark.png").read_bytes()[:8] == PNG_MAGIC  # the default plot


def test_unknown_format_is_a_usage_error_listing_the_names(run_dir):
    result = runner.invoke(app, ["benchmark", str(run_dir), "--formats", "tflite,tflite_int4"])
    assert result.exit_code == 2
    message = " ".join(result.stderr.replace("│", " ").split())
    assert "unknown benchmark format `tflite_int4`" in message
    assert "keras, onnx, saved_model, tflite, tflite_float16, tflite_int8" in message


def test_a_missing_extra_is_a_skipped_row_with_the_install_line(run_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    result = runner.invoke(app, ["benchmark", str(run_dir), "--formats", "onnx", "--json", *FAST])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["formats"]
    assert set(row) == {"format", "status", "reason"} and (row["format"], row["status"]) == ("onnx", "skipped")
    assert "onnxruntime" in row["reason"] and row["reason"].endswith(": pip install 'cnncli[export]'")
    text = runner.invoke(app, ["benchmark", str(run_dir), "--formats", "onnx", *FAST]).stdout
    assert f"onnx skipped: {row['reason']}" in " ".join(text.split())


def test_not_a_run_and_an_unfinished_run_are_one_error_line(tmp_path, run_dir):
    result = runner.invoke(app, ["benchmark", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "is not a directory" in result.stderr
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.yaml", "run.json"):
        (unfinished / name).write_bytes((run_dir / name).read_bytes())
    result = runner.invoke(app, ["benchmark", str(unfinished)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "has no model.keras yet" in result.stderr


def test_the_help_names_the_formats_and_defaults_of_the_library():
    from cnncli.commands import serving

    assert serving.BENCHMARK_FORMATS.split(", ") == bench.list_variants()
    assert (serving.BENCHMARK_EXAMPLES, serving.BENCHMARK_REPETITIONS) == (bench.EXAMPLES, bench.REPETITIONS)
