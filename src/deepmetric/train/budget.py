"""Training to a time budget: with ``train.max_minutes`` the trainer measures how long a step takes on this
machine after a few steps and sizes the learning-rate schedule (and its warm-up) to the steps that fit.

A cosine schedule sized by ``train.steps`` but cut off by the clock never reaches its low learning rates;
one sized to the steps that fit ends at the budget with the rate fully decayed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from deepmetric.train.schedules import SchedulePlan

log = logging.getLogger(__name__)

SKIP_STEPS = 2  # the first steps pay for allocation and lazy set-up, not for training
PROBE_STEPS = 6  # steps timed before the schedule is sized
THREAD_TRIAL_STEPS = 4  # steps timed with each thread count when choosing it
REPLAN_EVERY = 0.1  # after each further tenth of the sized schedule, measure again and re-size it
LAST_REPLAN = 0.9  # no re-sizing in the last tenth: the rate is low by then and a jump would show
MAX_WARMUP_SHARE = 0.1  # a sized schedule's warm-up takes at most this share of it


def steps_that_fit(*, done: int, remaining_seconds: float, step_seconds: float, max_steps: int,
                   min_steps: int = 0) -> int:
    """The schedule's length: the steps already done plus those that fit in ``remaining_seconds`` at
    ``step_seconds`` each, at least ``min_steps`` and one more than done, at most ``max_steps``.

    Example:
        >>> steps_that_fit(done=8, remaining_seconds=100.0, step_seconds=0.5, max_steps=10_000)
        208
    """
    if step_seconds <= 0 or not math.isfinite(step_seconds):
        raise ValueError(f"step_seconds must be a positive number, got {step_seconds!r}")
    fit = done + max(1, int(max(remaining_seconds, 0.0) / step_seconds))
    return int(min(max_steps, max(min_steps, fit)))


def sized_warmup(configured: int, total_steps: int) -> int:
    """The configured warm-up, shortened to at most a tenth of a schedule sized to the budget.

    Example:
        >>> sized_warmup(100, 400), sized_warmup(20, 400)
        (40, 20)
    """
    return min(configured, max(1, int(total_steps * MAX_WARMUP_SHARE)))


@dataclass
class BudgetPlanner:
    """Decides, from the times at which steps end, how many steps fit in ``budget_seconds``, and writes it
    into the schedule's ``plan``: first after ``SKIP_STEPS + PROBE_STEPS`` steps (median step time), then
    after every further ``REPLAN_EVERY`` of the schedule from the mean step time since the last sizing, so
    a machine that gets busier or quieter (or evaluation pauses) still ends the schedule at the budget.
    With ``choose_threads`` it first times ``THREAD_TRIAL_STEPS`` steps with two compute threads and as many
    with one and keeps the faster (on 2 cores busy with other work, two spinning threads run several times
    slower than one); those steps train the model too. ``OMP_NUM_THREADS`` in the environment keeps the
    thread count as set."""

    plan: SchedulePlan
    budget_seconds: float
    max_steps: int
    configured_warmup: int
    min_steps: int = 0
    choose_threads: bool = False
    threads: int = field(default_factory=torch.get_num_threads)
    _phase: str = "threads"
    _times: list[float] = field(default_factory=list)
    _last_plan: tuple[int, float] = (0, 0.0)  # (step, perf_counter) of the last sizing
    _trial: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A thread count the user set (OMP_NUM_THREADS) is kept.
        if self.choose_threads and (os.cpu_count() or 1) >= 2 and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(2)
            self.threads = 2
        else:
            self._phase = "probe"

    @property
    def sized(self) -> bool:
        return self._phase == "track"

    def after_step(self, step: int, elapsed_seconds: float) -> None:
        """Call after every optimizer step with the step count and the seconds trained so far."""
        self._times.append(time.perf_counter())
        timed = len(self._times) - SKIP_STEPS
        if self._phase == "threads":
            if timed == THREAD_TRIAL_STEPS:
                self._trial[2] = self._step_seconds(THREAD_TRIAL_STEPS - 1)
                torch.set_num_threads(1)
            elif timed == 2 * THREAD_TRIAL_STEPS:
                self._trial[1] = self._step_seconds(THREAD_TRIAL_STEPS - 1)
                self.threads = min((1, 2), key=self._trial.__getitem__)
                torch.set_num_threads(self.threads)
                log.info("compute threads: %d (%.3f s/step with 2, %.3f s/step with 1)", self.threads,
                         self._trial[2], self._trial[1])
                self._times, self._phase = [], "probe"
        elif self._phase == "probe" and timed >= PROBE_STEPS:
            self._size(step, elapsed_seconds, self._step_seconds(PROBE_STEPS), "over the first steps")
            self._phase = "track"
        elif self._phase == "track":
            last_step, last_time = self._last_plan
            window = max(3 * PROBE_STEPS, int(REPLAN_EVERY * self.plan.total_steps))
            if step - last_step >= window and step < LAST_REPLAN * self.plan.total_steps:
                self._size(step, elapsed_seconds, (self._times[-1] - last_time) / (step - last_step),
                           f"over steps {last_step}-{step}")
        if len(self._times) > 2 * PROBE_STEPS:  # only the last few are ever needed
            del self._times[:-PROBE_STEPS - 1]

    def _step_seconds(self, steps: int) -> float:
        """Median seconds of the last ``steps`` steps."""
        return float(np.median(np.diff(self._times[-(steps + 1):])))

    def _size(self, step: int, elapsed_seconds: float, step_seconds: float, when: str) -> None:
        total = steps_that_fit(done=step, remaining_seconds=self.budget_seconds - elapsed_seconds,
                               step_seconds=step_seconds, max_steps=self.max_steps, min_steps=self.min_steps)
        changed = total != self.plan.total_steps
        self.plan.total_steps = total
        self.plan.warmup_steps = sized_warmup(self.configured_warmup, total)
        self._last_plan = (step, self._times[-1])
        if not changed:
            return
        log.info("train.max_minutes=%.3g: %.3f s/step measured %s -> the schedule is sized to %d steps "
                 "(warm-up %d)", self.budget_seconds / 60, step_seconds, when, total, self.plan.warmup_steps)
