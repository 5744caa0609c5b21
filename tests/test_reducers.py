import pytest
import torch

from deepmetric.reducers import reduce, zero_loss


def test_reductions():
    losses = torch.tensor([0.0, 1.0, 3.0, 0.0])
    assert reduce(losses, "mean").item() == 1.0
    assert reduce(losses, "sum").item() == 4.0
    assert reduce(losses, "mean_nonzero").item() == 2.0
    assert reduce(losses, "none") is losses
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce(losses, "avg")


def test_empty_reduces_to_zero_with_graph():
    x = torch.randn(3, requires_grad=True)
    for reduction in ("mean", "sum", "mean_nonzero"):
        value = reduce(x[:0], reduction, like=x)
        value.backward()
        assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros(3))
    assert zero_loss(x).requires_grad
