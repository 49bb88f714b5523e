"""What `auto` decides from the machine and the model: the precision, and the thread layout.

From a CPU description (its model, ISA flags, cores and any cap put on oneDNN,
`read_cpu`), a GPU's compute capability, and the multiply-adds of a training
step estimated from the config before TensorFlow starts (`step_macs`). Nothing
here imports TensorFlow, so every decision is unit-tested from a recorded CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnncli.config.schema import Config


@dataclass(frozen=True)
class CpuInfo:
    """What `auto` decides from: the CPU's model, its ISA flags, its cores, and any cap put on oneDNN."""

    model: str
    flags: frozenset[str]
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
        """The CPU as run.json records it."""
        return {"model": self.model, "cores": self.cores, "isa": self.isa, "onednn_max_cpu_isa": self.onednn_cap}


# Ascending; the kernel families oneDNN dispatches to on x86 at run time.
ISA_LEVELS = ("sse4", "avx2", "avx512", "avx512_bf16", "amx")
# ONEDNN_MAX_CPU_ISA's values (oneDNN's "CPU dispatcher control") onto those levels.
_ONEDNN_CAPS = {
    "SSE41": "sse4",
    "AVX": "sse4",
    "AVX2": "avx2",
    "AVX2_VNNI": "avx2",
    "AVX2_VNNI_2": "avx2",
    "AVX512_CORE": "avx512",
    "AVX512_CORE_VNNI": "avx512",
    "AVX512_CORE_BF16": "avx512_bf16",
    "AVX512_CORE_FP16": "avx512_bf16",
    "AVX10_1_512": "avx512_bf16",
    "AVX512_CORE_AMX": "amx",
    "AVX512_CORE_AMX_FP16": "amx",
    "AVX10_1_512_AMX": "amx",
    "AVX10_1_512_AMX_FP16": "amx",
    "ALL": "amx",
}


def read_cpu(cpuinfo: str | None = None, cores: int | None = None, environ: Mapping[str, str] | None = None) -> CpuInfo:
    """This machine's CPU (or the one `cpuinfo`, the text of a /proc/cpuinfo, describes)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    model = "unknown"
    flags: frozenset[str] = frozenset()
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


def choose_precision(
    requested: str,
    device: str,
    has_convolutions: bool,
    gpu_capability: tuple[int, int] | None = None,
    flags: Set[str] | None = None,
    cap: str | None = None,
) -> tuple[str, str]:
    """The compute precision for `auto`, with the reason it was chosen.

    On a CPU it follows the kernels oneDNN will actually run: the CPU's flags
    (`flags`, else /proc/cpuinfo) lowered by ONEDNN_MAX_CPU_ISA (`cap`, else the
    environment). bfloat16 on a CPU without bfloat16 kernels is emulated, and slow.
    """
    if requested != "auto":
        return requested, "set in the config"
    if device == "gpu":
        capability = gpu_capability or (0, 0)
        major = capability[0]
        if major >= 8:
            return "mixed_bfloat16", f"GPU compute capability {capability[0]}.{capability[1]} supports bfloat16"
        if major >= 7:
            return "mixed_float16", (
                f"GPU compute capability {capability[0]}.{capability[1]}: float16 tensor cores, with loss scaling"
            )
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


_DATASET_SIDES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
SMALL_SIDE = 64  # pixels: course-size images
SMALL_CORES = 4  # the one-thread-per-op default is measured on 2 cores; beyond 4 it is not assumed


def small_model(cfg: Config) -> bool:
    """A course-size model (no backbone, images of at most 64 px a side), known from the config alone.

    Its ops (a 3×3 convolution over a batch of 32 28×28 images) are too small to
    split across cores; unknown sizes count as large.
    """
    return model_size(cfg)[0]


def model_size(cfg: Config) -> tuple[bool, str]:
    """(small_model(cfg), what it was judged by), for the thread line when the step's cost is unknown."""
    backbone = cfg.model.backbone
    if backbone is not None:
        # A backbone's layers are not in the config: its cost, not its image size, decides.
        what = backbone.name or f"from_run {backbone.from_run}"
        return False, f"a backbone ({what}), taken as a large model"
    side: int | None
    if cfg.model.input_shape:
        side = max(cfg.model.input_shape[:2])
    elif cfg.data.image_size:
        side = max(cfg.data.image_size)
    elif cfg.data.dataset == "shapes":
        side = cfg.data.shapes.image_size
    else:
        side = _DATASET_SIDES.get(cfg.data.dataset)
    if side is None:
        return False, "image size unknown, taken as a large model"
    small = side <= SMALL_SIDE
    return small, f"{'small' if small else 'large'} images ({side} px a side, small up to {SMALL_SIDE})"


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
MACS_PER_CYCLE = {
    ("sse4", "float32"): 4,
    ("avx2", "float32"): 16,
    ("avx512", "float32"): 32,
    ("avx512_bf16", "float32"): 32,
    ("amx", "float32"): 32,
    ("avx512_bf16", "mixed_bfloat16"): 64,
    ("amx", "mixed_bfloat16"): 256,
}
# A step whose multiply-adds keep one core busy for fewer cycles than this (about 7 ms at 3 GHz)
# has ops too small to split: one thread per op, ops side by side. Measured on 2 cores
# (oneDNN capped at AVX2 on a Sapphire Rapids, float32, img/s of the training steps):
# the LeNet-style CNN at batch 100 (1.4 G multiply-adds a step, 87 M cycles on AVX2)
# ran 960-990 with (2 threads per op, 1 op at a time), 870 with (2, 2), 340-670 with (1, 2);
# the batch-32 CNN (28 M, 1.8 M cycles) 4,270 with (1, 2), 3,290-3,740 with (2, 2),
# 3,440 with (2, 1). With AMX bfloat16 LeNet is 5.4 M cycles: earlier runs there had it
# level between the layouts and the small CNN +30-60% with one thread per op.
SPLIT_CYCLES = 20e6


