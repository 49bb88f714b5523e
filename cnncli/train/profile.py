"""`cnn train --profile N`: a TensorFlow profiler trace of N training steps, and where their time went.

The trace covers N steps of the first epoch, after one warm-up step (the first
call traces and optimizes the graph, which would swamp the figures). It is
written where TensorBoard's profile tab looks, `logs/plugins/profile/<time>/
<host>.xplane.pb`, and read back here: each op's time, summed by op type over
the compute threads, and the share of the steps' wall time spent in the ops
that bring the batch in (gathering it from the resident split, or the
`tf.data` iterator). A profiled run trains exactly as an unprofiled one: the
same steps in the same order, only split into one more call; its first
epoch's time includes the profiler's own cost.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnncli.train.loop import Trainer

from cnncli.fileio import absolute

# Op types that hand the step its batch: tf.data's iterators, and the gather and cast of
# the resident split at the top of the step loop (not inside a layer).
ITERATOR_OPS = {
    "IteratorGetNext",
    "IteratorGetNextSync",
    "MultiDeviceIteratorGetNextFromShard",
    "IteratorGetNextAsOptional",
}
LOOP_INPUT_OPS = {"GatherV2", "Cast", "StridedSlice"}
TOP_OPS = 12


@dataclass
class StepProfile:
    steps: int
    logdir: Path
    summary: dict = field(default_factory=dict)  # filled once the trace is read

    def attach(self, trainer: Trainer) -> None:
        """Profile steps 2..N+1 of the trainer's next epoch (step 1 builds the graph).

        The epoch's first calls become 1 step, then N, then the usual chunks;
        the trace starts and stops between them, at the trainer's chunk
        callbacks, so it holds exactly those N steps whichever way the batches
        arrive (resident, streamed, distributed).
        """
        chunk_sizes, train_epoch = trainer._chunk_sizes, trainer.train_epoch
        profile = self
        state = {"epoch": False, "tracing": False, "t0": 0.0, "done": 0}

        def sizes(steps: int) -> list[int]:
            out = chunk_sizes(steps)
            if not state["epoch"] or steps < 2:
                return out
            first = min(profile.steps, steps - 1)
            return [1, first] + _split(steps - 1 - first, out[0])

        def epoch(index, on_chunk=None):
            state["epoch"] = not profile.summary

            def chunk_done(done, steps, logs, seconds):
                if state["epoch"] and not state["tracing"] and done == 1:
                    profile._start()
                    state.update(tracing=True, t0=time.perf_counter(), done=done)
                elif state["tracing"]:
                    wall = time.perf_counter() - state["t0"]
                    profile._stop(done - state["done"], wall)
                    state.update(tracing=False, epoch=False)
                if on_chunk is not None:
                    on_chunk(done, steps, logs, seconds)

            try:
                return train_epoch(index, chunk_done)
            finally:
                if state["tracing"]:  # the epoch ended early (an error, a short stream): no summary
                    profile._stop(0, 0.0, summarize_trace=False)
                state.update(tracing=False, epoch=False)

        patched: Any = trainer  # this trainer's own train_epoch is replaced, on purpose
        patched._chunk_sizes, patched.train_epoch = sizes, epoch

    def _start(self) -> None:
        import tensorflow as tf

        self.logdir.mkdir(parents=True, exist_ok=True)
        tf.profiler.experimental.start(str(self.logdir))

    def _stop(self, steps: int, seconds: float, summarize_trace: bool = True) -> None:
        import tensorflow as tf

        tf.profiler.experimental.stop()
        if summarize_trace and steps:
            self.summary = summarize(latest_trace(self.logdir), steps, seconds)


def _split(steps: int, per_call: int) -> list[int]:
    out = []
    while steps > 0:
        out.append(min(per_call, steps))
        steps -= out[-1]
    return out


def latest_trace(logdir: Path) -> Path:
    """The newest TensorFlow profiler trace under `logdir`, or a CnnError when there is none."""
    traces = sorted(Path(logdir).glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
        from cnncli.errors import CnnError

        raise CnnError(f"the profiler wrote no .xplane.pb under {logdir}/plugins/profile")
    return traces[-1]


def op_times(trace: Path) -> dict[str, dict] | None:
    """{op type: {"ms", "count", "input_ms"}} summed over the host's TensorFlow compute threads; None where
    this TensorFlow has no reader for its own traces (compat.xspace)."""
    from cnncli import compat

    space = compat.xspace(Path(trace).read_bytes())
    if space is None:
        return None
    ops: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "count": 0, "input_ms": 0.0})
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "scope/op_name:OpType"
                if ":" not in name or "::" in name:
                    continue  # executor and thread-pool bookkeeping, not an op
                op_name, op_type = name.rsplit(":", 1)
                ms = event.duration_ps / 1e9
                entry = ops[op_type]
                entry["ms"] += ms
                entry["count"] += 1
                if is_input_op(op_name, op_type):
                    entry["input_ms"] += ms
    return dict(ops)


def is_input_op(op_name: str, op_type: str) -> bool:
    """Whether a traced op belongs to the input pipeline rather than the step."""
    if op_type in ITERATOR_OPS:
        return True
    scope = op_name.rsplit("/", 2)
    return op_type in LOOP_INPUT_OPS and len(scope) >= 2 and scope[-2] == "while"


def summarize(trace: Path, steps: int, seconds: float) -> dict:
    """Where the traced steps' time went (compute, input, idle), for run.json."""
    ops = op_times(trace)
    wall_ms = seconds * 1000
    if ops is None:
        return {
            "trace": absolute(trace),
            "steps": steps,
            "step_ms": round(wall_ms / max(1, steps), 2),
            "input_wait_share": None,
            "top_ops": None,
            "note": "this TensorFlow cannot read its profiler traces back (no tensorflow.tsl xplane_pb2): "
            "open logs/ in TensorBoard's profile tab",
        }
    total = sum(o["ms"] for o in ops.values()) or 1.0
    top = sorted(ops.items(), key=lambda kv: -kv[1]["ms"])[:TOP_OPS]
    input_ms = sum(o["input_ms"] for o in ops.values())
    return {
        "trace": absolute(trace),
        "steps": steps,
        "step_ms": round(wall_ms / max(1, steps), 2),
        "input_wait_share": round(min(1.0, input_ms / wall_ms), 4) if wall_ms else 0.0,
        "top_ops": [
            {
                "op": name,
                "ms_per_step": round(o["ms"] / max(1, steps), 3),
                "share": round(o["ms"] / total, 4),
                "count": o["count"],
            }
            for name, o in top
        ],
    }


def format_summary(summary: dict) -> list[str]:
    """The table `cnn train --profile` prints."""
    if summary["top_ops"] is None:
        return [
            f"profile: {summary['steps']} steps, {summary['step_ms']:.1f} ms a step; trace {summary['trace']}",
            f"  ({summary['note']})",
        ]
    lines = [
        f"profile: {summary['steps']} steps, {summary['step_ms']:.1f} ms a step, "
        f"{100 * summary['input_wait_share']:.1f}% of it waiting for input; trace {summary['trace']}",
        f"  {'op':36} {'ms/step':>9} {'share':>7} {'calls':>7}",
    ]
    for op in summary["top_ops"]:
        lines.append(f"  {op['op'][:36]:36} {op['ms_per_step']:>9.2f} {100 * op['share']:>6.1f}% {op['count']:>7}")
    lines.append("  (op time summed over threads; open logs/ in TensorBoard's profile tab for the timeline)")
    return lines
