"""Multi-worker jobs: this process's role from TF_CONFIG, heartbeats, the chief's run directory shared with
the other workers, and a lost worker turned into one line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.config.schema import RuntimeConfig
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
    task_type, index, members = _read_tf_config(raw)
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and not members["chief"])
    return ClusterRole(task_type, index, len(members["chief"]) + len(members["worker"]), is_chief)


def _read_tf_config(raw: str | None) -> tuple[str, int, dict[str, list[str]]]:
    """This task's type and index, and the addresses of the tasks that train, by type."""
    if not raw:
        raise CnnError(
            "runtime.distribute is `multi_worker` but TF_CONFIG is not set; "
            "see docs/training.md, 'Scaling out', for the cluster and task it must name"
        )
    expected = (
        'expected e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    )
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, index = task["type"], int(task["index"])
        members = {kind: list(cluster.get(kind, [])) for kind in ("chief", "worker")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CnnError(f"TF_CONFIG is not valid ({type(exc).__name__}: {exc}); {expected}") from None
    if task_type not in members:
        raise CnnError(
            f"TF_CONFIG task type `{task_type}` cannot train here: multi_worker runs tasks of "
            "type `chief` and `worker` (an `evaluator` or `ps` task is not supported)"
        )
    if not 0 <= index < len(members[task_type]):
        raise CnnError(
            f"TF_CONFIG task index {index} is outside the cluster's {len(members[task_type])} `{task_type}` address(es)"
        )
    if len(members["chief"]) > 1:
        raise CnnError("TF_CONFIG lists more than one `chief`; name one, or none (then worker 0 is the chief)")
    return task_type, index, members


def process_role(cfg: RuntimeConfig) -> ClusterRole:
    """Whether this process writes the run directory; knowable before TensorFlow starts."""
    return cluster_role(os.environ.get("TF_CONFIG")) if cfg.distribute == "multi_worker" else SINGLE


_PROBE_EVERY = 0.25  # seconds between two rounds of connection attempts; signals are handled in between
_CONNECT_TIMEOUT = 1.0  # seconds one connection attempt may take (an address that drops packets)


def wait_for_cluster(timeout: float) -> None:
    """Wait, in Python, until every other task of TF_CONFIG's cluster accepts connections at its address.

    TensorFlow waits for the cluster in C++ (enable_collective_ops), where it prints nothing, has no
    deadline and never returns to Python, so SIGTERM and Ctrl-C are ignored until every task has come.
    Here the wait is a loop of plain connection attempts: it names whom it waits for, gives up after
    runtime.cluster_timeout, and stops on a signal between two attempts. Meanwhile this task listens at
    its own port, so that the others' loops see it before TensorFlow's server starts there.
    """
    task_type, index, members = _read_tf_config(os.environ.get("TF_CONFIG"))
    peers = [
        (f"{job} {i}", address)
        for job in ("chief", "worker")
        for i, address in enumerate(members[job])
        if (job, i) != (task_type, index)
    ]
    for name, address in peers:
        _host_port(name, address)  # a malformed address fails before any wait
    with _listening(f"{task_type} {index}", members[task_type][index]) as listener:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            peers = [(name, address) for name, address in peers if not _answers(address)]
            if not peers:
                return
            missing = ", ".join(f"{name} at {address}" for name, address in peers)
            if time.monotonic() >= deadline:
                raise CnnError(
                    f"{missing} did not answer within {timeout:g} s (runtime.cluster_timeout); start "
                    "`cnn train` there with the same config and its own TF_CONFIG task, or correct "
                    "TF_CONFIG's cluster addresses"
                )
            if not told:
                print(
                    f"waiting for {missing} (up to {timeout:g} s, runtime.cluster_timeout)", file=sys.stderr, flush=True
                )
                told = True
            _drain(listener)
            time.sleep(_PROBE_EVERY)


def _host_port(name: str, address: str) -> tuple[str, int]:
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit():
        raise CnnError(f"TF_CONFIG's address of {name}, `{address}`, is not host:port")
    return host.strip("[]"), int(port)  # [::1]:2222 is an IPv6 host


def _answers(address: str) -> bool:
    try:
        with socket.create_connection(_host_port("", address), timeout=_CONNECT_TIMEOUT):
            return True
    except OSError:  # refused, unreachable, unknown host, timed out: not there yet
        return False


@contextlib.contextmanager
def _listening(name: str, address: str):
    """A listening socket at this task's port (every interface, as TensorFlow's server binds), closed before
    TensorFlow starts its own server there."""
    _, port = _host_port(name, address)
    try:
        if socket.has_dualstack_ipv6():
            listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            listener = socket.create_server(("", port))
    except OSError as exc:
        raise CnnError(
            f"this task ({name}) cannot listen at {address}, its address in TF_CONFIG "
            f"({exc.strerror or exc}); another process holds port {port}?"
        ) from None
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def _drain(listener: socket.socket) -> None:
    """Close the connections the other tasks' probes made, so the accept queue never fills."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # nothing waiting (BlockingIOError), or any other failure: nothing to close
            return
        conn.close()


def take_back_sigterm() -> None:
    """Give SIGTERM back to Python once MultiWorkerMirroredStrategy has started.

    TensorFlow's coordination service installs its own SIGTERM handler (tsl's SigtermNotifier, for
    preemption checkpoints, which cnncli does not use); SIGTERM then does nothing at all and a worker
    can only be killed. Installed again, Python's handler (train/job.py's _StopSignal) stops the run at
    the next chunk boundary, resumable, exit 130, as on one machine.
    """
    import signal
    import threading

    handler = signal.getsignal(signal.SIGTERM)  # what Python last installed; None if not Python's
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def configure_heartbeats(tf: Any, timeout: float) -> None:
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


def quiet_native_errors() -> None:
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


def publish_run_dir(run_dir: str | Path) -> None:
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


def lost_worker(exc: Exception, run_dir: str | Path | None) -> CnnError | None:
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
        if not others or type(exc).__name__ not in (
            "UnavailableError",
            "DeadlineExceededError",
            "AbortedError",
            "CancelledError",
            "InternalError",
        ):
            return None
        job, index = others[0].groups()
        reason = _first_words(message)
    return WorkerLost(
        f"lost {job} {index} ({type(exc).__name__}: {reason}); "
        f"run the same command with --resume {run_dir} on every worker"
    )


_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")  # where in the graph: TensorFlow's, not the reader's
REASON_CHARS = 160


def _first_words(message: str) -> str:
    """The first line of a TensorFlow error, without its graph location and op name, cut at a word."""
    line = _FUNCTION_NODE.sub("", message.strip()).strip().splitlines()[0].split(" [")[0].strip()
    return line if len(line) <= REASON_CHARS else line[:REASON_CHARS].rsplit(" ", 1)[0] + " …"


def _service_leader() -> tuple[str, str]:
    """The task that runs TensorFlow's coordination service: the chief, else worker 0."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except ValueError:
        cluster = {}
    return ("chief", "0") if cluster.get("chief") else ("worker", "0")


class WorkerLost(CnnError):
    """Another process of a multi-worker run died or stopped answering; the run directory is resumable."""
