"""Devices, precision, threads and distribution strategy, decided once per job.

This must run before TensorFlow executes its first op: thread pools and
logical devices cannot be changed afterwards.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from cnncli.config import RuntimeConfig
from cnncli.errors import CnnError

# Debugging multi-worker runs: workers other than the chief normally train into a
# temporary directory that is deleted at the end. With this set to a folder, each
# keeps its run directory there (model.keras included), e.g. to compare its
# weights with the chief's.
WORKER_DIR_ENV = "CNNCLI_WORKER_DIR"


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in a multi-worker job, from TF_CONFIG."""

    task_type: str  # "chief" | "worker"
    index: int
    num_workers: int  # every task that trains: the chief (if listed) and the workers
    is_chief: bool  # the one task that writes the run directory


SINGLE = ClusterRole("worker", 0, 1, True)


def cluster_role(raw: str | None) -> ClusterRole:
    """Parse TF_CONFIG. The chief is the `chief` task, or worker 0 when the cluster names no chief
    (TensorFlow's own rule, as in MultiWorkerMirroredStrategy's checkpointing guide)."""
    if not raw:
        raise CnnError("runtime.distribute is `multi_worker` but TF_CONFIG is not set; "
                       "see README, 'Scaling out', for the cluster and task it must name")
    expected = ('expected e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}')
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, index = task["type"], int(task["index"])
        members = {kind: list(cluster.get(kind, [])) for kind in ("chief", "worker")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CnnError(f"TF_CONFIG is not valid ({type(exc).__name__}: {exc}); {expected}") from None
    if task_type not in members:
        raise CnnError(f"TF_CONFIG task type `{task_type}` cannot train here: multi_worker runs tasks of "
                       "type `chief` and `worker` (an `evaluator` or `ps` task is not supported)")
    if not 0 <= index < len(members[task_type]):
        raise CnnError(f"TF_CONFIG task index {index} is outside the cluster's {len(members[task_type])} "
                       f"`{task_type}` address(es)")
    if len(members["chief"]) > 1:
        raise CnnError("TF_CONFIG lists more than one `chief`; name one, or none (then worker 0 is the chief)")
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and not members["chief"])
    return ClusterRole(task_type, index, len(members["chief"]) + len(members["worker"]), is_chief)


def process_role(cfg: RuntimeConfig) -> ClusterRole:
    """Whether this process writes the run directory; knowable before TensorFlow starts."""
    return cluster_role(os.environ.get("TF_CONFIG")) if cfg.distribute == "multi_worker" else SINGLE


# The public names (tf.distribute.MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy inside).
STRATEGY_NAMES = {"_DefaultDistributionStrategy": "default", "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
                  "MirroredStrategy": "MirroredStrategy", "TPUStrategy": "TPUStrategy"}


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
        return {"device": self.device, "devices": self.devices, "precision": self.precision,
                "precision_reason": self.precision_reason, "replicas": self.num_replicas,
                "workers": self.num_workers, "worker_index": self.worker_index,
                "strategy": STRATEGY_NAMES.get(type(self.strategy).__name__, type(self.strategy).__name__),
                "threads": self.threads, "cpu": self.cpu}


@dataclass(frozen=True)
class CpuInfo:
    """What `auto` decides from: the CPU's model, its ISA flags, its cores, and any cap put on oneDNN."""

    model: str
    flags: frozenset
    cores: int
    onednn_cap: str | None = None  # ONEDNN_MAX_CPU_ISA, e.g. AVX2: oneDNN then runs no wider kernels

    @property
    def isa(self) -> str:
        """The widest kernel family oneDNN will run: one of ISA_LEVELS."""
        native = "sse4"
        if {"avx2", "fma"} <= self.flags:
            native = "avx2"
        if "avx512f" in self.flags:
            native = "avx512"
        if "avx512_bf16" in self.flags:
            native = "avx512_bf16"
        if {"amx_bf16", "amx_tile"} <= self.flags:
            native = "amx"
        cap = _ONEDNN_CAPS.get((self.onednn_cap or "").upper())
        if cap is None:
            return native
        return min(native, cap, key=ISA_LEVELS.index)

    def as_json(self) -> dict:
        return {"model": self.model, "cores": self.cores, "isa": self.isa, "onednn_max_cpu_isa": self.onednn_cap}


