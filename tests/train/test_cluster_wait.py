"""A multi-worker run whose other worker never comes: `cnn train` says whom it waits for, gives up
after runtime.cluster_timeout with one Error line, and stops on SIGTERM or Ctrl-C while it waits;
and once the cluster trains, SIGTERM still stops a worker (TensorFlow takes the signal for itself).

Every run is a subprocess bounded by a timeout (TensorFlow's own wait for the cluster has none), on
127.0.0.1, with the missing worker's port free: nothing listens there.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest
from helpers import ROOT, free_ports, worker_env

from cnncli.errors import CnnError
from cnncli.train import cluster

TIMEOUT = 120  # seconds per run: a hang fails the test instead of the suite

CONFIG = """\
name: lonely
data:
  dataset: shapes
  shapes: {image_size: 16, classes: [x, o], train_examples: 64, test_examples: 32}
model:
  layers:
    - {type: Flatten}
    - {type: Dense, units: 2, activation: softmax}
train: {epochs: 1, batch_size: 16}
runtime: {distribute: multi_worker, precision: float32}
"""


def _tf_config(ports: list[int], index: int = 0) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _start(tmp_path, ports: list[int], *sets: str, index: int = 0, **env) -> subprocess.Popen:
    (tmp_path / "lonely.yaml").write_text(CONFIG)
    args = [sys.executable, "-m", "cnncli", "train", str(tmp_path / "lonely.yaml"), "--output", str(tmp_path / "runs")]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=worker_env(TF_CONFIG=_tf_config(ports, index), **env), cwd=ROOT)


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_gives_up_after_cluster_timeout_naming_the_missing_worker(tmp_path):
    ports = free_ports(2)
    proc = _start(tmp_path, ports, "runtime.cluster_timeout=3")
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert f"waiting for worker 1 at 127.0.0.1:{ports[1]} (up to 3 s, runtime.cluster_timeout)" in err
    assert proc.returncode == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: worker 1 at 127.0.0.1:{ports[1]} did not answer within 3 s (runtime.cluster_timeout); "
                      "start `cnn train` there with the same config and its own TF_CONFIG task, "
                      "or correct TF_CONFIG's cluster addresses"], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_wait_with_exit_130(tmp_path, signum):
    ports = free_ports(2)
    proc = _start(tmp_path, ports)  # the default cluster_timeout, minutes: only the signal ends it in time
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = []
    try:
        while not any(line.startswith("waiting for worker 1") for line in seen):
            seen.append(lines.get(timeout=TIMEOUT))  # queue.Empty: the waiting line never came
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()
    assert f"waiting for worker 1 at 127.0.0.1:{ports[1]}" in seen[-1]


def test_malformed_peer_address_fails_before_any_wait(monkeypatch):
    port = free_ports(1)[0]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}", "hostwithoutport"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(CnnError, match="TF_CONFIG's address of worker 1, `hostwithoutport`, is not host:port"):
        cluster.wait_for_cluster(300)


def test_the_wait_ends_when_every_peer_listens(monkeypatch):
    own, peer = free_ports(2)
    monkeypatch.setenv("TF_CONFIG", _tf_config([own, peer]))
    with socket.create_server(("127.0.0.1", peer)):  # the other worker is up
        cluster.wait_for_cluster(5)  # returns at once, without a message or an error


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_sigterm_stops_a_worker_of_a_training_cluster(tmp_path):
    """TensorFlow's coordination service takes SIGTERM for its preemption notices, after which the signal did
    nothing; now worker 0 stops resumable (exit 130) and worker 1 says it lost worker 0."""
    ports = free_ports(2)
    procs = [_start(tmp_path, ports, "train.epochs=3", index=0, CNNCLI_FAULT="history_written:term"),
             _start(tmp_path, ports, "train.epochs=3", index=1)]
    try:
        results = [proc.communicate(timeout=2 * TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    (_, err0), (_, err1) = results
    assert procs[0].returncode == 130, err0[-2000:]
    assert "Error: stopped; the run is resumable from its last completed epoch: cnn train --resume " in err0
    assert procs[1].returncode == 1, err1[-2000:]
    assert "Error: lost worker 0 (" in err1
