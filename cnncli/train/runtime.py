"""Devices, precision, threads and distribution strategy, decided once per job.

This must run before TensorFlow executes its first op: thread pools and
logical devices cannot be changed afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cnncli.config.schema import RuntimeConfig
from cnncli.errors import CnnError
from cnncli.train.cluster import (
    cluster_role,
    configure_heartbeats,
    quiet_native_errors,
    take_back_sigterm,
    wait_for_cluster,
)
from cnncli.train.decisions import CpuInfo, choose_precision, choose_threads, read_cpu

# The public names (tf.distribute.MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy inside).
STRATEGY_NAMES = {
    "_DefaultDistributionStrategy": "default",
    "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
    "MirroredStrategy": "MirroredStrategy",
    "TPUStrategy": "TPUStrategy",
}


@dataclass
class Runtime:
    strategy: object
    device: str  # "cpu" | "gpu" | "tpu"
    devices: list[str]
    precision: str
    precision_reason: str
    num_replicas: int
    is_chief: bool = True
    worker_index: int = 0
    num_workers: int = 1
    threads: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # model, cores, the ISA oneDNN runs

    def as_json(self) -> dict:
        """The runtime as run.json records it."""
        return {
            "device": self.device,
            "devices": self.devices,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "replicas": self.num_replicas,
            "workers": self.num_workers,
            "worker_index": self.worker_index,
            "strategy": STRATEGY_NAMES.get(type(self.strategy).__name__, type(self.strategy).__name__),
            "threads": self.threads,
            "cpu": self.cpu,
        }


def with_loss_scaling(optimizer: Any, precision: str) -> Any:
    """float16 gradients underflow without loss scaling (Keras's mixed-precision guide);
    bfloat16 has float32's exponent range and needs none."""
    if precision != "mixed_float16":
        return optimizer
    import keras

    return keras.optimizers.LossScaleOptimizer(optimizer)


def _gpu_capability(tf, gpus) -> tuple[int, int] | None:
    try:
        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability", (0, 0)))
    except Exception:  # details are best effort; the device itself is listed
        return None


def configure_gpus(tf: Any, gpus: list) -> None:
    """Let every GPU take memory as it needs it rather than all at once."""
    for gpu in gpus:
        # Take memory as needed, not the whole card up front: other jobs (and the
        # other replicas' processes) may share it.
        tf.config.experimental.set_memory_growth(gpu, True)


def setup_runtime(
    cfg: RuntimeConfig,
    has_convolutions: bool,
    small: bool = False,
    step_cost: int | None = None,
    cpu: CpuInfo | None = None,
    size_reason: str | None = None,
) -> Runtime:
    """Configure TensorFlow for this job and return the strategy to train under.

    `step_cost` (see step_macs()) and the CPU's kernels pick the thread layout;
    without it, `small` (see model_size(), which also gives `size_reason`) does.
    """
    import tensorflow as tf

    cpu = cpu or read_cpu()
    gpus = tf.config.list_physical_devices("GPU")  # listing starts nothing: thread pools can still be set
    tpu_name = os.environ.get("TPU_NAME")
    if cfg.device == "gpu" and not gpus:
        found = ", ".join(d.name for d in tf.config.list_physical_devices()) or "nothing"
        raise CnnError(
            f"device `gpu` was requested but TensorFlow sees no GPU (found: {found}); "
            "use --device cpu, or install the GPU build with pip install 'cnncli[gpu]'"
        )
    if cfg.device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    device = "tpu" if cfg.distribute == "tpu" else ("gpu" if gpus else "cpu")
    precision, reason = choose_precision(
        cfg.precision, device, has_convolutions, _gpu_capability(tf, gpus) if gpus else None, cpu.flags, cpu.onednn_cap
    )
    if precision == "mixed_float16" and device == "cpu":
        raise CnnError("precision `mixed_float16` needs a GPU; on a CPU use `mixed_bfloat16` or `float32`")

    intra, inter, threads_reason = choose_threads(cpu.cores, cpu.isa, precision, step_cost, small, size_reason)
    if cfg.intra_op_threads is not None or cfg.inter_op_threads is not None:
        threads_reason = "set in the config"
        if 0 in (cfg.intra_op_threads, cfg.inter_op_threads):
            threads_reason += " (0: TensorFlow chooses, about one thread per core)"
    intra = cfg.intra_op_threads if cfg.intra_op_threads is not None else intra
    inter = cfg.inter_op_threads if cfg.inter_op_threads is not None else inter
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already started in this process (a second job in one Python): keep its pools
        threads_reason = "TensorFlow had already started in this process: its thread pools were kept"
    threads = {
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "reason": threads_reason,
        "step_macs": step_cost,
    }

    configure_gpus(tf, gpus)
    if device == "cpu" and cfg.cpu_devices:
        cpu_device = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu_device, [tf.config.LogicalDeviceConfiguration() for _ in range(cfg.cpu_devices)]
        )

    strategy, is_chief, worker_index, num_workers = _strategy(tf, cfg, gpus, tpu_name)
    import keras

    keras.mixed_precision.set_global_policy(precision)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU", "TPU")]
    return Runtime(
        strategy,
        device,
        devices,
        precision,
        reason,
        strategy.num_replicas_in_sync,
        is_chief,
        worker_index,
        num_workers,
        threads,
        cpu.as_json(),
    )


def check_global_batch(batch_size: int, replicas: int) -> None:
    """train.batch_size is the global batch: every replica takes an equal share of each step."""
    if batch_size % replicas:
        raise CnnError(
            f"train.batch_size {batch_size} is the global batch, split evenly across {replicas} "
            f"replicas; use a multiple of {replicas}, "
            f"e.g. {max(replicas, batch_size // replicas * replicas)}"
        )


def mirrored_devices(num_gpus: int, logical_cpus: list[str]) -> tuple[list[str], bool]:
    """The replicas of a mirrored run (every local GPU, else the logical CPUs), and whether
    gradients are summed on one device: NCCL, the default all-reduce, exists only for GPUs."""
    if num_gpus:
        return [f"/gpu:{i}" for i in range(num_gpus)], False
    return list(logical_cpus), True


def _strategy(tf, cfg: RuntimeConfig, gpus, tpu_name):
    if cfg.distribute is None:
        return tf.distribute.get_strategy(), True, 0, 1
    if cfg.distribute == "mirrored":
        devices, reduce_on_one = mirrored_devices(len(gpus), [d.name for d in tf.config.list_logical_devices("CPU")])
        ops = tf.distribute.ReductionToOneDevice() if reduce_on_one else None
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=ops), True, 0, 1
    if cfg.distribute == "multi_worker":
        role = cluster_role(os.environ.get("TF_CONFIG"))
        wait_for_cluster(cfg.cluster_timeout)  # before TensorFlow's own wait, which no signal interrupts
        quiet_native_errors()
        configure_heartbeats(tf, cfg.collective_timeout)
        # Reads TF_CONFIG itself; all-reduce over gRPC between hosts (NCCL within a host's GPUs).
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        take_back_sigterm()
        return strategy, role.is_chief, role.index, role.num_workers
    # TPU: wired through the same loop; not exercised on this project's CI machines.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver), True, 0, 1
