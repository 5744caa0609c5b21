"""Reducers: how a vector of per-tuple losses becomes the scalar a loss returns.

An empty vector reduces to a zero that still belongs to the autograd graph (never NaN).
"""

from __future__ import annotations

import torch

from deepmetric.validation import check_choice

REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``REDUCTIONS`` (see ``check_choice`` for the errors)."""
    return check_choice("reduction", reduction, REDUCTIONS)


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to ``like``'s graph, so ``backward()`` works and gives zero gradients."""
    return like.sum() * 0.0


def reduce(losses: torch.Tensor, reduction: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-element ``losses`` (any shape).

    - ``mean``: average over all elements.
    - ``sum``: sum.
    - ``mean_nonzero``: average over elements > 0 (the "batch all" convention of Hermans et al. 2017);
      0 when none is positive.
    - ``none``: return ``losses`` unchanged.
    ``like`` supplies the graph for the empty case.
    """
    check_reduction(reduction)
    if reduction == "none":
        return losses
    if losses.numel() == 0:
        return zero_loss(like if like is not None else losses)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    positive = losses > 0
    count = positive.sum()
    if int(count) == 0:
        return losses.sum() * 0.0
    return (losses * positive).sum() / count
