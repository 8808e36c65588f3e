"""The finish estimate from timed steps, validations and checkpoints (worker/eta.py)."""

from __future__ import annotations

import pytest

from worker.eta import FinishEstimator


def test_an_estimate_from_the_second_timed_step_on() -> None:
    eta = FinishEstimator()
    assert eta.step_done(1, 10, 100.0) is None  # includes loading: it only starts the clock
    assert eta.step_done(2, 10, 101.0) == pytest.approx(8.0)
    assert eta.step_done(3, 10, 102.0) == pytest.approx(7.0)


def test_one_slow_step_does_not_swing_the_estimate() -> None:
    eta = FinishEstimator()
    now = 0.0
    eta.step_done(1, 100, now)
    for step in range(2, 12):
        now += 1.0
        eta.step_done(step, 100, now)
    now += 9.0  # another process took the CPU for a moment
    assert eta.step_done(12, 100, now) == pytest.approx(88.0)


def test_validations_still_to_come_are_counted() -> None:
    """Validation every 5 steps costing 3 s on top of 1 s steps, 20 steps in all."""
    eta = FinishEstimator()
    now = 0.0
    eta.step_done(1, 20, now)
    left = None
    for step in range(2, 7):
        now += 1.0 + (3.0 if step == 5 else 0.0)
        left = eta.step_done(step, 20, now, validated=step == 5)
    # 14 steps, and validations at steps 10, 15 and 20.
    assert left == pytest.approx(14 * 1.0 + 3 * 3.0)


def test_checkpoints_still_to_come_are_counted() -> None:
    """A checkpoint after every 4th step costs 2 s; it shows in the interval after it."""
    eta = FinishEstimator()
    now = 0.0
    eta.step_done(1, 12, now)
    left = None
    for step in range(2, 6):
        now += 1.0 + (2.0 if step == 5 else 0.0)
        left = eta.step_done(step, 12, now)
        if step == 4:
            eta.checkpoint_saved(4)
    # 7 steps, and checkpoints after steps 8 and 12.
    assert left == pytest.approx(7 * 1.0 + 2 * 2.0)


def test_a_resumed_attempt_restarts_the_clock() -> None:
    eta = FinishEstimator()
    eta.step_done(1, 10, 0.0)
    eta.step_done(2, 10, 1.0)
    assert eta.step_done(2, 10, 50.0) is None  # a new attempt replays from its checkpoint
    assert eta.step_done(3, 10, 52.0) == pytest.approx(14.0)
