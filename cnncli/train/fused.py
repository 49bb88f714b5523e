"""Fused optimizer kernels: one TensorFlow op per variable instead of eight.

Keras 3 writes each optimizer's update as separate element-wise ops (Adam:
subtract, multiply, square, two assign_adds, sqrt, add, divide, assign_sub),
and on a CPU each is one more pass over every weight. For a model whose
weights are large next to its activations (the 3.2 M-parameter LeNet with a
1024-unit dense layer) that was over half of a training step. TensorFlow
still ships the fused kernels Keras 2 used (`ResourceApplyAdam`, ...); Keras 3
dropped them (keras-team/keras#19307, #19992). Here an optimizer whose update
is exactly one of those kernels gets it, per instance, with the same
arithmetic; anything else (amsgrad, sparse gradients, a subclass with its own
update, another backend, a Keras whose optimizers keep their slots elsewhere:
see compat.py) keeps Keras's own update.

The patch lives on the instance only: the optimizer's class, config, variables
and checkpoints are Keras's, so a saved model loads without cnncli.
"""

from __future__ import annotations

import types
from typing import Any

from cnncli import compat


def _handle(variable):
    """The resource handle of a Keras or tf variable (the local copy inside a strategy update)."""
    import keras

    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def _adam(self, gradient, variable, learning_rate, slots):
    import tensorflow as tf

    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    i = compat.variable_index(self, variable)
    momentums, velocities = slots
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle,
        m=_handle(momentums[i]),
        v=_handle(velocities[i]),
        beta1_power=tf.pow(beta_1, step),
        beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, dtype),
        beta1=beta_1,
        beta2=beta_2,
        epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype),
    )


def _sgd(self, gradient, variable, learning_rate, slots):
    import tensorflow as tf

    dtype = variable.dtype
    lr, grad = tf.cast(learning_rate, dtype), tf.cast(gradient, dtype)
    if self.momentum == 0:
        tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=grad)
    else:  # Keras's form: m = momentum·m − lr·g; var += m (or the Nesterov look-ahead)
        (momentums,) = slots
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=_handle(momentums[compat.variable_index(self, variable)]),
            lr=lr,
            grad=grad,
            momentum=tf.cast(self.momentum, dtype),
            use_nesterov=bool(self.nesterov),
        )


def _fusable(optimizer) -> tuple | None:
    import keras

    if keras.backend.backend() != "tensorflow" or not compat.usable("fused_optimizer"):
        return None
    cls = type(optimizer)
    if cls.update_step is keras.optimizers.Adam.update_step and not optimizer.amsgrad:
        if optimizer.built and compat.optimizer_slots(optimizer, "adam") is None:
            return None
        return _adam, "adam", "ResourceApplyAdam"  # Adam and AdamW (whose decay is applied separately)
    if cls.update_step is keras.optimizers.SGD.update_step and not (
        optimizer.built and compat.optimizer_slots(optimizer, "sgd") is None
    ):
        return _sgd, "sgd", "ResourceApplyKerasMomentum" if optimizer.momentum else "ResourceApplyGradientDescent"
    return None


def use_fused_update(optimizer: Any) -> str | None:
    """Give `optimizer` (or the one a LossScaleOptimizer wraps) a fused update; the kernel's name, or None."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    found = _fusable(inner)
    if found is None:
        return None
    fn, kind, kernel = found
    keras_update = inner.update_step

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        slots = compat.optimizer_slots(self, kind)
        if isinstance(gradient, tf.IndexedSlices) or slots is None:  # sparse, or slots this Keras moved
            return keras_update(gradient, variable, learning_rate)
        return fn(self, gradient, variable, learning_rate, slots)

    # object.__setattr__: not an attribute Keras should track or save.
    object.__setattr__(inner, "update_step", types.MethodType(update_step, inner))
    compat.used("fused_optimizer", kernel)
    return kernel
