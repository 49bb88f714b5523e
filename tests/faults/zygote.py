"""A warm parent for the crash tests: imports TensorFlow once, forks one child per `cnn` command.

A crash test runs two or three real processes (the one that is killed, the
resume, sometimes an export), and importing TensorFlow alone takes 5-10 s on a
loaded 2-core machine. This process imports everything first, runs no
TensorFlow op (so it has no threads and forking is safe), then forks a child
per command. Each child is a real process running `cnncli.cli.main()`: it can
be killed with -9, receives signals and exits with its own status.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.

    {"op": "spawn", "argv": [...], "cwd": dir, "env": {...}, "stdout": file, "stderr": file, "umask": 18}
        -> {"pid": n}
    {"op": "wait", "pid": n, "timeout": seconds}
        -> {"status": code}   (0..255, or -signal when killed by a signal)  or  {"timeout": true}

In a child, CNNCLI_TEST_WRAP="module:attribute=point;..." wraps functions of
libraries (TensorFlow's checkpoint merge, the exporter's steps) so that
cnncli.faults.point(point) runs before them: fault points where cnncli has no
line of its own.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # the CLI hides TF's C++ start-up lines by redirecting fd 2 at import,
# which happens here, not in the child: silence them at the source instead
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # numpy's BLAS would otherwise start a thread pool at import
# pyarrow (imported by pandas, which TensorFlow and Keras import when installed) bundles jemalloc, whose
# background purging thread starts at load: turn it off, or the zygote would not be single-threaded
os.environ["JE_ARROW_MALLOC_CONF"] = "background_thread:false"


def _warm_up() -> None:
    # Everything a `cnn train` / `cnn export` command imports, minus any op execution.
    import keras  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import tensorflow  # noqa: F401
    from tensorflow.python.ops import gen_io_ops  # noqa: F401

    for name in ("cnncli.cli", "cnncli.train.job", "cnncli.train.session", "cnncli.train.loop", "cnncli.model.builder",
                 "cnncli.config.vocabulary",
                 "cnncli.config.learning", "cnncli.data", "cnncli.model.scores", "cnncli.plots",
                 "cnncli.deploy.export",
                 "cnncli.deploy.artifacts", "cnncli.deploy.runs", "cnncli.train.runtime", "cnncli.train.decisions",
                 "cnncli.train.cluster", "cnncli.train.progress"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a module another change has not landed yet: the child imports what it needs


def _wrap(spec: str) -> None:
    from cnncli import faults

    for item in filter(None, spec.split(";")):
        target, _, point = item.partition("=")
        module_name, _, attribute = target.partition(":")
        owner = importlib.import_module(module_name)
        *path, last = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, last)

        def wrapped(*args, __real=real, __point=point, **kwargs):
            faults.point(__point)
            return __real(*args, **kwargs)

        setattr(owner, last, wrapped)


def _child(request: dict) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            target = os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.umask(request.get("umask", 0o022))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from cnncli import cli, faults

        faults.reset()
        _wrap(os.environ.get("CNNCLI_TEST_WRAP", ""))
        sys.argv = ["cnn", *request["argv"]]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:  # escaped the CLI's handler: shown as Python would show it
            traceback.print_exc()
            code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"status": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            return {"timeout": True}
        time.sleep(0.02)


def main() -> None:
    _warm_up()
    reply = sys.stdout
    reply.write(json.dumps({"ready": True, "tasks": len(os.listdir("/proc/self/task"))}) + "\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            reply.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer = {"pid": pid}
        elif request["op"] == "wait":
            answer = _wait(request["pid"], request["timeout"])
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
