"""Distributed training end to end through `cnn train`: MirroredStrategy over two
logical CPU devices, and MultiWorkerMirroredStrategy over two processes on
127.0.0.1 (ports chosen free at run time), including a resume after both
workers were killed mid-run and (slow) after one worker was killed or frozen
while the other waited in an all-reduce.

Every run is a subprocess with a timeout: logical devices and a cluster can
only be set up before TensorFlow starts, and a broken all-reduce would hang
rather than fail. The config is tiny (3 shapes classes, 16×16, 1,080 training
images, 4 epochs, float32) so the module takes about a minute on 2 cores.

Tolerance: a distributed run computes the same mean gradient over the same
global batches as one device, but drops the last partial batch of each epoch
and sums in another order; after 4 epochs its test accuracy is within 5 points
of the single-device run's (measured: 0.810 vs 0.817 on 300 test images).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import free_ports, small_config, worker_env

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds per run; a hung collective fails the test instead of the suite
ACCURACY_TOLERANCE = 0.05

CONFIG = small_config({  # enough shapes and epochs that one worker and two learn alike, within the tolerance
    "name": "dist", "data.validation_split": 0.1,
    "data.shapes": {"classes": ["x", "o", "square"], "train_examples": 1200, "test_examples": 300},
    "model.layers": [{"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
                     {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"},
                     {"type": "Dense", "units": 32, "activation": "relu"},
                     {"type": "Dense", "units": 3, "activation": "softmax"}],
    "train": {"epochs": 4, "optimizer": {"type": "Adam", "learning_rate": 0.003}},
})


def cnn(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env or worker_env(), cwd=ROOT)


def train_json(config: Path, output: Path, *sets: str) -> dict:
    args = ["train", str(config), "--output", str(output), "--json"]
    for s in sets:
        args += ["--set", s]
    proc = cnn(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def multi_worker(args: list[str], output: Path, worker_dir: Path | None, fault: str | None = None,
                 faults: dict[int, str] | None = None, tmp: Path | None = None, output_format: str = "--json") -> list:
    """Both workers of a 2-process cluster, started together; their CompletedProcess-like results.

    `fault` is armed in both workers, `faults` per worker index. A worker that stopped itself
    (the `stop` fault action) is killed once the other has ended: its result is exit -9.
    """
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        extra = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        if worker_dir is not None:
            extra["CNNCLI_WORKER_DIR"] = str(worker_dir)
        if tmp is not None:
            extra["TMPDIR"] = str(tmp)
        if fault or (faults or {}).get(index):
            extra["CNNCLI_FAULT"] = (faults or {}).get(index) or fault
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "cnncli", *args, "--output", str(output), output_format,
             "--set", "runtime.distribute=multi_worker"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(**extra), cwd=ROOT))
    results = [None, None]
    deadline = time.monotonic() + 2 * TIMEOUT  # a hung cluster fails the test instead of the suite
    try:
        while None in results:
            assert time.monotonic() < deadline, "the cluster did not end"
            running = [i for i in (0, 1) if results[i] is None]
            for i in running:
                if len(running) == 1 and _stopped(procs[i].pid):  # the other ended: nothing will wake it
                    procs[i].kill()
                try:
                    out, err = procs[i].communicate(timeout=1 if len(running) == 2 else TIMEOUT)
                except subprocess.TimeoutExpired:
                    continue
                results[i] = subprocess.CompletedProcess(procs[i].args, procs[i].returncode, out, err)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def weights(model_path: Path) -> list[np.ndarray]:
    import keras

    import cnncli.model.preprocessing  # noqa: F401  registers cnncli's layers

    return keras.models.load_model(model_path, compile=False).get_weights()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_array_equal(x, y)  # all-reduce hands every worker the same sums: bit for bit


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distributed")
    (path / "dist.yaml").write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def single(work) -> dict:
    return train_json(work / "dist.yaml", work / "single")


@pytest.fixture(scope="module")
def mirrored(work) -> dict:
    return train_json(work / "dist.yaml", work / "mirrored", "runtime.distribute=mirrored", "runtime.cpu_devices=2")


@pytest.fixture(scope="module")
def cluster(work) -> dict:
    results = multi_worker(["train", str(work / "dist.yaml")], work / "mw", work / "mw-workers")
    for index, r in enumerate(results):
        assert r.returncode == 0, f"worker {index} exit {r.returncode}:\n{r.stderr[-3000:]}"
    return {"chief": json.loads(results[0].stdout), "worker": json.loads(results[1].stdout)}


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_mirrored_over_two_cpu_devices(single, mirrored):
    runtime = mirrored["runtime"]
    assert runtime["strategy"] == "MirroredStrategy"
    assert runtime["replicas"] == 2 and len(runtime["devices"]) == 2
    run = json.loads((Path(mirrored["run_dir"]) / "run.json").read_text())
    assert run["runtime"]["replicas"] == 2 and run["status"] == "complete"
    assert (Path(mirrored["run_dir"]) / "model.keras").exists()
    single_acc, mirrored_acc = single["metrics"]["test"]["accuracy"], mirrored["metrics"]["test"]["accuracy"]
    assert abs(single_acc - mirrored_acc) <= ACCURACY_TOLERANCE, (single_acc, mirrored_acc)
    assert mirrored_acc > 0.6  # it learned: chance is 1/3


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_multi_worker_both_finish_with_identical_weights(work, cluster, single):
    chief, worker = cluster["chief"], cluster["worker"]
    assert chief["runtime"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert chief["runtime"]["workers"] == 2 and chief["runtime"]["replicas"] == 2
    chief_dir, worker_dir = Path(chief["run_dir"]), Path(worker["run_dir"])
    assert chief_dir.parent.parent == work / "mw"  # the chief writes the run directory ...
    assert worker_dir.is_relative_to(work / "mw-workers")  # ... the other worker only its own debugging copy
    assert [p.name for p in (work / "mw").iterdir()] == ["dist"] and len(list((work / "mw" / "dist").iterdir())) == 1
    assert_same_weights(chief_dir / "model.keras", worker_dir / "model.keras")
    assert chief["metrics"]["test"] == worker["metrics"]["test"]
    acc = chief["metrics"]["test"]["accuracy"]
    assert abs(acc - single["metrics"]["test"]["accuracy"]) <= ACCURACY_TOLERANCE, acc


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_multi_worker_matches_mirrored(cluster, mirrored):
    """Two processes with one replica each compute what one process with two replicas does."""
    chief_history = Path(cluster["chief"]["run_dir"]) / "history.csv"
    mirrored_history = Path(mirrored["run_dir"]) / "history.csv"
    a = np.genfromtxt(chief_history, delimiter=",", names=True)
    b = np.genfromtxt(mirrored_history, delimiter=",", names=True)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    np.testing.assert_allclose(a["val_accuracy"], b["val_accuracy"], atol=1e-6)


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_multi_worker_resume_after_both_workers_died(work, cluster):
    """Killed after epoch 2's checkpoint, resumed on a new cluster: the same model as the uninterrupted run."""
    out = work / "mw-resume"
    killed = multi_worker(["train", str(work / "dist.yaml")], out, work / "mw-resume-workers",
                          fault="state_written@2")
    assert [r.returncode for r in killed] == [-9, -9], [r.stderr[-2000:] for r in killed]
    (run_dir,) = (out / "dist").iterdir()
    assert json.loads((run_dir / "checkpoints" / "state.json").read_text())["phase_epochs_done"] == 2
    resumed = multi_worker(["train", "--resume", str(run_dir)], out, work / "mw-resume-workers")
    for index, r in enumerate(resumed):
        assert r.returncode == 0, f"worker {index} exit {r.returncode}:\n{r.stderr[-3000:]}"
    chief, worker = (json.loads(r.stdout) for r in resumed)
    assert Path(chief["run_dir"]) == run_dir
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 1 + 4
    assert_same_weights(run_dir / "model.keras", Path(worker["run_dir"]) / "model.keras")
    # The epoch order is a function of (seed, epoch) and the checkpoint holds the optimizer's state.
    uninterrupted = Path(cluster["chief"]["run_dir"]) / "model.keras"
    for x, y in zip(weights(run_dir / "model.keras"), weights(uninterrupted), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


LOST = re.compile(r"Error: lost worker (\d) \((UnavailableError|DeadlineExceededError): stopped (?:sending|answering) "
                  r"heartbeats\); run the same command with --resume (\S+) on every worker\n")

# (worker, its fault, epochs committed when the other has ended); counts are per process
LOSSES = [
    (1, "epoch_trained@2", 2),  # worker 1 killed after epoch 2's steps: the chief commits epoch 2, waits in epoch 3
    (0, "epoch_trained@1:stop", 2),  # the chief (and TensorFlow's coordination service) frozen before committing 3
    (1, "epoch_trained@1:stop", 3),  # worker 1 frozen after epoch 3's steps: the chief commits 3, waits in epoch 4
]


@pytest.mark.slow  # four 2-process runs, three of them waiting out the heartbeat timeout: ~4 minutes on 2 cores
def test_a_lost_worker_ends_the_other_with_one_line_and_the_run_resumes(work, cluster, tmp_path):
    """One worker is killed (kill -9) or frozen (SIGSTOP) at a fault point, three times over, each on a resume of
    the last; the other waits in an all-reduce until TensorFlow's heartbeats declare its peer gone, and ends with
    one line naming the way back. Resumed once more, the run completes as the uninterrupted one."""
    config = work / "dist.yaml"
    timeout = ["--set", "runtime.collective_timeout=10"]
    run_dir = None
    for lost_index, fault, committed in LOSSES:
        args = ["train", "--resume", str(run_dir)] if run_dir else ["train", str(config)]
        results = multi_worker(args + timeout, tmp_path / "runs", None, faults={lost_index: fault}, tmp=tmp_path,
                               output_format="--quiet")
        lost, survivor = results[lost_index], results[1 - lost_index]
        assert lost.returncode == -9, (fault, lost.stderr[-2000:])
        assert survivor.returncode == 1, (fault, survivor.stderr[-3000:])
        # Besides the error, only the line naming a peer that was slower to start (cnncli.train.cluster).
        found = LOST.fullmatch(re.sub(r"(?m)^waiting for .*\n", "", survivor.stderr))
        assert found, (fault, survivor.stderr[-3000:])
        assert int(found.group(1)) == lost_index
        run_dir = Path(found.group(3))  # the chief's run directory, whichever worker says it
        assert run_dir.parent.parent == tmp_path / "runs"
        assert json.loads((run_dir / "checkpoints" / "state.json").read_text())["phase_epochs_done"] == committed
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    clean_tmp = tmp_path / "tmp"
    clean_tmp.mkdir()
    resumed = multi_worker(["train", "--resume", str(run_dir)] + timeout, tmp_path / "runs", None, tmp=clean_tmp,
                           output_format="--quiet")
    for index, r in enumerate(resumed):
        assert r.returncode == 0, f"worker {index} exit {r.returncode}:\n{r.stderr[-3000:]}"
        assert r.stdout == f"{run_dir}\n"  # both name the chief's run directory, the one that exists
    assert list(clean_tmp.iterdir()) == []  # worker 1's temporary directory is gone
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 1 + 4
    uninterrupted = Path(cluster["chief"]["run_dir"]) / "model.keras"
    for x, y in zip(weights(run_dir / "model.keras"), weights(uninterrupted), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_an_uneven_global_batch_is_reported_before_the_data_loads(work):
    proc = cnn(["train", str(work / "dist.yaml"), "--output", str(work / "uneven"), "--set", "train.batch_size=33",
                "--set", "runtime.distribute=mirrored", "--set", "runtime.cpu_devices=2"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr == ("Error: train.batch_size 33 is the global batch, split evenly across 2 replicas; "
                           "use a multiple of 2, e.g. 32\n")
    assert "data shapes" not in proc.stdout and "replica(s)" in proc.stdout  # after the devices, before the data
    assert not (work / "uneven").exists()


AGGREGATION = textwrap.dedent("""
    import json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from cnncli.train.loop import Trainer
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (400, 8, 8, 1)).astype(np.uint8)
    y = rng.integers(0, 3, 400)
    with strategy.scope():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                                  keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
        optimizer = keras.optimizers.SGD(0.0)  # the weights stay put: the epoch's metrics are the model's
        optimizer.build(model.trainable_variables)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    trainer = Trainer(model, optimizer, keras.losses.get("sparse_categorical_crossentropy"), metrics,
                      strategy, 40, seed=1)
    trainer.set_data(x, y)
    logs = trainer.train_epoch(0).logs
    p = model.predict(x.astype("float32"), verbose=0)
    try:  # a global batch that does not split evenly across the 2 replicas
        Trainer(model, optimizer, keras.losses.get("sparse_categorical_crossentropy"), metrics, strategy, 41, seed=1)
        uneven = None
    except Exception as exc:
        uneven = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"logs": logs, "loss": float(np.mean(keras.losses.sparse_categorical_crossentropy(y, p))),
                      "accuracy": float(np.mean(p.argmax(1) == y)), "uneven": uneven}))
""")


@pytest.fixture(scope="module")
def two_replica_trainer() -> dict:
    proc = subprocess.run([sys.executable, "-c", AGGREGATION], capture_output=True, text=True, timeout=TIMEOUT,
                          env=worker_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_metrics_are_aggregated_over_all_replicas(two_replica_trainer):
    """Loss and accuracy of an epoch on 2 replicas are over all 400 examples, not one replica's half."""
    result = two_replica_trainer
    assert result["logs"]["loss"] == pytest.approx(result["loss"], rel=1e-5)
    assert result["logs"]["accuracy"] == pytest.approx(result["accuracy"], abs=1e-6)


def test_batch_must_split_evenly_across_replicas(two_replica_trainer):
    assert two_replica_trainer["uneven"] == ("CnnError: train.batch_size 41 is the global batch, split evenly "
                                             "across 2 replicas; use a multiple of 2, e.g. 40")


# What TensorFlow 2.21 raised in the chief when worker 1 was killed (and, the same, when it was SIGSTOPped).
HEARTBEAT_ERROR = (
    "{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/replica:0/task:0/device:CPU:0}}"
    " Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy "
    "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed. Check the task logs for an "
    "earlier error, or scheduler events (e.g. preemption, eviction) to debug further.\nThe error could be from a "
    "previous operation. Restart your program to reset. [Op:CollectiveReduceV2] name: ")


def _tf_error(kind: str, message: str) -> Exception:
    return type(kind, (Exception,), {"message": message})(message)


def _as_worker(monkeypatch, index: int) -> None:
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": index}}))


def test_lost_worker_names_the_task_and_the_way_back(monkeypatch):
    from cnncli.train.cluster import lost_worker

    _as_worker(monkeypatch, 0)
    lost = lost_worker(_tf_error("UnavailableError", HEARTBEAT_ERROR), "runs/dist/1")
    assert str(lost) == ("lost worker 1 (UnavailableError: stopped sending heartbeats); "
                         "run the same command with --resume runs/dist/1 on every worker")
    # The chief lost, seen from a worker: a connection error naming the other task.
    lost = lost_worker(_tf_error("UnavailableError", "failed to connect to all addresses; from /job:chief/task:0 "
                                 "[Op:CollectiveReduceV2]"), "RUN_DIR")
    assert str(lost).startswith("lost chief 0 (UnavailableError: failed to connect to all addresses; from")
    # The chief, which runs TensorFlow's coordination service, frozen: a worker's heartbeats go unanswered.
    frozen = ("{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/replica:0/task:1/"
              "device:CPU:0}} Collective ops is aborted by: Deadline Exceeded\n\nRPC: /tensorflow.CoordinationService/"
              "Heartbeat\nThe error could be from a previous operation. Restart your program to reset.")
    _as_worker(monkeypatch, 1)
    lost = lost_worker(_tf_error("DeadlineExceededError", frozen), "runs/dist/1")
    assert str(lost) == ("lost worker 0 (DeadlineExceededError: stopped answering heartbeats); "
                         "run the same command with --resume runs/dist/1 on every worker")
    # A long reason keeps its first words whole, without TensorFlow's graph location before them.
    _as_worker(monkeypatch, 0)
    long = ("{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/replica:0/task:0/device:CPU:0}} "
            "Socket closed by the peer while the collective was reading its tensors " + "and then some more " * 9
            + "from /job:worker/task:1 [Op:CollectiveReduceV2]")
    lost = str(lost_worker(_tf_error("UnavailableError", long), "RUN_DIR"))
    assert lost.startswith("lost worker 1 (UnavailableError: Socket closed by the peer while the collective")
    assert lost.endswith(" then …); run the same command with --resume RUN_DIR on every worker")  # a whole word
    assert len(lost.split(" (UnavailableError: ")[1].split(" …)")[0]) <= 160
    # Errors that do not name another task are not a lost worker (a bug, shown with its traceback).
    assert lost_worker(_tf_error("InvalidArgumentError", "shapes differ"), "x") is None
    assert lost_worker(_tf_error("UnavailableError", "at /job:worker/replica:0/task:0"), "x") is None


def test_collective_timeout_sets_the_heartbeat_timeout():
    """runtime.collective_timeout reaches TensorFlow's coordination service, which the strategy then keeps."""
    script = textwrap.dedent("""
        import json, os
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                              "task": {"type": "worker", "index": 1}})
        import tensorflow as tf
        from tensorflow.python.eager import context
        from cnncli.config.schema import RuntimeConfig
        from cnncli.train import cluster
        cluster.configure_heartbeats(tf, RuntimeConfig(collective_timeout=7.5).collective_timeout)
        config = context.context().coordination_service
        print(json.dumps({"heartbeat": config.heartbeat_timeout_in_ms, "barrier": config.shutdown_barrier_timeout_in_ms,
                          "leader": config.service_leader,
                          "jobs": [(j.name, j.num_tasks) for j in config.coordinated_job_list],
                          "default": RuntimeConfig().collective_timeout}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                          env=worker_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "heartbeat": 7500, "barrier": 7500, "leader": "/job:worker/replica:0/task:0", "jobs": [["worker", 2]],
        "default": 30.0}
