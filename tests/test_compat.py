"""cnncli/compat.py: every Keras internal is found on the tested Keras, and each has a working fallback."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import small_config
from typer.testing import CliRunner

from cnncli import compat
from cnncli.cli import app

TINY = small_config({  # a Dropout layer: its RNG state is what the compat checks look at
    "seed": 3, "data.validation_split": None,
    "data.shapes": {"image_size": 12, "train_examples": 64, "test_examples": 16},
    "model.layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                     {"type": "Dropout", "rate": 0.5}, {"type": "Flatten"},
                     {"type": "Dense", "units": 2, "activation": "softmax"}],
    "train": {"batch_size": 16, "optimizer": {"type": "Adam", "learning_rate": 0.01}},
})


@pytest.fixture(autouse=True)
def fresh_checks():
    compat.reset()
    yield
    compat.reset()  # the next test looks again, without this test's simulated Keras


def _op_types(concrete) -> set[str]:
    """Every op type in a traced function, the functions it calls (loops, conditions) included."""
    graph = concrete.graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for fn in graph.library.function:
        ops.update(node.op for node in fn.node_def)
    return ops


def _traced_step(optimizer_name: str, **kwargs):
    """(op types of one traced training step, the fused kernel's name or None)."""
    import keras
    import tensorflow as tf

    from cnncli.train.fused import use_fused_update

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = getattr(keras.optimizers, optimizer_name)(**kwargs)
    optimizer.build(model.trainable_variables)
    kernel = use_fused_update(optimizer)
    x, y = tf.ones((8, 4)), tf.zeros((8,), tf.int32)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    return _op_types(step.get_concrete_function(x, y)), kernel


def test_the_tested_keras_has_every_internal():
    assert compat.check() == {name: True for name in ("fast_dropout", "fused_optimizer", "variable_index",
                                                       "weights_hint", "inbound_nodes", "snake_case",
                                                       "coordination", "xplane", "transform_labels",
                                                       "determinism_off")}


@pytest.mark.parametrize("name, kwargs, kernel", [("Adam", {}, "ResourceApplyAdam"),
                                                   ("SGD", {}, "ResourceApplyGradientDescent"),
                                                   ("SGD", {"momentum": 0.9}, "ResourceApplyKerasMomentum")])
def test_the_fused_kernel_is_in_the_traced_graph(name, kwargs, kernel):
    ops, used = _traced_step(name, **kwargs)
    assert used == kernel
    assert kernel in ops
    assert "AssignSubVariableOp" not in ops  # Keras's own element-wise update is not traced beside it


def test_a_moved_fused_kernel_leaves_keras_update_in_the_graph(monkeypatch):
    import tensorflow as tf

    monkeypatch.delattr(tf.raw_ops, "ResourceApplyAdam")
    ops, used = _traced_step("Adam")
    assert used is None
    assert not any(op.startswith("ResourceApply") for op in ops)
    assert "AssignSubVariableOp" in ops


def test_moved_slots_leave_keras_update(monkeypatch):
    import keras

    from cnncli.train.fused import use_fused_update

    optimizer = keras.optimizers.Adam()
    optimizer.build([keras.Variable(np.zeros(3, "float32"))])
    monkeypatch.setattr(compat, "optimizer_slots", lambda optimizer, kind: None)  # Keras renamed them
    assert use_fused_update(optimizer) is None


def test_moved_dropout_internals_leave_keras_dropout(monkeypatch):
    from keras.src.backend.tensorflow import random as tf_random

    from cnncli.train.dropout import patched

    keras_dropout = tf_random.dropout
    monkeypatch.delattr(tf_random, "_cast_seed")
    assert compat.dropout_backend() is None
    with patched():
        assert tf_random.dropout is keras_dropout
    assert compat.report()["speedups"]["fast_dropout"] is False


def test_dropout_is_patched_only_inside_the_step():
    from keras.src.backend.tensorflow import random as tf_random

    from cnncli.train.dropout import patched

    keras_dropout = tf_random.dropout
    with patched():
        assert tf_random.dropout is not keras_dropout
    assert tf_random.dropout is keras_dropout
    assert compat.report()["speedups"]["fast_dropout"] is True


def test_training_without_the_speed_ups_works_and_says_so(monkeypatch, tmp_path):
    import tensorflow as tf

    # A Keras whose backend module is elsewhere (Keras's own functions keep theirs), and a
    # TensorFlow without the fused Adam kernel.
    monkeypatch.setitem(sys.modules, "keras.src.backend.tensorflow.random", types.ModuleType("moved"))
    monkeypatch.delattr(tf.raw_ops, "ResourceApplyAdam")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    result = CliRunner().invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    run_json = json.loads((tmp_path / "runs" / "tiny").glob("*/run.json").__next__().read_text())
    assert run_json["status"] == "complete"
    assert run_json["compat"]["keras_internals"]["fast_dropout"] is False
    assert run_json["compat"]["keras_internals"]["fused_optimizer"] is False
    assert run_json["compat"]["speedups"] == {"fast_dropout": False, "fused_optimizer": None}


def test_training_with_the_speed_ups_records_them(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    result = CliRunner().invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    run_json = json.loads((tmp_path / "runs" / "tiny").glob("*/run.json").__next__().read_text())
    assert run_json["compat"]["speedups"] == {"fast_dropout": True, "fused_optimizer": "ResourceApplyAdam"}


def test_per_layer_rates_without_the_variable_index(monkeypatch):
    import keras
    import tensorflow as tf

    from cnncli.train.layer_rates import layerwise

    def step(optimizer, variables):
        optimizer.apply([tf.ones_like(v) for v in variables], variables)
        return [v.numpy() for v in variables]

    def run():
        variables = [keras.Variable(np.zeros(2, "float32"), name=f"v{i}") for i in range(3)]
        optimizer = layerwise(keras.optimizers.SGD(learning_rate=1.0), variables, (1.0, 0.5, 0.25))
        return step(optimizer, variables)

    with_internal = run()
    monkeypatch.setattr(compat, "_optimizer_has", lambda *names: False)
    compat.reset()
    assert not compat.usable("variable_index")
    without = run()
    np.testing.assert_array_equal(with_internal, without)
    np.testing.assert_array_equal([w[0] for w in without], [-1.0, -0.5, -0.25])


def test_summary_without_inbound_nodes_is_the_same(monkeypatch):
    import keras

    from cnncli.model.geometry import summarize

    inputs = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, name="a")(inputs)
    b = keras.layers.Conv2D(4, 5, padding="same", name="b")(a)
    c = keras.layers.MaxPooling2D(2, name="c")(keras.layers.Add(name="add")([a, b]))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten(name="f")(c)))
    with_internal = summarize(model)
    monkeypatch.setattr(compat, "_layer_has_inbound_nodes", lambda: False)
    compat.reset()
    assert not compat.usable("inbound_nodes")
    without = summarize(model)
    assert without == with_internal
    assert [r.receptive_field for r in without.layers][:4] == [[3, 3], [7, 7], [7, 7], [8, 8]]


