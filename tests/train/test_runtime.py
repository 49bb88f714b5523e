"""Devices, precision, cluster roles: the decisions of runtime.py, decisions.py and cluster.py.

The GPU paths run here without a GPU: only TensorFlow's device queries
(`tf.config.list_physical_devices`, `get_device_details`) are replaced, and the
calls that would act on the (absent) card are recorded instead of made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.config.loading import load_config
from cnncli.config.schema import RuntimeConfig
from cnncli.errors import CnnError
from cnncli.train.cluster import ClusterRole, cluster_role, process_role
from cnncli.train.decisions import (
    choose_precision,
    choose_threads,
    default_threads,
    model_macs,
    read_cpu,
    small_model,
    step_macs,
)
from cnncli.train.runtime import mirrored_devices, setup_runtime, with_loss_scaling

ROOT = Path(__file__).resolve().parents[2]
AMX = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
AVX2 = {"avx2", "fma"}


@pytest.mark.parametrize("device, capability, flags, convs, expected, reason", [
    ("gpu", (8, 0), None, True, "mixed_bfloat16", "GPU compute capability 8.0 supports bfloat16"),  # A100
    ("gpu", (9, 0), None, False, "mixed_bfloat16", "GPU compute capability 9.0 supports bfloat16"),  # H100, dense
    ("gpu", (7, 5), None, True, "mixed_float16",  # T4: float16 tensor cores, loss scaling
     "GPU compute capability 7.5: float16 tensor cores, with loss scaling"),
    ("gpu", (7, 0), None, True, "mixed_float16",  # V100
     "GPU compute capability 7.0: float16 tensor cores, with loss scaling"),
    ("gpu", (6, 1), None, True, "float32", "GPU without fast half precision"),  # Pascal
    ("gpu", None, None, True, "float32", "GPU without fast half precision"),  # capability unknown
    ("cpu", None, AMX, True, "mixed_bfloat16",  # Sapphire Rapids and a CNN
     "CPU runs amx bfloat16 kernels and the model has convolutions"),
    ("cpu", None, AMX, False, "float32",  # dense layers only: little to gain
     "no convolutions: bfloat16 saves little on dense layers and costs accuracy"),
    ("cpu", None, AVX2, True, "float32", "CPU without bfloat16 kernels (avx2)"),
    ("tpu", None, None, True, "mixed_bfloat16", "TPUs compute in bfloat16"),
])
def test_auto_precision(device, capability, flags, convs, expected, reason):
    assert choose_precision("auto", device, convs, capability, flags) == (expected, reason)


def test_precision_set_in_the_config_is_kept():
    assert choose_precision("float32", "gpu", True, (8, 0), None) == ("float32", "set in the config")


def test_loss_scaling_only_for_float16():
    import keras

    sgd = keras.optimizers.SGD(0.1)
    assert isinstance(with_loss_scaling(sgd, "mixed_float16"), keras.optimizers.LossScaleOptimizer)
    assert with_loss_scaling(sgd, "mixed_bfloat16") is sgd
    assert with_loss_scaling(sgd, "float32") is sgd


def test_mirrored_replicas_are_the_gpus_else_the_logical_cpus():
    assert mirrored_devices(2, ["/device:CPU:0"]) == (["/gpu:0", "/gpu:1"], False)  # NCCL all-reduce
    assert mirrored_devices(0, ["/device:CPU:0", "/device:CPU:1"]) == (["/device:CPU:0", "/device:CPU:1"], True)


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("config, small", [
    ("mnist_softmax.yaml", True), ("mnist_lenet.yaml", True), ("shapes_cnn.yaml", True),
    ("resnet_mini.yaml", True),        # CIFAR-10, 32×32
    ("lenet5.yaml", True),             # resized to 32×32
    ("vgg16_transfer.yaml", False),    # a pretrained backbone at 224×224
])
def test_small_model_from_the_config_alone(config, small):
    assert small_model(load_config(ROOT / "configs" / config, [])) is small


def test_small_model_needs_a_known_size():
    cfg = load_config(ROOT / "configs" / "mnist_lenet.yaml", ["data.dataset=npz", "data.path=x.npz"])
    assert not small_model(cfg)  # an .npz of unknown image size: every core for each op
    cfg = load_config(ROOT / "configs" / "mnist_lenet.yaml", ["data.image_size=[128,128]"])
    assert not small_model(cfg)


@pytest.mark.parametrize("cores, small, expected", [
    (2, True, (1, 2)),    # measured: one thread per op, two ops at once
    (4, True, (1, 4)),
    (2, False, (2, 2)),   # big ops get every core
    (16, True, (16, 2)),  # not measured beyond 4 cores: TensorFlow's layout
    (1, True, (1, 1)),
])
def test_default_threads(cores, small, expected):
    assert default_threads(cores, small) == expected


# Recorded /proc/cpuinfo excerpts (first processor; flags trimmed to the ones that matter here).
EPYC_AVX2 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7R32
flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu sse sse2 sse4_1 sse4_2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""  # noqa: E501 (a recorded /proc/cpuinfo line: wrapping it would change the input)
ICE_LAKE = """model name	: Intel(R) Xeon(R) Platinum 8375C
flags		: sse4_2 avx fma avx2 avx512f avx512bw avx512_vnni
"""


@pytest.mark.parametrize("cpuinfo, env, isa", [
    (EPYC_AVX2, {}, "avx2"),
    (SAPPHIRE_RAPIDS, {}, "amx"),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx2"),         # oneDNN capped: its kernels are AVX2's
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "avx512"),
    (ICE_LAKE, {"ONEDNN_MAX_CPU_ISA": "ALL"}, "avx512"),              # a cap above the CPU changes nothing
    (ICE_LAKE, {"ONEDNN_MAX_CPU_ISA": "NOT_A_LEVEL"}, "avx512"),
    ("", {}, "sse4"),
])
def test_isa_from_a_recorded_cpu(cpuinfo, env, isa):
    cpu = read_cpu(cpuinfo, cores=2, environ=env)
    assert cpu.isa == isa
    assert cpu.as_json()["cores"] == 2


def test_cpu_model_is_read():
    assert read_cpu(EPYC_AVX2, cores=2, environ={}).model == "AMD EPYC 7R32"


def _train_speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_speed
    finally:
        sys.path.pop(0)
    return train_speed


def _bench_cfg(name: str):
    from cnncli.config.schema import Config

    return Config(**_train_speed().cnncli_config(name, 2, Path("x.npz"), "auto"))


def test_benchmark_first_epoch_cost_and_whole_run_rate():
    bench = _train_speed()
    run = {"epoch_seconds": [3.5, 1.0, 2.0, 1.0], "examples_per_epoch": 600}
    assert bench.first_epoch_cost(run) == 2.5  # 3.5 less the median of 1, 2, 1
    assert bench.steady(run) == 600 * 3 / 4.0
    assert bench.whole(run) == 600 * 4 / 7.5
    assert bench.first_epoch_cost({"epoch_seconds": [2.0], "examples_per_epoch": 600}) is None


@pytest.mark.parametrize("name, macs", [
    ("softmax", 7_840),                                      # 784 × 10
    ("mlp", 101_632),                                        # 784 × 128 + 128 × 10
    ("cnn", 26 * 26 * 32 * 9 + 13 * 13 * 32 * 128 + 1280),   # valid 3×3 conv, pool, dense
    ("lenet", 28 * 28 * 32 * 25 + 14 * 14 * 64 * 25 * 32 + 3136 * 1024 + 10240),
])
def test_multiply_adds_from_the_config_alone(name, macs):
    cfg = _bench_cfg(name)
    assert model_macs(cfg) == macs
    assert step_macs(cfg) == macs * cfg.train.batch_size


@pytest.mark.parametrize("config", ["resnet_mini.yaml", "vgg16_transfer.yaml", "inception_mini.yaml"])
def test_multiply_adds_unknown_for_graphs_and_backbones(config):
    assert model_macs(load_config(ROOT / "configs" / config, [])) is None


@pytest.mark.parametrize("cpuinfo, env, model, expected_precision, expected_threads", [
    # AVX2 float32: the LeNet-style CNN's step (87 M cycles) splits each op over both cores
    (EPYC_AVX2, {}, "lenet", "float32", (2, 1)),
    (EPYC_AVX2, {}, "cnn", "float32", (1, 2)),
    (EPYC_AVX2, {}, "mlp", "float32", (1, 2)),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "lenet", "float32", (2, 1)),   # as on the EPYC
    # AMX bfloat16: the same step is ~5 M cycles, too small to split
    (SAPPHIRE_RAPIDS, {}, "lenet", "mixed_bfloat16", (1, 2)),
    (SAPPHIRE_RAPIDS, {}, "cnn", "mixed_bfloat16", (1, 2)),
    (SAPPHIRE_RAPIDS, {}, "softmax", "float32", (1, 2)),   # no convolutions: float32
])
def test_auto_decisions_from_a_recorded_cpu(cpuinfo, env, model, expected_precision, expected_threads):
    cpu = read_cpu(cpuinfo, cores=2, environ=env)
    cfg = _bench_cfg(model)
    precision, _ = choose_precision("auto", "cpu", any(s.type == "Conv2D" for s in cfg.model.layers), None,
                                    cpu.flags, cpu.onednn_cap)
    assert precision == expected_precision
    intra, inter, reason = choose_threads(cpu.cores, cpu.isa, precision, step_macs(cfg))
    assert (intra, inter) == expected_threads
    assert "M multiply-adds a step" in reason and cpu.isa in reason


def test_threads_without_a_known_cost_follow_the_image_size():
    assert choose_threads(2, "avx2", "float32", None, small=True)[:2] == (1, 2)
    assert choose_threads(2, "avx2", "float32", None, small=False)[:2] == (2, 2)
    assert choose_threads(1, "avx2", "float32", 10**12)[:2] == (1, 1)
    assert choose_threads(16, "avx2", "float32", 10**6)[:2] == (16, 2)   # many cores: not measured
    assert choose_threads(16, "avx2", "float32", 10**12)[:2] == (16, 1)


def test_capped_onednn_gets_float32():
    precision, reason = choose_precision("auto", "cpu", True, None, read_cpu(SAPPHIRE_RAPIDS, 2, {}).flags, "AVX2")
    assert precision == "float32"
    assert "AVX2" in reason


# ---------------------------------------------------------------- TF_CONFIG

def _tf_config(task_type="worker", index=0, workers=2, chief=0) -> str:
    cluster = {"worker": [f"host{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["boss:2222"]
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize("raw, expected", [
    (_tf_config("worker", 0), ClusterRole("worker", 0, 2, True)),   # no chief listed: worker 0 is it
    (_tf_config("worker", 1), ClusterRole("worker", 1, 2, False)),
    (_tf_config("chief", 0, chief=1), ClusterRole("chief", 0, 3, True)),
    (_tf_config("worker", 0, chief=1), ClusterRole("worker", 0, 3, False)),
])
def test_cluster_role(raw, expected):
    assert cluster_role(raw) == expected


@pytest.mark.parametrize("raw, message", [
    (None, "TF_CONFIG is not set"),
    ("{not json", "TF_CONFIG is not valid"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG is not valid (KeyError: 'task')"),
    (_tf_config("evaluator", 0), "task type `evaluator` cannot train here"),
    (_tf_config("worker", 5), "task index 5 is outside the cluster's 2 `worker` address(es)"),
])
def test_cluster_role_errors(raw, message):
    with pytest.raises(CnnError, match=None) as info:
        cluster_role(raw)
    assert message in str(info.value)


def test_process_role_needs_no_tensorflow(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 1))
    assert not process_role(RuntimeConfig(distribute="multi_worker")).is_chief
    assert process_role(RuntimeConfig()).is_chief  # TF_CONFIG matters only for multi_worker


# ---------------------------------------------------------------- GPUs, with the device query mocked

@pytest.fixture
def fake_gpus(monkeypatch):
    """TensorFlow reports `count` GPUs of compute capability `capability`; acting on them is recorded."""
    import keras
    import tensorflow as tf

    real_list = tf.config.list_physical_devices
    calls = {"memory_growth": [], "visible": []}

    def install(count: int, capability: tuple[int, int]):
        gpus = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(count)]

        def list_physical_devices(device_type=None):
            if device_type == "GPU":
                return list(gpus)
            return real_list(device_type) + (gpus if device_type is None else [])

        monkeypatch.setattr(tf.config, "list_physical_devices", list_physical_devices)
        monkeypatch.setattr(tf.config.experimental, "get_device_details",
                            lambda device: {"device_name": "Fake GPU", "compute_capability": capability})
        monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                            lambda device, on: calls["memory_growth"].append((device.name, on)))
        monkeypatch.setattr(tf.config, "set_visible_devices",
                            lambda devices, kind=None: calls["visible"].append((list(devices), kind)))
        return calls

    yield install
    keras.mixed_precision.set_global_policy("float32")


# threads 0: "let TensorFlow choose", so these in-process calls leave the test session's pools as they are
NO_THREADS = {"intra_op_threads": 0, "inter_op_threads": 0}


@pytest.mark.parametrize("capability, precision", [((7, 5), "mixed_float16"), ((8, 6), "mixed_bfloat16"),
                                                    ((6, 0), "float32")])
def test_gpu_auto_device_precision_and_memory_growth(fake_gpus, capability, precision):
    import keras

    calls = fake_gpus(2, capability)
    runtime = setup_runtime(RuntimeConfig(**NO_THREADS), has_convolutions=True)
    assert runtime.device == "gpu"
    assert runtime.precision == precision
    assert f"{capability[0]}.{capability[1]}" in runtime.precision_reason or precision == "float32"
    assert calls["memory_growth"] == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    assert keras.mixed_precision.global_policy().name == precision
    assert runtime.as_json()["precision"] == precision and runtime.as_json()["device"] == "gpu"


def test_device_cpu_hides_the_gpus(fake_gpus):
    calls = fake_gpus(1, (8, 0))
    runtime = setup_runtime(RuntimeConfig(device="cpu", **NO_THREADS), has_convolutions=False)
    assert runtime.device == "cpu"
    assert calls["visible"] == [([], "GPU")]
    assert calls["memory_growth"] == []


def test_mixed_float16_on_cpu_is_refused():
    with pytest.raises(CnnError, match="`mixed_float16` needs a GPU"):
        setup_runtime(RuntimeConfig(device="cpu", precision="mixed_float16", **NO_THREADS), has_convolutions=True)


# ---------------------------------------------------------------- through the CLI

def _cnn(*args: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environ.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **env})  # no GPU, whatever the host
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, text=True, timeout=120,
                          env=environ, cwd=ROOT)


def test_cli_device_gpu_without_a_gpu_is_an_error(tmp_path):
    proc = _cnn("train", "configs/shapes_cnn.yaml", "--device", "gpu", "--output", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: device `gpu` was requested but TensorFlow sees no GPU "
                                  "(found: /physical_device:CPU:0)")
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was written


def test_cli_multi_worker_without_tf_config_is_an_error(tmp_path):
    proc = _cnn("train", "configs/shapes_cnn.yaml", "--set", "runtime.distribute=multi_worker",
                "--output", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: runtime.distribute is `multi_worker` but TF_CONFIG is not set")