def choose_threads(
    cores: int, isa: str, precision: str, step_macs: int | None, small: bool = True, size_reason: str | None = None
) -> tuple[int, int, str]:
    """(intra_op, inter_op, reason) when the config leaves them unset.

    The cost of a step (forward multiply-adds × batch) over the speed of the
    kernels this CPU runs says whether one op can keep every core busy. Small
    steps run each op on one thread and independent ops side by side (the
    backward pass always has two: a layer's weight and input gradients); big
    ones give every op all cores, one op at a time: two such ops at once only
    fight over the cores. A model whose cost the config does not tell (a
    backbone, a graph of layers) is judged by `small`, for the reason
    `size_reason` (see model_size()).
    """
    if cores <= 1:
        return 1, 1, "one core"
    if step_macs is None:
        intra, inter = default_threads(cores, small)
        why = size_reason or f"{'small' if small else 'large'} images"
        return intra, inter, f"cost unknown from the config: {why}"
    rate = MACS_PER_CYCLE.get((isa, precision), MACS_PER_CYCLE[("avx2", "float32")])
    cycles = step_macs / rate
    cost = (
        f"{step_macs / 1e6:,.0f} M multiply-adds a step at ~{rate}/cycle ({isa} {precision}): "
        f"{cycles / 1e6:.1f} M cycles"
    )
    if cycles >= SPLIT_CYCLES:
        return cores, 1, f"{cost}: each op on all {cores} cores, one op at a time"
    if cores > SMALL_CORES:
        return cores, 2, f"{cost}, but more than {SMALL_CORES} cores (not measured): TensorFlow's layout"
    return 1, cores, f"{cost}: too small to split, one thread per op, {cores} ops at once"


def threads_line(intra: int, inter: int, reason: str) -> str:
    """The line `cnn train` prints about its thread pools; 0 is TensorFlow's own choice, not zero threads."""

    def count(n: int) -> str:
        return "0 (TensorFlow's default)" if n == 0 else f"{n:,}"

    return f"threads {count(intra)} per op, {count(inter)} ops at once: {reason}"


def thread_warnings(intra: int | None, inter: int | None, cores: int) -> list[str]:
    """Warnings for thread counts set in the config that exceed the cores this process may run on:
    the extra threads only take turns on the same cores (and each op waits for its slowest share)."""
    warnings = []
    for key, value in (("intra_op_threads", intra), ("inter_op_threads", inter)):
        if value is not None and value > cores:
            warnings.append(
                f"runtime.{key} is {value:,} but this process may run on {cores} core(s): the extra "
                f"threads take turns on the same cores and slow training down; use at most {cores}, "
                "or 0 for TensorFlow's default"
            )
    return warnings


# Layers that keep their input's shape and do (next to) no multiply-adds.
_SAME_SHAPE = {
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "BatchNormalization",
    "LayerNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Softmax",
    "Rescaling",
    "Normalization",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "ActivityRegularization",
}
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


def model_macs(cfg: Config) -> int | None:
    """Forward multiply-adds per example of a plain stack of layers, from the config alone
    (before TensorFlow starts: its thread pools cannot change afterwards); None when the
    config does not tell (a backbone, a graph of layers, a layer type not known here)."""
    found = _input_shape(cfg)
    if cfg.model.backbone is not None or found is None:
        return None
    shape: tuple[int, ...] = found
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


def step_macs(cfg: Config) -> int | None:
    """Forward multiply-adds of one replica's training step, from the config (None: not known)."""
    try:
        macs = model_macs(cfg)
    except (TypeError, ValueError, ArithmeticError, LookupError):  # an estimate: unknown rather than a traceback
        macs = None
    if macs is None:
        return None
    return macs * max(1, cfg.train.batch_size // (cfg.runtime.cpu_devices or 1))
