"""How long an attempt has left, from the steps it has timed so far.

The reporter hears of every optimizer step (``log_every_n_steps`` is 1 unless a job says
otherwise) and of every checkpoint. A step's wall-clock interval, from one report to the next,
holds the training step itself plus whatever ran between: a sampled validation (reported with
the step it followed) or a checkpoint. The estimate separates the three:

- a training step costs the median of the plain intervals (robust to a slow one);
- a validation or a checkpoint costs what its interval took beyond a plain step, averaged;
- the remaining validations and checkpoints follow the spacing seen so far (the engine runs
  both every N steps, and at the last step).

The first report of an attempt only starts the clock: its interval includes loading the model
and data. So the estimate exists from the second timed step on.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# A window of recent plain steps: the median follows a job whose pace changes (other jobs on
# the machine, longer examples later in an epoch) without being thrown by one slow step.
RECENT_STEPS = 64


@dataclass
class _Occasional:
    """Validations or checkpoints: the steps they ran at and the extra time each took."""

    steps: list[int] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)

    def add(self, step: int) -> None:
        if not self.steps or self.steps[-1] != step:
            self.steps.append(step)

    def cost(self) -> float:
        return statistics.fmean(self.costs) if self.costs else 0.0

    def remaining(self, start_step: int, step: int, total_steps: int) -> int:
        """How many more to expect after ``step``, spaced as the ones seen so far."""
        if not self.steps:
            return 0
        if len(self.steps) >= 2:
            spacing = min(b - a for a, b in zip(self.steps, self.steps[1:], strict=False))
        else:
            spacing = self.steps[0] - start_step
        if spacing <= 0:
            return 0
        # Those at start + k * spacing in (step, total_steps], and one at the last step when
        # that is not on the spacing (the engine always validates and checkpoints at the end).
        regular = (total_steps - start_step) // spacing - (step - start_step) // spacing
        final = 1 if step < total_steps and (total_steps - start_step) % spacing else 0
        return regular + final


class FinishEstimator:
    """Seconds left in an attempt, from the timed steps and what ran between them."""

    def __init__(self) -> None:
        self._restart(None)

    def _restart(self, clock: tuple[float, int] | None) -> None:
        self._last = clock
        self._start_step = clock[1] - 1 if clock else 0
        self._plain: list[float] = []
        self._validations = _Occasional()
        self._checkpoints = _Occasional()
        self._checkpoint_pending = False

    def checkpoint_saved(self, step: int) -> None:
        """A checkpoint was written after ``step``: its time lands in the next interval."""
        self._checkpoints.add(step)
        self._checkpoint_pending = True

    def step_done(
        self, step: int, total_steps: int, now: float, *, validated: bool = False
    ) -> float | None:
        """Record that ``step`` ended at monotonic time ``now``; the seconds left, or None
        while fewer than two steps are timed."""
        if self._last is None or step <= self._last[1]:
            # The first report (or a replay from a checkpoint) starts the clock afresh.
            self._restart((now, step))
            return None
        then, previous = self._last
        self._last = (now, step)
        per_step = (now - then) / (step - previous)
        checkpointed, self._checkpoint_pending = self._checkpoint_pending, False
        if validated:
            self._validations.add(step)
        if not validated and not checkpointed:
            self._plain = [*self._plain[-(RECENT_STEPS - 1) :], per_step]
        step_cost = statistics.median(self._plain) if self._plain else per_step
        extra = (now - then) - step_cost * (step - previous)
        if validated and checkpointed:
            # Split what the interval took beyond its steps by what each has cost before.
            both = self._validations.cost() + self._checkpoints.cost()
            share = self._validations.cost() / both if both else 0.5
            self._validations.costs.append(max(0.0, extra * share))
            self._checkpoints.costs.append(max(0.0, extra * (1 - share)))
        elif validated:
            self._validations.costs.append(max(0.0, extra))
        elif checkpointed:
            self._checkpoints.costs.append(max(0.0, extra))
        left = step_cost * (total_steps - step)
        for occasional in (self._validations, self._checkpoints):
            count = occasional.remaining(self._start_step, step, total_steps)
            left += count * occasional.cost()
        return left
