"""`train.optimizer.use_ema`: the optimizer's weight averages are what is scored, saved, exported and resumed.

The steps train on the raw weights; the last TF checkpoint holds both (the
averages are optimizer variables), model.keras and every best-epoch copy hold
the averages.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "faults"))
from harness import Cnn, check_complete, history_rows, only_run_dir  # noqa: E402

EPOCHS = 3
EMA = {"type": "AdamW", "learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9}
CONFIG = helpers.small_config({
    "deterministic": True,
    "data.shapes": {"train_examples": 200, "test_examples": 40, "classes": ["x", "o", "square"]},
    "model.layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                     {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"},
                     {"type": "Dense", "units": 3, "activation": "softmax"}],
    "train": {"epochs": EPOCHS, "batch_size": 32, "optimizer": EMA},
})

runner = CliRunner()


def train(tmp_path: Path, *changes: dict) -> Path:
    config = tmp_path / "ema.yaml"
    config.write_text(helpers.small_config(CONFIG, *changes))
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def saved(run_dir: Path, name: str = "model.keras") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(trainable weights, the optimizer's averages) of a saved .keras file."""
    import keras

    model = keras.saving.load_model(run_dir / name)
    averages = [v.numpy() for v in model.optimizer.variables if v.path.endswith("_average")]
    return [v.numpy() for v in model.trainable_variables], averages


def last_checkpoint(run_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(raw trainable weights, averages) in the resume checkpoint state.json names."""
    import keras
    import tensorflow as tf

    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    reader = tf.train.load_checkpoint(str(run_dir / state["checkpoint"]))
    model = keras.saving.load_model(run_dir / "model.keras")
    trainable = [i for i, v in enumerate(model.variables) if v.trainable]
    raw = [reader.get_tensor(f"weights/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in trainable]
    paths = [v.path.split("/", 1)[1] for v in model.optimizer.variables]  # the checkpoint numbers them in this order
    averages = [reader.get_tensor(f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
                for i, p in enumerate(paths) if p.endswith("_average")]
    return raw, averages


def test_model_keras_holds_the_averages_and_training_the_raw_weights(tmp_path):
    run_dir = train(tmp_path)
    weights, averages = saved(run_dir)
    raw, checkpointed = last_checkpoint(run_dir)
    assert len(weights) == len(averages) == len(raw) == 4
    for w, a, c in zip(weights, averages, checkpointed, strict=True):
        np.testing.assert_array_equal(w, a)  # model.keras: the averages, exactly
        np.testing.assert_array_equal(w, c)  # ... which the resume checkpoint holds as optimizer variables
    assert any(not np.array_equal(w, r) for w, r in zip(weights, raw, strict=True))  # and the raw weights beside
    run = json.loads((run_dir / "run.json").read_text())
    assert run["compat"]["speedups"]["fused_optimizer"] == "ResourceApplyAdam"  # the fused update keeps Keras's EMA


@pytest.mark.parametrize("loss_scaling", [False, True], ids=["plain", "loss-scaling"])
def test_the_average_is_kerass_rule_step_by_step(loss_scaling):
    """The loop's averages (fused update, mixed_float16's LossScaleOptimizer around it) are
    new = m·old + (1 − m)·weights after each step, from the first."""
    import keras
    import tensorflow as tf

    from cnncli.train.ema import averaged, finalize
    from cnncli.train.fused import use_fused_update

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.8)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    assert use_fused_update(optimizer) == "ResourceApplyAdam"
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 5)).astype("float32"))
    expected = None

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = optimizer.scale_loss(tf.reduce_mean(tf.square(model(x))))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for _ in range(4):
        step()
        now = [v.numpy().astype(np.float64) for v in model.trainable_variables]
        expected = now if expected is None else [0.8 * e + 0.2 * w for e, w in zip(expected, now, strict=True)]
    raw = [v.numpy() for v in model.trainable_variables]
    with averaged(model, optimizer):
        for v, e in zip(model.trainable_variables, expected, strict=True):
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
    for v, r in zip(model.trainable_variables, raw, strict=True):
        np.testing.assert_array_equal(v.numpy(), r)  # back to the raw weights, bit for bit
    finalize(model, optimizer)
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep", ["save_best_only", "restore_best_weights"])
def test_the_best_epoch_is_kept_as_its_averages(tmp_path, keep):
    """metrics.json's val loss, scored again on the kept weights, is the best epoch's val_loss of history.csv:
    so the kept weights are the ones that epoch was scored on (the averages, not the raw weights)."""
    change = ({"train.checkpoint": {"save_best_only": True}} if keep == "save_best_only" else
              {"train.early_stopping": {"monitor": "val_loss", "patience": 5, "restore_best_weights": True}})
    run_dir = train(tmp_path, change, {"train.epochs": 4, "train.optimizer.learning_rate": 0.05})
    val_losses = [float(row["val_loss"]) for row in history_rows(run_dir)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["loss"] == pytest.approx(min(val_losses), rel=1e-5)
    if keep == "save_best_only":
        weights, averages = saved(run_dir, "checkpoints/best.keras")  # saved with its optimizer at that epoch
        for w, a, m in zip(weights, averages, saved(run_dir)[0], strict=True):
            np.testing.assert_array_equal(w, a)
            np.testing.assert_array_equal(w, m)


def test_mixed_bfloat16_keeps_float32_averages(tmp_path):
    run_dir = train(tmp_path, {"runtime.precision": "mixed_bfloat16", "train.epochs": 1})
    weights, averages = saved(run_dir)
    for w, a in zip(weights, averages, strict=True):
        assert w.dtype == a.dtype == np.float32
        np.testing.assert_array_equal(w, a)


def test_export_keras_carries_the_averages(tmp_path):
    import keras

    run_dir = train(tmp_path, {"train.epochs": 1})
    out = tmp_path / "exported.keras"
    result = runner.invoke(app, ["export", str(run_dir), "--format", "keras", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    exported = keras.saving.load_model(out)
    _, averages = saved(run_dir)
    for w, a in zip([v.numpy() for v in exported.trainable_variables], averages, strict=True):
        np.testing.assert_array_equal(w, a)


# === kill -9 and resume (the crash tests' warm launcher, tests/faults/harness.py) ===


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    if sys.platform != "linux":
        pytest.skip("the crash tests fork, signal and read /proc: Linux only")
    launcher = Cnn(tmp_path_factory.mktemp("cnn-logs"))
    yield launcher
    launcher.close()


@pytest.mark.slow
def test_resume_after_kill_repeats_the_uninterrupted_run(cnn, tmp_path):
    (tmp_path / "ema.yaml").write_text(CONFIG)
    done = cnn("train", "ema.yaml", "-o", "reference", "-q", cwd=tmp_path)
    assert done.code == 0, done
    reference = only_run_dir(tmp_path / "reference")
    run_dir = None
    for fault in ("epoch_trained@2", "history_written@2", "model_saved"):  # mid-epoch, before a checkpoint, at the end
        args = ("train", "--resume", run_dir) if run_dir else ("train", "ema.yaml", "-o", "runs")
        killed = cnn(*args, "-q", cwd=tmp_path, fault=fault)
        assert killed.code == -signal.SIGKILL, (fault, killed)
        run_dir = only_run_dir(tmp_path / "runs")
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed
    check_complete(run_dir, EPOCHS)
    assert history_rows(run_dir) == history_rows(reference)
    for name in ("model.keras",):
        for got, want in zip(saved(run_dir, name), saved(reference, name), strict=True):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
    for got, want in zip(last_checkpoint(run_dir), last_checkpoint(reference), strict=True):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert metrics == expected