def test_snake_case_without_keras_naming_is_the_same(monkeypatch):
    from cnncli.config.vocabulary import LAYERS

    names = [cls.__name__ for _, cls in LAYERS.items()]
    expected = [compat.snake_case(n) for n in names]
    monkeypatch.setitem(sys.modules, "keras.src.utils.naming", types.ModuleType("moved"))
    compat.reset()
    assert [compat.snake_case(n) for n in names] == expected
    assert compat.snake_case("MaxPooling2D") == "max_pooling2d"


def test_moved_coordination_internals_leave_tensorflow_defaults(monkeypatch):
    class Spec:  # a cluster of two workers, as TFConfigClusterResolver gives it
        jobs = ["worker"]

        @staticmethod
        def num_tasks(job):
            return 2

    monkeypatch.setitem(sys.modules, "tensorflow.python.distribute.multi_worker_util", types.ModuleType("moved"))
    compat.reset()
    assert compat.usable("coordination") is False
    assert compat.configure_heartbeats(Spec(), 5.0) is False  # nothing configured: TensorFlow's own timeout
    assert compat.get_cluster_value("cnncli/run_dir") is None
    compat.set_cluster_value("cnncli/run_dir", "/runs/x")  # a no-op, not an error


def test_weights_hint_without_get_file_leaves_keras_alone(monkeypatch):
    from keras.src.utils import file_utils

    from cnncli.model.backbones import _offline_weights_hint

    real = file_utils.get_file
    monkeypatch.setitem(sys.modules, "keras.src.backend.config", types.ModuleType("moved"))
    with _offline_weights_hint("VGG16") as hint:
        assert file_utils.get_file is real
    assert hint.missing is None


