"""The training loop: many steps per tf.function call, data resident in memory or streamed.

Why not `model.fit`: on small models Keras's per-step overhead dominates (4–10×
on a 2-core CPU), and in Keras 3 `fit` cannot run under
MultiWorkerMirroredStrategy (keras-team/keras#20585). The replica step below is
ordinary Keras (model call, loss, optimizer.apply, metrics) run under
`strategy.run`, so single device, mirrored and multi-worker share it.

Feeding: with one replica the whole split stays in memory as uint8 tensors and
each chunk of steps gathers its batches from a per-epoch permutation, with no
per-step Python or tf.data. With several replicas each worker's `tf.data`
pipeline gathers, from the same resident arrays and permutation, only its own
replicas' slices of each global batch (see `_distributed_iterator`).
A streamed split (cnncli/data/pipeline.py) hands over tf.data batches in the
same (seed, epoch) order instead; the same chunk of replica steps consumes
them, timing how long each step waited for its batch, so the epoch line can
say whether the input or the model is the bottleneck.

Updates: Adam and SGD get TensorFlow's fused kernels (fused.py), one pass over
the weights instead of Keras 3's eight; with large dense layers that was half
of a step. Dropout masks come from 16 random bits per unit (dropout.py). The
loss is checked every step: one replica's NaN stops all of them at the same
step, which under multi-worker training it must, or the others would wait
forever in the next all-reduce.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncli.train.dropout import patched as fast_dropout


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


@dataclass
class EpochResult:
    logs: dict  # loss and metric results over the epoch
    seconds: float  # training steps only (no evaluation, no saving)
    examples: int
    steps: int
    waiting: float | None = None  # of `seconds`, spent waiting for input batches; None when not timed


def epoch_permutation(n: int, seed: int, epoch: int) -> Any:
    """The order of examples in `epoch`: a function of (seed, epoch) only, so a resumed run repeats it."""
    import tensorflow as tf

    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int32), seed=[seed % (2**31), epoch])


class Trainer:
    def __init__(
        self,
        model,
        optimizer,
        loss_fn,
        metrics,
        strategy,
        batch_size: int,
        seed: int,
        augment=None,
        chunks_per_epoch: int = 1,
        steps_per_execution: int | None = None,
        jit_compile: bool = False,
        time_input: bool = True,
    ):
        import keras
        import tensorflow as tf

        self.tf = tf
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.metrics = metrics  # keras.metrics objects, created under the strategy scope
        self.strategy = strategy
        self.batch_size = batch_size  # global
        from cnncli.train.runtime import check_global_batch

        check_global_batch(batch_size, strategy.num_replicas_in_sync)
        self.seed = seed
        self.augment = augment
        self.chunks_per_epoch = chunks_per_epoch
        self.steps_per_execution = steps_per_execution
        from cnncli.train.fused import use_fused_update

        self.fused_kernel = use_fused_update(optimizer)  # same arithmetic, one pass over the weights
        with strategy.scope():
            self.loss_tracker = keras.metrics.Mean(name="loss")
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._stream: Any = None  # a streamed split (FileSplit or RecordSplit), when the data is streamed
        # XLA (runtime.jit_compile) compiles the update of one step (forward, backward, optimizer,
        # metrics), as Keras's own trainer does, and not the loop and augmentation around it: random
        # augmentation ops (MixUp's gamma draws, RandomTranslation's transform) have no XLA kernel on CPU.
        self._update = (
            tf.function(self._replica_update, jit_compile=True, reduce_retracing=True, autograph=False)
            if jit_compile
            else self._replica_update
        )
        self._chunk_fn = tf.function(self._resident_chunk, reduce_retracing=True, autograph=False)
        self._dist_chunk_fn = tf.function(self._distributed_chunk, reduce_retracing=True)
        self.timed = time_input  # tf.timestamp is refused under op determinism
        self._stream_chunk_fn = tf.function(self._stream_chunk, reduce_retracing=True)
        # The streamed and distributed chunks keep AutoGraph for their loops; the step inside them, as the
        # resident chunk's, is plain Python around tensors: not parsed and rewritten on the first call.
        self._step = tf.autograph.experimental.do_not_convert(self._replica_step)
        self._predict_fn = tf.function(self._predict_batches, reduce_retracing=True, autograph=False)

    # ------------------------------------------------------------------ steps
    def augment_batch(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """The batch a step trains on: (float32 images, the loss's targets, the metrics' class indices).

        Without augmentation that changes labels the targets are the class indices `y` themselves.
        With it (MixUp, CutMix) they are one-hot float32, mixed by the layers as the images were,
        and the metrics compare with each mixed label's largest class: the class the mixed image
        shows most of. (Not the unmixed image's own class: with MixUp's usual alpha most weights
        lie near 0 or 1, so about half the images show mostly their partner, and a model that
        names the partner would be counted wrong.)
        """
        tf = self.tf
        x = tf.cast(x, "float32")
        if self.augment is None:
            return x, y, y
        if not self.augment.changes_labels:  # no one-hot: the step stays as fast as without mixing
            return self.augment(x, training=True), y, y
        classes = int(self.model.outputs[0].shape[-1])
        soft = tf.one_hot(tf.reshape(tf.cast(y, tf.int32), [-1]), classes, dtype=tf.float32)
        x, soft = self.augment(x, soft, training=True)
        return x, soft, tf.cast(tf.reshape(tf.argmax(soft, axis=-1), tf.shape(y)), y.dtype)

    def _replica_step(self, x, y):
        x, target, y = self.augment_batch(x, y)
        return self._update(x, target, y)

    def _replica_update(self, x, target, y):
        """One optimizer step on an augmented batch; True when every example's loss is finite."""
        tf = self.tf
        with tf.GradientTape() as tape:
            with fast_dropout():  # runs once, while the step is traced
                pred = self.model(x, training=True)
            per_example = self.loss_fn(target, pred)
            loss = tf.nn.compute_average_loss(per_example)  # mean over the global batch
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled = self.optimizer.scale_loss(loss)  # identity unless loss scaling (float16)
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self.loss_tracker.update_state(per_example)
        for metric in self.metrics:
            metric.update_state(y, pred)
        return tf.reduce_all(tf.math.is_finite(per_example))

    def _resident_chunk(self, x, y, perm, start, n_steps):
        """Run up to `n_steps` steps from batch index `start`; return steps done and a finite flag.

        Written as a `tf.while_loop` and traced without AutoGraph: converting this method and the
        step's (their source parsed and rewritten) was most of the first call's trace, and nothing
        in them branches on a tensor (the loop's graph is the same)."""
        tf = self.tf
        total = tf.shape(perm)[0]

        def more(i, finite):
            return tf.logical_and(i < n_steps, finite)  # a non-finite loss stops the chunk after its step

        def step(i, finite):
            lo = (start + i) * self.batch_size
            idx = perm[lo : tf.minimum(lo + self.batch_size, total)]
            return i + 1, self.strategy.run(self._replica_step, args=(tf.gather(x, idx), tf.gather(y, idx)))

        return tf.while_loop(more, step, (tf.constant(0), tf.constant(True)))

    def _counters(self):
        """(steps done, all losses finite, seconds waiting for input) at the start of a chunk."""
        tf = self.tf
        return tf.constant(0), tf.constant(True), tf.constant(0.0, tf.float64)

    def _clock(self):
        """Now, when steps time their wait for input (TF refuses timestamps under op determinism)."""
        return self.tf.timestamp() if self.timed else self.tf.constant(0.0, self.tf.float64)

    def _waited(self, waiting, t0, tensors):
        """`waiting` plus the time from t0 until `tensors` (the batch just asked for) were there."""
        if not self.timed:
            return waiting
        with self.tf.control_dependencies(tensors):
            return waiting + self.tf.timestamp() - t0

    def _stream_chunk(self, iterator, n_steps):
        """Up to `n_steps` steps on a single replica from a stream that may end early (skipped files)."""
        tf = self.tf
        done, finite, waiting = self._counters()
        for i in tf.range(n_steps):
            t0 = self._clock()
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            x, y = batch.get_value()
            waiting = self._waited(waiting, t0, [x, y])
            finite = self.strategy.run(self._step, args=(x, y))
            done = i + 1
            if not finite:
                break
        return done, finite, waiting

    def _distributed_chunk(self, iterator, n_steps):
        tf = self.tf
        done, finite, waiting = self._counters()
        for i in tf.range(n_steps):
            t0 = self._clock()
            batch = next(iterator)
            waiting = self._waited(waiting, t0, tf.nest.flatten(self.strategy.experimental_local_results(batch)))
            per_replica = self.strategy.run(self._step, args=batch)
            # Every worker must take the same branch, or the ones that go on wait forever in the
            # next all-reduce: the flag is summed over all replicas of all workers, not read locally.
            bad = self.strategy.reduce("SUM", self.strategy.run(_count_false, args=(per_replica,)), axis=None)
            finite = tf.equal(bad, 0)
            done = i + 1
            if not finite:
                break
        return done, finite, waiting

    # ------------------------------------------------------------------ epochs
    def set_data(self, x: Any, y: np.ndarray) -> None:
        """Keep the training split resident (uint8 stays uint8: 4× less memory than float32),
        or, for a streamed split, keep it to ask for batches each epoch."""
        from cnncli.data.splits import is_streamed

        tf = self.tf
        if is_streamed(x):
            self._stream, self._x, self._y, self._n = x, None, None, len(x)
            return
        self._stream = None
        with tf.device("/cpu:0") if self.strategy.num_replicas_in_sync > 1 else _nullcontext():
            self._x = tf.convert_to_tensor(x)
            self._y = tf.convert_to_tensor(y.astype(np.int32))
        self._n = int(x.shape[0])

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch over the data set with set_data."""
        shares = self._stream.share_sizes if self._stream is not None else None
        if shares:  # each worker streams its own share: the smallest sets the steps every worker takes
            return max(1, min(shares) // (self.batch_size // len(shares)))
        if self.strategy.num_replicas_in_sync > 1:  # whole global batches keep replicas in step
            return max(1, self._n // self.batch_size)
        return math.ceil(self._n / self.batch_size)

    def _chunk_sizes(self, steps: int) -> list[int]:
        per_call = self.steps_per_execution or math.ceil(steps / max(1, self.chunks_per_epoch))
        sizes = []
        while steps > 0:
            sizes.append(min(per_call, steps))
            steps -= sizes[-1]
        return sizes

    def train_epoch(self, epoch: int, on_chunk: Callable[[int, int, dict, float], None] | None = None) -> EpochResult:
        """One pass over the training split; `epoch` (0-based) picks the shuffle."""
        tf = self.tf
        self.loss_tracker.reset_state()
        for metric in self.metrics:
            metric.reset_state()
        from cnncli.data.splits import raise_if_failed

        steps = self.steps_per_epoch()
        perm = epoch_permutation(self._n, self.seed, epoch)
        replicas = self.strategy.num_replicas_in_sync
        if self._stream is not None:
            iterator = self._stream_iterator(perm.numpy(), steps)
            chunk_fn = self._stream_chunk_fn if replicas == 1 else self._dist_chunk_fn
        else:
            iterator = self._distributed_iterator(perm) if replicas > 1 else None
            chunk_fn = self._dist_chunk_fn
        done_steps = 0
        seconds = waiting = 0.0
        for size in self._chunk_sizes(steps):
            t0 = time.perf_counter()
            if iterator is None:
                done, finite = self._chunk_fn(self._x, self._y, perm, tf.constant(done_steps), tf.constant(size))
            else:
                done, finite, waited = chunk_fn(iterator, tf.constant(size))
                waiting += float(waited)
            done, finite = int(done), bool(finite)  # waits for the chunk: the timing is honest
            seconds += time.perf_counter() - t0
            done_steps += done
            raise_if_failed(self._stream)  # on_corrupt: error, and a file could not be read
            if not finite:
                raise NonFiniteLoss(done_steps)
            if on_chunk is not None:
                on_chunk(done_steps, steps, self.results(), seconds)
            if done < size:  # a stream that skipped unreadable files ends early
                break
        examples = min(self._n, done_steps * self.batch_size)
        return EpochResult(
            self.results(), seconds, examples, done_steps, waiting if iterator is not None and self.timed else None
        )

    def _stream_iterator(self, order: np.ndarray, steps: int):
        """The streamed split's batches in `order`; under several replicas, per-replica batches in
        replica order (global batch b is order[b·B:(b+1)·B] of this worker's files, as resident)."""
        x, replicas = self._stream, self.strategy.num_replicas_in_sync
        if replicas == 1:
            return iter(x.batches(order, self.batch_size))
        per_replica = self.batch_size // replicas

        def dataset_fn(ctx):
            return x.batches(order, per_replica, count=steps * (replicas // ctx.num_input_pipelines))

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _distributed_iterator(self, perm):
        """Global batch b is perm[b·B:(b+1)·B]; replica r (numbered across workers) takes its r-th slice.

        Every worker holds the whole split and the same permutation, so each
        input pipeline gathers only its own replicas' examples: no worker reads
        or decodes another's share, and which example goes where is written here,
        not left to tf.data's auto-sharding.
        """
        tf = self.tf
        x, y = self._x, self._y
        replicas, steps = self.strategy.num_replicas_in_sync, self.steps_per_epoch()
        per_replica = self.batch_size // replicas
        # [step, replica, example]; a global batch's remainder (batch not divisible by replicas) is unused.
        grid = tf.reshape(perm[: steps * replicas * per_replica], [steps, replicas, per_replica])

        def dataset_fn(ctx):
            local = replicas // ctx.num_input_pipelines  # replicas fed by this pipeline
            mine = grid[:, ctx.input_pipeline_id * local : (ctx.input_pipeline_id + 1) * local]
            ds = tf.data.Dataset.from_tensor_slices(tf.reshape(mine, [-1, per_replica]))  # replica order per step
            ds = ds.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)), num_parallel_calls=tf.data.AUTOTUNE)
            return ds.prefetch(tf.data.AUTOTUNE)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def results(self) -> dict:
        """The loss and metrics accumulated since they were last reset."""
        logs = {"loss": float(self.loss_tracker.result())}
        for metric in self.metrics:
            logs[metric.name] = float(metric.result())
        return logs

    # ------------------------------------------------------------------ inference
    def _predict_batches(self, x, batch_size):
        tf = self.tf
        n = tf.shape(x)[0]
        steps = (n + batch_size - 1) // batch_size

        def batch(i, out):
            xb = tf.cast(x[i * batch_size : tf.minimum((i + 1) * batch_size, n)], "float32")
            return i + 1, out.write(i, tf.cast(self.model(xb, training=False), tf.float32))

        out = tf.TensorArray(tf.float32, size=steps, infer_shape=False)
        _, out = tf.while_loop(lambda i, _: i < steps, batch, (tf.constant(0), out))
        return out.concat()

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's probabilities for resident images `x`, in batches."""
        if len(x) == 0:
            return np.zeros((0, int(self.model.outputs[0].shape[-1])), np.float32)
        return self._predict_fn(self.tf.convert_to_tensor(x), self.tf.constant(batch_size)).numpy()

    def predict_split(self, x: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, labels) over a resident or streamed split; a stream leaves unreadable files out."""
        from cnncli.data.splits import is_streamed, predict_split

        if not is_streamed(x):
            return self.predict(x), y
        return predict_split(self.predict, x, y)


def _count_false(flag):
    import tensorflow as tf

    return tf.cast(tf.logical_not(flag), tf.int32)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
