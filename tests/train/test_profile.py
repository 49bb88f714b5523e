"""cnn train --profile: a TensorBoard-readable trace of a few steps, the top ops, the input share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.train.profile import format_summary, is_input_op, op_times

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "1", "--set", "data.shapes.train_examples=400", "--set", "data.shapes.test_examples=50"]


def _cnn(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "ONEDNN_MAX_CPU_ISA": "AVX2"}  # an AVX2 machine's decisions, whatever this CPU has
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)


def test_profile_writes_a_trace_and_prints_the_top_ops(tmp_path):
    proc = _cnn("train", "configs/shapes_cnn.yaml", *SMALL, "--profile", "5", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    traces = list(tmp_path.glob("shapes-cnn/*/logs/plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1  # where TensorBoard's profile tab looks
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("profile: 5 steps"))
    assert "% of it waiting for input" in lines[head]
    assert lines[head + 1].split() == ["op", "ms/step", "share", "calls"]
    ops = op_times(traces[0])
    # The convolutions' gradients, by whichever kernel this CPU gets: oneDNN's (_MklNativeConv2DBackpropFilter,
    # where TensorFlow turns it on) or Eigen's (Conv2DBackpropFilter).
    assert any(name.endswith("Conv2DBackpropFilter") for name in ops), sorted(ops)
    table = [line.split()[0] for line in lines[head + 2:head + 14] if not line.startswith("  (")]
    assert table[0] == max(ops, key=lambda name: ops[name]["ms"])[:36]
    run = json.loads(next(tmp_path.glob("shapes-cnn/*/run.json")).read_text())
    threads = run["runtime"]["threads"]
    assert run["runtime"]["cpu"]["isa"] == "avx2" and run["runtime"]["cpu"]["onednn_max_cpu_isa"] == "AVX2"
    assert run["runtime"]["precision"] == "float32"
    assert threads["step_macs"] == 2_511_232 * 64  # shapes_cnn: forward multiply-adds × batch
    assert "M multiply-adds a step" in threads["reason"] or threads["reason"] == "one core"


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_profile_in_the_json_output(tmp_path):
    proc = _cnn("train", "configs/shapes_cnn.yaml", *SMALL, "--profile", "3", "--json", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)["profile"]
    assert profile["steps"] == 3
    assert Path(profile["trace"]).name.endswith(".xplane.pb") and Path(profile["trace"]).exists()
    assert 0 <= profile["input_wait_share"] <= 1
    assert 1 <= len(profile["top_ops"]) <= 12
    assert abs(sum(op["share"] for op in profile["top_ops"]) - 1) < 0.2  # the top ops are most of the time
    assert len(format_summary(profile)) == len(profile["top_ops"]) + 3


def test_profile_rejects_a_negative_step_count(tmp_path):
    proc = _cnn("train", "configs/shapes_cnn.yaml", "--profile", "-1", "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "--profile" in proc.stderr


def test_input_ops_are_the_loops_gather_and_the_iterators():
    assert is_input_op("while/body/_1/while/GatherV2", "GatherV2")
    assert is_input_op("while/body/_1/while/Cast", "Cast")
    assert is_input_op("IteratorGetNext", "IteratorGetNext")
    assert not is_input_op("while/body/_1/while/sequential/conv2d/Cast", "Cast")  # inside a layer


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_profile_of_a_streamed_split(tmp_path):
    """Batches from tf.data (data.cache none) instead of the resident split: the trace and table still come."""
    from helpers import write_shapes_folder

    folder = write_shapes_folder(tmp_path / "images", seed=3, train=240, test=30)
    config = tmp_path / "stream.yaml"
    config.write_text(f"""name: stream
seed: 1
data: {{dataset: image_folder, path: {folder}, cache: none, validation_split: 0, color_mode: grayscale}}
model:
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, activation: relu}}
    - {{type: Flatten}}
    - {{type: Dense, units: 3, activation: softmax}}
train: {{epochs: 1, batch_size: 16}}
""")
    proc = _cnn("train", str(config), "--profile", "4", "--json", "--output", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)["profile"]
    assert profile["steps"] == 4
    assert Path(profile["trace"]).exists()
    assert profile["top_ops"]