def test_one_cache_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    assert compat.cache_dir("models") == tmp_path / "home" / "models"
    assert compat.cache_dir("datasets", str(tmp_path / "other")) == tmp_path / "other" / "datasets"
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(compat.os, "access", lambda path, mode: str(path) != str(locked))  # as if read-only
    assert str(compat.cache_dir("models", str(locked))) == "/tmp/.keras/models"


def test_without_the_xplane_reader_the_profile_keeps_its_trace_and_says_why_there_is_no_table(monkeypatch,
                                                                                              tmp_path):
    from cnncli.train.profile import format_summary, summarize

    trace = tmp_path / "host.xplane.pb"
    trace.write_bytes(b"")
    monkeypatch.setattr(compat, "_has", lambda module, *names: "xplane" not in module)  # TensorFlow moved it
    compat.reset()
    try:
        summary = summarize(trace, steps=4, seconds=0.5)
        assert (summary["step_ms"], summary["top_ops"], summary["input_wait_share"]) == (125.0, None, None)
        assert format_summary(summary) == [
            f"profile: 4 steps, 125.0 ms a step; trace {trace}",
            "  (this TensorFlow cannot read its profiler traces back (no tensorflow.tsl xplane_pb2): "
            "open logs/ in TensorBoard's profile tab)"]
    finally:
        compat.reset()


def _streamed_config(tmp_path, deterministic: bool):
    """A tiny image folder streamed with tf.data (data.cache: none): its steps time their input wait."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("dark", "light"):
        (tmp_path / "photos" / name).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.png")
    config = tmp_path / f"streamed-{deterministic}.yaml"
    config.write_text(small_config({
        "deterministic": deterministic, "data.dataset": "image_folder", "data.path": str(tmp_path / "photos"),
        "data.cache": "none", "data.image_size": [12, 12], "data.validation_split": None, "data.shapes": None,
        "model.layers": [{"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}],
        "train": {"epochs": 1, "batch_size": 4}}))
    return config


def _train_twice(tmp_path) -> list[dict]:
    """A deterministic streamed run, then one that is not, in the same process: each run.json."""
    runs = []
    for deterministic in (True, False):
        config = _streamed_config(tmp_path, deterministic)
        result = CliRunner().invoke(app, ["train", str(config), "--output", str(tmp_path / f"runs-{deterministic}"),
                                          "--json"])
        assert result.exit_code == 0, result.output
        runs.append(json.loads((Path(json.loads(result.stdout)["run_dir"]) / "run.json").read_text()))
    return runs


def test_a_deterministic_run_leaves_the_next_run_of_the_process_free(tmp_path):
    """TensorFlow's op determinism, once on, refused the timestamps of a later streamed run that did not ask
    for it ("Timestamp cannot be called when determinism is enabled"); it is turned off again."""
    from tensorflow.python.framework import config as tf_config

    first, second = _train_twice(tmp_path)
    assert first["status"] == second["status"] == "complete"
    assert not tf_config.is_op_determinism_enabled() and not compat.determinism_on()


def test_without_disable_op_determinism_later_runs_stay_deterministic_and_untimed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow.python.framework.config", types.ModuleType("moved"))
    compat.reset()
    assert compat.usable("determinism_off") is False
    try:
        first, second = _train_twice(tmp_path)
        assert first["status"] == second["status"] == "complete"  # the second does not time its input
        assert compat.determinism_on()
    finally:
        monkeypatch.undo()
        compat.reset()
        assert compat.op_determinism(False) is False  # the rest of the test session runs free again
