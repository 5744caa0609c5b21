r"""Optimizers and learning-rate schedules as registry components (kinds ``optimizer`` and ``scheduler``).

A config names them with hyper-parameters only; the trainer calls ``create(param_groups)`` /
``create(optimizer, total_steps)`` once the parameters exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepmetric.registry import register
from deepmetric.validation import (
    check_bool,
    check_in_range,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)


class OptimizerFactory:
    """Holds an optimizer's hyper-parameters; ``create(param_groups)`` builds it. ``lr`` is the base rate
    of groups that do not set their own."""

    lr: float

    def create(self, param_groups: list[dict]) -> torch.optim.Optimizer:  # pragma: no cover - abstract
        raise NotImplementedError


@register("optimizer", "adamw", example={"lr": 1e-3, "weight_decay": 1e-4})
class AdamWOptimizer(OptimizerFactory):
    """AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient step.

    Args:
        lr: base learning rate.
        weight_decay: decoupled weight decay (0 disables it).
        betas: coefficients of the running averages of the gradient and its square.
        eps: added to the denominator for numerical stability.
    """

    def __init__(self, *, lr: float = 1e-3, weight_decay: float = 1e-4,
                 betas: tuple[float, float] | list[float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr = check_positive_float("lr", lr)
        self.weight_decay = check_non_negative_float("weight_decay", weight_decay)
        if not isinstance(betas, (tuple, list)):
            raise TypeError(f"betas must be a pair of numbers in [0, 1), got {type(betas).__name__}: {betas!r}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        self.betas = (check_in_range("betas[0]", betas[0], 0, 1, high_inclusive=False),
                      check_in_range("betas[1]", betas[1], 0, 1, high_inclusive=False))
        self.eps = check_positive_float("eps", eps)

    def create(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas,
                                 eps=self.eps)


@register("optimizer", "sgd", example={"lr": 0.1, "momentum": 0.9})
class SGDOptimizer(OptimizerFactory):
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay.

    Args:
        lr: base learning rate.
        momentum: momentum factor (0 disables it).
        weight_decay: L2 penalty added to the gradient.
        nesterov: use Nesterov momentum (needs momentum > 0).
    """

    def __init__(self, *, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                 nesterov: bool = False) -> None:
        self.lr = check_positive_float("lr", lr)
        self.momentum = check_non_negative_float("momentum", momentum)
        self.weight_decay = check_non_negative_float("weight_decay", weight_decay)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
        self.nesterov = check_bool("nesterov", nesterov)

    def create(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov)


@dataclass
class SchedulePlan:
    """How long a schedule is: ``total_steps`` and, when set, a warm-up that replaces the configured one. The
    trainer changes it in place when ``train.max_minutes`` says how many steps fit (``train.budget``)."""

    total_steps: int
    warmup_steps: int | None = None


class ScheduleFactory:
    """A learning-rate multiplier ``factor(step, total_steps, warmup_steps=)``; ``create`` wraps it in a
    ``LambdaLR`` that reads its length from a ``SchedulePlan`` at every step."""

    warmup_steps: int

    def factor(self, step: int, total_steps: int, *,
               warmup_steps: int | None = None) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def create(self, optimizer: torch.optim.Optimizer,
               total_steps: int | SchedulePlan) -> torch.optim.lr_scheduler.LambdaLR:
        plan = (total_steps if isinstance(total_steps, SchedulePlan)
                else SchedulePlan(check_positive_int("total_steps", total_steps)))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.factor(step, plan.total_steps, warmup_steps=plan.warmup_steps))


@register("scheduler", "warmup_cosine", example={"warmup_steps": 10, "min_lr_ratio": 0.01})
class WarmupCosineSchedule(ScheduleFactory):
    r"""Linear warm-up, then cosine decay (Loshchilov & Hutter 2017, SGDR without restarts; warm-up as in
    Goyal et al. 2017):

    .. math::
        f(t) = \frac{t + 1}{W} \ \text{for } t < W, \qquad
        f(t) = r + (1 - r)\,\tfrac12\bigl(1 + \cos(\pi\,\tfrac{t - W}{T - W})\bigr) \ \text{otherwise},

    where ``W = warmup_steps`` (or the plan's, when the trainer sizes it to a time budget), ``T`` the total
    number of steps and ``r = min_lr_ratio``; the learning rate is ``f(t)`` times each group's base rate.

    Example:
        >>> schedule = WarmupCosineSchedule(warmup_steps=2, min_lr_ratio=0.0)
        >>> [round(schedule.factor(t, 6), 3) for t in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]

    Args:
        warmup_steps: steps of linear warm-up (0: start at the full rate).
        min_lr_ratio: the final rate as a fraction of the base rate.
    """

    def __init__(self, *, warmup_steps: int = 100, min_lr_ratio: float = 0.01) -> None:
        self.warmup_steps = check_non_negative_int("warmup_steps", warmup_steps)
        self.min_lr_ratio = check_in_range("min_lr_ratio", min_lr_ratio, 0, 1)

    def factor(self, step: int, total_steps: int, *, warmup_steps: int | None = None) -> float:
        warmup = self.warmup_steps if warmup_steps is None else warmup_steps
        warmup = min(warmup, max(total_steps - 1, 0))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@register("scheduler", "constant", example={"warmup_steps": 0})
class ConstantSchedule(ScheduleFactory):
    """The base rate throughout, after an optional linear warm-up of ``warmup_steps``."""

    def __init__(self, *, warmup_steps: int = 0) -> None:
        self.warmup_steps = check_non_negative_int("warmup_steps", warmup_steps)

    def factor(self, step: int, total_steps: int, *, warmup_steps: int | None = None) -> float:
        warmup = self.warmup_steps if warmup_steps is None else warmup_steps
        return (step + 1) / warmup if step < warmup else 1.0