# Ascending; the kernel families oneDNN dispatches to on x86 at run time.
ISA_LEVELS = ("sse4", "avx2", "avx512", "avx512_bf16", "amx")
# ONEDNN_MAX_CPU_ISA's values (oneDNN's "CPU dispatcher control") onto those levels.
_ONEDNN_CAPS = {"SSE41": "sse4", "AVX": "sse4", "AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX2_VNNI_2": "avx2",
                "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512_bf16",
                "AVX512_CORE_FP16": "avx512_bf16", "AVX10_1_512": "avx512_bf16", "AVX512_CORE_AMX": "amx",
                "AVX512_CORE_AMX_FP16": "amx", "AVX10_1_512_AMX": "amx", "AVX10_1_512_AMX_FP16": "amx", "ALL": "amx"}


def read_cpu(cpuinfo: str | None = None, cores: int | None = None, environ=None) -> CpuInfo:
    """This machine's CPU (or the one `cpuinfo`, the text of a /proc/cpuinfo, describes)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    model, flags = "unknown", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    environ = os.environ if environ is None else environ
    return CpuInfo(model, flags, cores or _usable_cores(), environ.get("ONEDNN_MAX_CPU_ISA") or None)


def _usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_precision(requested: str, device: str, has_convolutions: bool, gpu_capability=None,
                     flags: set[str] | None = None, cap: str | None = None) -> tuple[str, str]:
    """The compute precision for `auto`, with the reason it was chosen.

    On a CPU it follows the kernels oneDNN will actually run: the CPU's flags
    (`flags`, else /proc/cpuinfo) lowered by ONEDNN_MAX_CPU_ISA (`cap`, else the
    environment). bfloat16 on a CPU without bfloat16 kernels is emulated, and slow.
    """
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
    cpu = read_cpu() if flags is None else CpuInfo("given", frozenset(flags), 1, cap)
    isa = cpu.isa
    capped = f" (oneDNN capped at {cpu.onednn_cap})" if cpu.onednn_cap else ""
    if isa in ("amx", "avx512_bf16") and has_convolutions:
        return "mixed_bfloat16", f"CPU runs {isa} bfloat16 kernels and the model has convolutions"
    if isa in ("amx", "avx512_bf16"):
        return "float32", "no convolutions: bfloat16 saves little on dense layers and costs accuracy"
    return "float32", f"CPU without bfloat16 kernels ({isa}{capped})"


def with_loss_scaling(optimizer, precision: str):
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


def configure_gpus(tf, gpus) -> None:
    for gpu in gpus:
        # Take memory as needed, not the whole card up front: other jobs (and the
        # other replicas' processes) may share it.
        tf.config.experimental.set_memory_growth(gpu, True)


# Fixed image sides of the built-in datasets, for small_model() before any data is read.
_DATASET_SIDES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
SMALL_SIDE = 64  # pixels: course-size images
SMALL_CORES = 4  # the one-thread-per-op default is measured on 2 cores; beyond 4 it is not assumed


def small_model(cfg) -> bool:
    """A course-size model (no pretrained backbone, images of at most 64 px a side), known from the config alone.

    Its ops (a 3×3 convolution over a batch of 32 28×28 images) are too small to
    split across cores; unknown sizes count as large.
    """
    if cfg.model.backbone is not None:
        return False
    if cfg.model.input_shape:
        side = max(cfg.model.input_shape[:2])
    elif cfg.data.image_size:
        side = max(cfg.data.image_size)
    elif cfg.data.dataset == "shapes":
        side = cfg.data.shapes.image_size
    else:
        side = _DATASET_SIDES.get(cfg.data.dataset)
    return side is not None and side <= SMALL_SIDE


def default_threads(cores: int, small: bool) -> tuple[int, int]:
    """(intra_op, inter_op) threads when the config leaves them unset.

    Measured on 2 cores (benchmarks/train_speed.py, --set runtime.intra_op_threads=…):
    for course-size models one thread per op with two ops at once is fastest
    (the batch-32 CNN +30–60%, the MLP +10%, LeNet ±5%): their ops are too small
    to share a core's work, and the backward pass always has two independent ops
    (a layer's weight and input gradients, the updates of different weights).
    A big model (VGG16 at 224×224, much of it a forward chain) needs every core
    in each op, as TensorFlow's own default gives it.
    """
    if small and cores <= SMALL_CORES:
        return 1, cores
    return cores, min(2, cores)


# Multiply-adds per cycle per core that the kernels of each ISA sustain on small convolutions
# and matmuls (not the datasheet peak: AMX tiles are far from full on a 28×28 batch).
MACS_PER_CYCLE = {("sse4", "float32"): 4, ("avx2", "float32"): 16, ("avx512", "float32"): 32,
                  ("avx512_bf16", "float32"): 32, ("amx", "float32"): 32,
                  ("avx512_bf16", "mixed_bfloat16"): 64, ("amx", "mixed_bfloat16"): 256}
# A step whose multiply-adds keep one core busy for fewer cycles than this (about 7 ms at 3 GHz)
# has ops too small to split: one thread per op, ops side by side. Measured on 2 cores
# (oneDNN capped at AVX2 on a Sapphire Rapids, float32, img/s of the training steps):
# the LeNet-style CNN at batch 100 (1.4 G multiply-adds a step, 87 M cycles on AVX2)
# ran 960-990 with (2 threads per op, 1 op at a time), 870 with (2, 2), 340-670 with (1, 2);
# the batch-32 CNN (28 M, 1.8 M cycles) 4,270 with (1, 2), 3,290-3,740 with (2, 2),
# 3,440 with (2, 1). With AMX bfloat16 LeNet is 5.4 M cycles: earlier runs there had it
# level between the layouts and the small CNN +30-60% with one thread per op.
SPLIT_CYCLES = 20e6


def choose_threads(cores: int, isa: str, precision: str, step_macs: int | None,
                   small: bool = True) -> tuple[int, int, str]:
    """(intra_op, inter_op, reason) when the config leaves them unset.

    The cost of a step (forward multiply-adds × batch) over the speed of the
    kernels this CPU runs says whether one op can keep every core busy. Small
    steps run each op on one thread and independent ops side by side (the
    backward pass always has two: a layer's weight and input gradients); big
    ones give every op all cores, one op at a time: two such ops at once only
    fight over the cores. A model whose cost the config does not tell (a
    backbone, a graph of layers) is judged by its image size (`small`, see
    small_model()).
    """
    if cores <= 1:
        return 1, 1, "one core"
    if step_macs is None:
        intra, inter = default_threads(cores, small)
        return intra, inter, f"cost unknown from the config: {'small' if small else 'large'} images"
    rate = MACS_PER_CYCLE.get((isa, precision), MACS_PER_CYCLE[("avx2", "float32")])
    cycles = step_macs / rate
    cost = (f"{step_macs / 1e6:,.0f} M multiply-adds a step at ~{rate}/cycle ({isa} {precision}): "
            f"{cycles / 1e6:.1f} M cycles")
    if cycles >= SPLIT_CYCLES:
        return cores, 1, f"{cost}: each op on all {cores} cores, one op at a time"
    if cores > SMALL_CORES:
        return cores, 2, f"{cost}, but more than {SMALL_CORES} cores (not measured): TensorFlow's layout"
    return 1, cores, f"{cost}: too small to split, one thread per op, {cores} ops at once"


# Layers that keep their input's shape and do (next to) no multiply-adds.
_SAME_SHAPE = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "BatchNormalization",
               "LayerNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Rescaling",
               "Normalization", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
               "RandomBrightness", "ActivityRegularization"}
_DATASET_CHANNELS = {"mnist": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3}


def _input_shape(cfg) -> tuple[int, int, int] | None:
    if cfg.model.input_shape:
        return tuple(cfg.model.input_shape)
    if cfg.data.image_size:
        h, w = cfg.data.image_size
        return h, w, 1 if getattr(cfg.data, "color_mode", "grayscale") == "grayscale" else 3
    if cfg.data.dataset == "shapes":
        return cfg.data.shapes.image_size, cfg.data.shapes.image_size, 1
    side = _DATASET_SIDES.get(cfg.data.dataset)
    return (side, side, _DATASET_CHANNELS[cfg.data.dataset]) if side else None


def _pair(value, default) -> tuple[int, int]:
    value = default if value is None else value
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def _window_out(size: int, k: int, stride: int, padding: str, dilation: int = 1) -> int:
    if str(padding).lower() == "same":
        return -(-size // stride)
    return (size - dilation * (k - 1) - 1) // stride + 1


def model_macs(cfg) -> int | None:
    """Forward multiply-adds per example of a plain stack of layers, from the config alone
    (before TensorFlow starts: its thread pools cannot change afterwards); None when the
    config does not tell (a backbone, a graph of layers, a layer type not known here)."""
    shape = _input_shape(cfg)
    if cfg.model.backbone is not None or shape is None:
        return None
    macs = 0
    for spec in cfg.model.layers:
        kind, args = spec.type, spec.args
        if spec.inputs:
            return None
        if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D"):
            if len(shape) != 3:
                return None
            h, w, c = shape
            pool = kind.endswith("Pooling2D")
            (kh, kw) = _pair(args.get("pool_size" if pool else "kernel_size"), 2 if pool else None)
            (sh, sw) = _pair(args.get("strides"), (kh, kw) if pool else 1)
            (dh, dw) = _pair(args.get("dilation_rate"), 1)
            padding = args.get("padding", "valid")
            oh, ow = _window_out(h, kh, sh, padding, dh), _window_out(w, kw, sw, padding, dw)
            filters = c if kind in ("DepthwiseConv2D",) or pool else int(args.get("filters", c))
            if kind == "Conv2D":
                macs += oh * ow * filters * kh * kw * c
            elif kind == "DepthwiseConv2D":
                macs += oh * ow * c * kh * kw
            elif kind == "SeparableConv2D":
                macs += oh * ow * (c * kh * kw + c * filters)
            shape = (oh, ow, filters)
        elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            shape = (shape[-1],)
        elif kind == "Flatten":
            shape = (math.prod(shape),)
        elif kind == "Dense":
            units = int(args.get("units", 0))
            macs += math.prod(shape) * units
            shape = (*shape[:-1], units)
        elif kind == "Resizing":
            shape = (int(args.get("height", shape[0])), int(args.get("width", shape[1])), shape[-1])
        elif kind not in _SAME_SHAPE:
            return None
    return macs


def step_macs(cfg) -> int | None:
    """Forward multiply-adds of one replica's training step, from the config (None: not known)."""
    try:
        macs = model_macs(cfg)
    except (TypeError, ValueError, ArithmeticError):  # values validation refuses next, with their lines
        macs = None
    if macs is None:
        return None
    return macs * max(1, cfg.train.batch_size // (cfg.runtime.cpu_devices or 1))


def setup_runtime(cfg: RuntimeConfig, has_convolutions: bool, small: bool = False,
                  step_cost: int | None = None, cpu: CpuInfo | None = None) -> Runtime:
    """Configure TensorFlow for this job and return the strategy to train under.

    `step_cost` (see step_macs()) and the CPU's kernels pick the thread layout;
    without it, `small` (see small_model()) does.
    """
    import tensorflow as tf

    cpu = cpu or read_cpu()
    gpus = tf.config.list_physical_devices("GPU")  # listing starts nothing: thread pools can still be set
    tpu_name = os.environ.get("TPU_NAME")
    if cfg.device == "gpu" and not gpus:
        found = ", ".join(d.name for d in tf.config.list_physical_devices()) or "nothing"
        raise CnnError(f"device `gpu` was requested but TensorFlow sees no GPU (found: {found}); "
                       "use --device cpu, or install the GPU build with pip install 'cnncli[gpu]'")
    if cfg.device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    device = "tpu" if cfg.distribute == "tpu" else ("gpu" if gpus else "cpu")
    precision, reason = choose_precision(cfg.precision, device, has_convolutions,
                                         _gpu_capability(tf, gpus) if gpus else None,
                                         cpu.flags, cpu.onednn_cap)
    if precision == "mixed_float16" and device == "cpu":
        raise CnnError("precision `mixed_float16` needs a GPU; on a CPU use `mixed_bfloat16` or `float32`")

    intra, inter, threads_reason = choose_threads(cpu.cores, cpu.isa, precision, step_cost, small)
    if cfg.intra_op_threads is not None or cfg.inter_op_threads is not None:
        threads_reason = "set in the config"
    intra = cfg.intra_op_threads if cfg.intra_op_threads is not None else intra
    inter = cfg.inter_op_threads if cfg.inter_op_threads is not None else inter
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already started in this process (a second job in one Python): keep its pools
        threads_reason = "TensorFlow had already started in this process: its thread pools were kept"
    threads = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads() or intra,
               "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or inter,
               "reason": threads_reason, "step_macs": step_cost}

    configure_gpus(tf, gpus)
    if device == "cpu" and cfg.cpu_devices:
        cpu_device = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu_device, [tf.config.LogicalDeviceConfiguration() for _ in range(cfg.cpu_devices)])

    strategy, is_chief, worker_index, num_workers = _strategy(tf, cfg, gpus, tpu_name)
    import keras

    keras.mixed_precision.set_global_policy(precision)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU", "TPU")]
    return Runtime(strategy, device, devices, precision, reason, strategy.num_replicas_in_sync,
                   is_chief, worker_index, num_workers, threads, cpu.as_json())


def check_global_batch(batch_size: int, replicas: int) -> None:
    """train.batch_size is the global batch: every replica takes an equal share of each step."""
    if batch_size % replicas:
        raise CnnError(f"train.batch_size {batch_size} is the global batch, split evenly across {replicas} "
                       f"replicas; use a multiple of {replicas}, e.g. {max(replicas, batch_size // replicas * replicas)}")


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
        _quiet_native_errors()
        _configure_heartbeats(tf, cfg.collective_timeout)
        # Reads TF_CONFIG itself; all-reduce over gRPC between hosts (NCCL within a host's GPUs).
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy, role.is_chief, role.index, role.num_workers
    # TPU: wired through the same loop; not exercised on this project's CI machines.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver), True, 0, 1


# ---------------------------------------------------------------- multi-worker: heartbeats, a lost worker

def _configure_heartbeats(tf, timeout: float) -> None:
    """TensorFlow's coordination service, as MultiWorkerMirroredStrategy would set it up, with our timeouts.

    Every task sends heartbeats to the service (on the chief); a task silent for
    `timeout` seconds (killed, frozen, cut off) is declared unhealthy and every
    pending collective of the others is aborted with UnavailableError, which
    lost_worker() turns into one line. The strategy configures the service only
    when nothing has (collective_all_reduce_strategy.py), so this must come first.
    A timeout per collective (CommunicationOptions.timeout_seconds) is not set:
    it would also abort a healthy run whose chief is busy writing a checkpoint.
    """
    from cnncli import compat

    compat.configure_heartbeats(tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec(), timeout)


def _quiet_native_errors() -> None:
    """When a worker is lost, TensorFlow's C++ logs a dozen lines to file descriptor 2 before Python
    sees the error; send descriptor 2 to /dev/null and keep Python's stderr on the real one, so the
    user reads one line. TF_CPP_MIN_LOG_LEVEL=0 or 1 (asking for TensorFlow's logs) keeps them."""
    import sys

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return
    sys.stderr.flush()
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")


_RUN_DIR_KEY = "cnncli/run_dir"


def publish_run_dir(run_dir) -> None:
    """The chief tells the other workers where the run directory is (the coordination service's key-value
    store), so that they print the directory that exists and, should a worker be lost, the one to resume."""
    from cnncli import compat

    compat.set_cluster_value(_RUN_DIR_KEY, str(run_dir))


def chief_run_dir() -> str | None:
    """The chief's run directory (waits until the chief has made it; fails if the chief is lost meanwhile);
    None where TensorFlow offers no way to ask."""
    from cnncli import compat

    return compat.get_cluster_value(_RUN_DIR_KEY)


_UNHEALTHY = re.compile(r"unhealthy \(([^)]*)\):\s*/job:(\w+)/replica:\d+/task:(\d+)")
_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")


def lost_worker(exc: Exception, run_dir) -> CnnError | None:
    """The one-line error for a TensorFlow error that says another task of the cluster is gone, else None."""
    role = cluster_role(os.environ.get("TF_CONFIG"))
    message = getattr(exc, "message", None) or str(exc)
    found = _UNHEALTHY.search(message)
    if found:
        reason, job, index = found.groups()
    elif "CoordinationService/Heartbeat" in message:  # the service itself, on the chief, stopped answering
        job, index = _service_leader()
        reason = "stopped answering heartbeats"
    else:
        others = [m for m in _TASK.finditer(message) if (m.group(1), int(m.group(2))) != (role.task_type, role.index)]
        if not others or type(exc).__name__ not in ("UnavailableError", "DeadlineExceededError", "AbortedError",
                                                   "CancelledError", "InternalError"):
            return None
        job, index = others[0].groups()
        reason = message.strip().splitlines()[0].split(" [")[0][-120:]
    return WorkerLost(f"lost {job} {index} ({type(exc).__name__}: {reason}); "
                      f"run the same command with --resume {run_dir} on every worker")


def _service_leader() -> tuple[str, str]:
    """The task that runs TensorFlow's coordination service: the chief, else worker 0."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except ValueError:
        cluster = {}
    return ("chief", "0") if cluster.get("chief") else ("worker", "0")


class WorkerLost(CnnError):
    """Another process of a multi-worker run died or stopped answering; the run directory is resumable."""
