"""Devices, precision, threads and distribution strategy, decided once per job.

This must run before TensorFlow executes its first op: thread pools and
logical devices cannot be changed afterwards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cnncli.config import RuntimeConfig
from cnncli.errors import CnnError


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

    def as_json(self) -> dict:
        return {"device": self.device, "devices": self.devices, "precision": self.precision,
                "precision_reason": self.precision_reason, "replicas": self.num_replicas,
                "workers": self.num_workers, "worker_index": self.worker_index,
                "strategy": type(self.strategy).__name__, "threads": self.threads}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_precision(requested: str, device: str, has_convolutions: bool, gpu_capability=None,
                     flags: set[str] | None = None) -> tuple[str, str]:
    """The compute precision for `auto`, with the reason it was chosen."""
    if requested != "auto":
        return requested, "set in the config"
    if device == "gpu":
        major = (gpu_capability or (0, 0))[0]
        if major >= 8:
            return "mixed_bfloat16", f"GPU compute capability {gpu_capability[0]}.{gpu_capability[1]} supports bfloat16"
        if major >= 7:
            return "mixed_float16", (f"GPU compute capability {gpu_capability[0]}.{gpu_capability[1]}: "
                                     "float16 tensor cores, with loss scaling")
        return "float32", "GPU without fast half precision"
    if device == "tpu":
        return "mixed_bfloat16", "TPUs compute in bfloat16"
    flags = cpu_flags() if flags is None else flags
    bf16 = {"amx_bf16", "avx512_bf16"} & flags
    if bf16 and has_convolutions:
        return "mixed_bfloat16", f"CPU has {', '.join(sorted(bf16))} and the model has convolutions"
    if bf16:
        return "float32", "no convolutions: bfloat16 saves little on dense layers and costs accuracy"
    return "float32", "CPU without bfloat16 instructions"


def _gpu_capability(tf, gpus) -> tuple[int, int] | None:
    try:
        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability", (0, 0)))
    except Exception:  # details are best effort; the device itself is listed
        return None


def setup_runtime(cfg: RuntimeConfig, has_convolutions: bool) -> Runtime:
    """Configure TensorFlow for this job and return the strategy to train under."""
    import tensorflow as tf

    threads = {}
    cores = os.cpu_count() or 1
    intra = cfg.intra_op_threads if cfg.intra_op_threads is not None else cores  # one op may use every core
    inter = cfg.inter_op_threads if cfg.inter_op_threads is not None else min(2, cores)  # the loop is one chain of ops
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already started in this process (a second job in one Python): keep its pools
        pass
    threads = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads() or intra,
               "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or inter}

    gpus = tf.config.list_physical_devices("GPU")
    tpu_name = os.environ.get("TPU_NAME")
    if cfg.device == "gpu" and not gpus:
        found = ", ".join(d.name for d in tf.config.list_physical_devices()) or "nothing"
        raise CnnError(f"device `gpu` was requested but TensorFlow sees no GPU (found: {found}); "
                       "use --device cpu, or install the GPU build with pip install 'cnncli[gpu]'")
    if cfg.device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)  # share the card; grow as needed
    device = "tpu" if cfg.distribute == "tpu" else ("gpu" if gpus else "cpu")
    if device == "cpu" and cfg.cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cfg.cpu_devices)])

    strategy, is_chief, worker_index, num_workers = _strategy(tf, cfg, gpus, tpu_name)
    precision, reason = choose_precision(cfg.precision, device, has_convolutions,
                                         _gpu_capability(tf, gpus) if gpus else None)
    if precision == "mixed_float16" and device == "cpu":
        raise CnnError("precision `mixed_float16` needs a GPU; on a CPU use `mixed_bfloat16` or `float32`")
    import keras

    keras.mixed_precision.set_global_policy(precision)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU", "TPU")]
    return Runtime(strategy, device, devices, precision, reason, strategy.num_replicas_in_sync,
                   is_chief, worker_index, num_workers, threads)


def _strategy(tf, cfg: RuntimeConfig, gpus, tpu_name):
    if cfg.distribute is None:
        return tf.distribute.get_strategy(), True, 0, 1
    if cfg.distribute == "mirrored":
        if gpus:
            devices = [f"/gpu:{i}" for i in range(len(gpus))]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        # Collective ops over CPU devices: the default NCCL all-reduce exists only for GPUs.
        ops = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=ops), True, 0, 1
    if cfg.distribute == "multi_worker":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise CnnError("runtime.distribute is `multi_worker` but TF_CONFIG is not set; "
                           "see README, 'Scaling out', for the cluster and task it must name")
        try:
            tf_config = json.loads(raw)
            task = tf_config["task"]
            workers = tf_config["cluster"]["worker"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CnnError(f"TF_CONFIG is not valid: {exc}; expected "
                           '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 0}}') from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        index = int(task.get("index", 0))
        is_chief = task.get("type") == "chief" or (task.get("type") == "worker" and index == 0
                                                    and "chief" not in tf_config["cluster"])
        return strategy, is_chief, index, len(workers) + len(tf_config["cluster"].get("chief", []))
    # TPU: wired through the same loop; not exercised on this project's CI machines.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver), True, 0, 1
