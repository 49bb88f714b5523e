"""The micro-batcher of `cnn serve`: requests that arrive together run through the model as one batch.

One worker thread owns the model: every request hands its images (N, H, W, C)
to `submit` and waits on the future it gets back, so the model is never called
from two threads at once. The worker takes the first waiting request, then
keeps taking requests until the batch holds `max_batch` images or `max_wait_s`
has passed since the first one arrived, runs them through the one predict loop
(`Predictor.predict`) and hands each request its rows. A request larger than
`max_batch` runs as a batch of its own; `max_batch=1` runs every request alone.

A caller on an event loop (the server's routes) submits with `submit_async`:
the results of a whole batch reach its loop in one thread-safe call, not one
wake-up of the loop per request.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from cnncli import faults

_STOP = object()  # put on the queue by close(): the worker ends after the requests before it


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be 0 or more, got {max_wait_s}")
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self.on_batch = on_batch or (lambda size: None)  # told each batch's image count (the metrics)
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="cnn-serve-model", daemon=True)
        self._worker.start()

    def submit(self, images: np.ndarray) -> Future:
        """A future of `images`' (N, K) probabilities."""
        future: Future = Future()
        self._queue.put((images, future))
        return future

    def submit_async(self, images: np.ndarray) -> asyncio.Future:
        """`submit` for a coroutine: an asyncio future of the running loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((images, _OnLoop(loop, future)))
        return future

    def call(self, fn: Callable[[], object]) -> Future:
        """A future of `fn()`, run alone on the model's thread (Grad-CAM needs the model too)."""
        future: Future = Future()
        self._queue.put((fn, future))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Let the requests already submitted finish, then end the worker."""
        self._queue.put(_STOP)
        self._worker.join(timeout)

    # ---------------------------------------------------------------- the worker

    def _work(self) -> None:
        pending = None  # a request taken that did not fit the previous batch
        while True:
            first = pending if pending is not None else self._queue.get()
            pending = None
            if first is _STOP:
                return
            if callable(first[0]):
                self._call(*first)
                continue
            batch, size = [first], len(first[0])
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP or callable(item[0]) or size + len(item[0]) > self.max_batch:
                    pending = item  # next batch's first, or the stop after this batch
                    break
                batch.append(item)
                size += len(item[0])
            self._run(batch)

    def _call(self, fn, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    def _run(self, batch: list[tuple[np.ndarray, Future | _OnLoop]]) -> None:
        batch = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            faults.point("serve_batch")  # tests make a batch slow here (CNNCLI_FAULT=serve_batch:slow)
            probs = self.predict(np.concatenate([x for x, _ in batch]))
        except BaseException as exc:  # the worker must outlive any one batch
            _settle([(future, None, exc) for _, future in batch])
            return
        self.on_batch(len(probs))
        ends = np.cumsum([len(x) for x, _ in batch])
        _settle([(future, probs[end - len(x) : end], None) for (x, future), end in zip(batch, ends, strict=True)])


class _OnLoop:
    """An asyncio future of `loop`, as the worker sees it beside `concurrent.futures.Future`s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.loop, self.future = loop, future

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.cancelled()  # a request whose client went away is left out of the batch


def _settle(outcomes: list[tuple[Future | _OnLoop, object, BaseException | None]]) -> None:
    """Give each future its result or exception: a `concurrent.futures.Future` at once, and the asyncio
    futures of each loop in one call on that loop."""
    on_loops: dict[asyncio.AbstractEventLoop, list] = {}
    for future, result, exc in outcomes:
        if isinstance(future, _OnLoop):
            on_loops.setdefault(future.loop, []).append((future.future, result, exc))
        elif exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    for loop, settled in on_loops.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, settled)
        except RuntimeError:  # the loop has closed: nobody is waiting
            pass


def _settle_on_loop(settled: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
    for future, result, exc in settled:
        if future.cancelled():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
