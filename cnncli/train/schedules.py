"""Learning-rate schedules from the config: Keras's own, stepped per epoch or per step.

`every: epoch` evaluates the schedule at the epoch index (the classic
0.01 · 0.6^epoch) and sets the rate before each epoch; `every: step` hands
the schedule to the optimizer. `reduce_on_plateau` is Keras's callback.
"""

from __future__ import annotations

from cnncli.config.learning import SCHEDULES
from cnncli.config.schema import ScheduleSpec


class EpochSchedule:
    """The rate for each epoch, or None when the optimizer or a callback owns it."""

    def __init__(self, spec: ScheduleSpec | None):
        self.spec = spec
        self._fn = None
        self.callback = None
        self.step_schedule = None
        if spec is None:
            return
        cls = SCHEDULES.get(spec.type)
        if cls.__name__ == "ReduceLROnPlateau":
            self.callback = cls(**spec.args, verbose=0)
        elif spec.every == "epoch":
            self._fn = cls(**spec.args)
        else:
            self.step_schedule = cls(**spec.args)

    def rate(self, epoch_index: int) -> float | None:
        """The learning rate for epoch `epoch_index` (from 0), or None without a schedule."""
        if self._fn is None:
            return None
        import numpy as np

        return float(np.float32(self._fn(epoch_index)))  # the value the float32 variable will hold
