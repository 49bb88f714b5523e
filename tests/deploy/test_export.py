"""cnn export: every format reloads outside cnncli and matches model.keras; failures are clean.

The Fashion-MNIST LeNet run (tests/trained_runs.py) is trained once; each
export is made once and shared with test_predict.py. The reference is always
model.keras loaded by plain Keras, and the artefacts are read back with the
format's own runtime (tf.saved_model, LiteRT, onnxruntime), never cnncli.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import trained_runs as tr
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.deploy.export import FORMATS, QUANTIZATIONS, Criterion, export_run, list_formats, resolve_output
from cnncli.errors import CnnError, UsageError

runner = CliRunner()
EXTRA = "pip install 'cnncli[export]'"


# ---------------------------------------------------------------- readers that know nothing of cnncli

def _litert_interpreter():
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    import tensorflow as tf

    if not hasattr(tf.lite, "Interpreter"):
        pytest.skip("neither ai-edge-litert nor tf.lite.Interpreter is importable (pip install ai-edge-litert)")
    return tf.lite.Interpreter


def _tflite_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = _litert_interpreter()(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _saved_model_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return serve(image=tf.constant(x, tf.float32))["probabilities"].numpy()


def _onnx_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cnncli[export]')")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def _keras_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    return keras.models.load_model(path, compile=False).predict(x.astype(np.float32), batch_size=250, verbose=0)


OUTSIDE = {"keras": _keras_probabilities, "saved_model": _saved_model_probabilities,
           "tflite": _tflite_probabilities, "onnx": _onnx_probabilities}
NEEDS = {"onnx": ("tf2onnx", "onnxruntime")}  # the optional extra; the other formats need only TensorFlow


def _skip_without_extra(fmt: str) -> None:
    for module in NEEDS.get(fmt, ()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed ({EXTRA})")


# ---------------------------------------------------------------- the registry

def test_list_formats_is_the_registry():
    assert list_formats() == ["keras", "onnx", "saved_model", "tflite"]
    assert set(OUTSIDE) == set(list_formats()), "a new format needs an outside-cnncli reader in this test"


def test_unknown_format_lists_formats_and_suggests():
    with pytest.raises(CnnError, match=r"unknown export format `tflight` \(did you mean `tflite`\?\); "
                                       r"valid: keras, onnx, saved_model, tflite"):
        export_run("/nonexistent", "tflight")


def test_quantize_is_for_tflite_only_and_named():
    with pytest.raises(UsageError, match="applies to --format tflite only, not `onnx`"):
        export_run("/nonexistent", "onnx", quantize="int8")
    with pytest.raises(CnnError, match=r"unknown quantization `int4` \(did you mean `int8`\?\); valid: float16, int8"):
        export_run("/nonexistent", "tflite", quantize="int4")
    assert QUANTIZATIONS.names() == ["float16", "int8"]


def test_output_paths(tmp_path):
    tflite, saved = FORMATS.get("tflite"), FORMATS.get("saved_model")
    assert resolve_output(tmp_path, tflite, None, None) == tmp_path / "exports" / "model.tflite"
    assert resolve_output(tmp_path, tflite, "int8", None) == tmp_path / "exports" / "model_int8.tflite"
    assert resolve_output(tmp_path, tflite, None, tmp_path) == tmp_path / "model.tflite"  # existing directory
    assert resolve_output(tmp_path, tflite, None, tmp_path / "out") == tmp_path / "out" / "model.tflite"
    assert resolve_output(tmp_path, tflite, None, tmp_path / "m.tflite") == tmp_path / "m.tflite"
    with pytest.raises(CnnError, match=r"a tflite export is a `\.tflite` file; give a path ending in \.tflite"):
        resolve_output(tmp_path, tflite, None, tmp_path / "m.onnx")
    assert resolve_output(tmp_path, saved, None, tmp_path / "sm") == tmp_path / "sm"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    assert resolve_output(tmp_path, saved, None, tmp_path / "busy") == tmp_path / "busy" / "saved_model"


def test_missing_extra_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    result = runner.invoke(app, ["export", "/nonexistent", "--format", "onnx"])
    assert result.exit_code == 1
    assert result.stderr == f"Error: the onnx export needs tf2onnx, which is not installed: {EXTRA}\n"


# ---------------------------------------------------------------- round trips, one per format

@pytest.mark.parametrize("fmt", list_formats())
def test_export_reloads_outside_cnncli_and_matches_model_keras(fmt):
    _skip_without_extra(fmt)
    result = tr.fashion_export(fmt)
    x, _ = tr.fashion_test_images()
    reference = tr.fashion_keras_probabilities()
    probs = OUTSIDE[fmt](result.path, x.astype(np.float32))
    assert probs.shape == reference.shape == (1000, 10)
    assert np.abs(probs - reference).max() < 1e-4
    assert result.check["passed"] and result.check["max_abs_diff"] < 1e-4
    assert result.check["examples"] == 1000 and result.check["split"] == "test"


@pytest.mark.parametrize("fmt", list_formats())
def test_export_json_holds_check_class_names_and_input_spec(fmt):
    _skip_without_extra(fmt)
    result = tr.fashion_export(fmt)
    doc = json.loads((result.path.parent / "export.json").read_text())
    record = doc["artifacts"][result.path.name]
    assert record["format"] == fmt
    assert record["class_names"][:2] == ["T-shirt/top", "Trouser"] and len(record["class_names"]) == 10
    assert record["input"]["shape"] == [None, 28, 28, 1]
    assert record["input"]["dtype"] == "float32"
    assert record["check"] == result.check
    assert record["check"]["criterion"] == "max |Δp| ≤ 0.0001"
    assert record["size_bytes"] == result.size_bytes > 0
    leftovers = [p.name for p in result.path.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_saved_model_serving_signatures_take_raw_float_and_uint8():
    import tensorflow as tf

    path = tr.fashion_export("saved_model").path
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "serving_uint8"}
    x, _ = tr.fashion_test_images()
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        fn = loaded.signatures[name]
        spec = fn.structured_input_signature[1]["image"]
        assert (spec.dtype, spec.shape.as_list()) == (dtype, [None, 28, 28, 1])
        out = fn(image=tf.constant(x[:50], dtype))
        assert set(out) == {"probabilities", "class_index"}
        assert out["class_index"].dtype == tf.int64
        np.testing.assert_array_equal(out["class_index"].numpy(), out["probabilities"].numpy().argmax(1))
        np.testing.assert_allclose(out["probabilities"].numpy(), tr.fashion_keras_probabilities()[:50], atol=1e-4)


def test_int8_tflite_agrees_on_98_percent_and_is_3x_smaller():
    int8, float32 = tr.fashion_export("tflite", "int8"), tr.fashion_export("tflite")
    x, _ = tr.fashion_test_images()
    probs = _tflite_probabilities(int8.path, x.astype(np.float32))
    agreement = np.mean(probs.argmax(1) == tr.fashion_keras_probabilities().argmax(1))
    assert agreement >= 0.98
    assert int8.check["class_agreement"] == pytest.approx(agreement)
    assert int8.check["criterion"] == "top-class agreement ≥ 98%"
    assert float32.path.stat().st_size >= 3 * int8.path.stat().st_size
    assert int8.path.name == "model_int8.tflite"


def test_float16_tflite_within_its_stated_bound_and_half_the_size():
    half, full = tr.fashion_export("tflite", "float16"), tr.fashion_export("tflite")
    x, _ = tr.fashion_test_images()
    probs = _tflite_probabilities(half.path, x.astype(np.float32))
    assert np.abs(probs - tr.fashion_keras_probabilities()).max() <= 1e-2
    assert half.check["criterion"] == "max |Δp| ≤ 0.01"
    assert full.path.stat().st_size / half.path.stat().st_size > 1.9


def test_cli_export_prints_the_check_and_json_is_one_document(tmp_path):
    result = runner.invoke(app, ["export", str(tr.fashion_run()), "--format", "keras", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert "checked keras: max |Δp| 0.00e+00, mean 0.00e+00, top class agrees on 100.0% of 1,000 test images " \
           "(required: max |Δp| ≤ 0.0001)" in result.stdout
    assert f"wrote {tmp_path / 'model.keras'} (" in result.stdout
    result = runner.invoke(app, ["export", str(tr.fashion_run()), "--format", "keras", "--output",
                                 str(tmp_path / "again.keras"), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["path"] == str(tmp_path / "again.keras") and doc["check"]["passed"] is True
    names = json.loads((tmp_path / "export.json").read_text())["artifacts"]
    assert set(names) == {"model.keras", "again.keras"}  # two artefacts, one export.json, both recorded


# ---------------------------------------------------------------- failures

def test_failed_check_exits_1_and_removes_the_artefact(tmp_path, monkeypatch):
    import cnncli.deploy.export

    monkeypatch.setattr(cnncli.deploy.export, "FLOAT", Criterion(max_abs_diff=-1.0))  # nothing can pass
    result = runner.invoke(app, ["export", str(tr.fashion_run()), "--format", "tflite", "--output",
                                 str(tmp_path / "bad.tflite")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: tflite export does not match model.keras: max |Δp| ")
    assert f"the artefact was not kept (`{tmp_path / 'bad.tflite'}`)" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the artefact, its temporary, nor export.json


def test_run_without_model_keras(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "run.json"):
        (run / name).write_bytes((tr.fashion_run() / name).read_bytes())
    result = runner.invoke(app, ["export", str(run), "--format", "tflite", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: `{run}` has no model.keras yet (run status: ")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_output_under_a_file_is_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    target = blocker / "model.tflite"
    result = runner.invoke(app, ["export", str(tr.fashion_run()), "--format", "tflite", "--output", str(target)])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: cannot write `{target}`: `{blocker}` is a file, not a directory; "
                             "choose another --output\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_output_in_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = runner.invoke(app, ["export", str(tr.fashion_run()), "--format", "keras", "--output", str(locked)])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: cannot write `{locked / 'model.keras'}`: `{locked}` is not writable; "
                             "choose another --output\n")


def test_output_in_proc_is_unwritable_even_for_root():
    result = runner.invoke(app, ["export", str(tr.fashion_run()), "--format", "keras", "--output",
                                 "/proc/cnncli-test/model.keras"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot write `/proc/cnncli-test/model.keras`: ")
    assert "Traceback" not in result.stderr
