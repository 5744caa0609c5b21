import numpy as np
import pytest
import torch

from deepmetric import registry
from deepmetric.distances import (
    CosineSimilarity,
    DotProductSimilarity,
    EuclideanDistance,
    MahalanobisDistance,
    SquaredEuclideanDistance,
    get_distance,
)


def _np_pairwise(x, y, kind):
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            if kind == "sq":
                out[i, j] = ((x[i] - y[j]) ** 2).sum()
            elif kind == "eu":
                out[i, j] = np.sqrt(((x[i] - y[j]) ** 2).sum())
            elif kind == "dot":
                out[i, j] = x[i] @ y[j]
            else:
                out[i, j] = x[i] @ y[j] / np.linalg.norm(x[i]) / np.linalg.norm(y[j])
    return out


@pytest.mark.parametrize("cls,kind,norm", [
    (SquaredEuclideanDistance, "sq", False), (EuclideanDistance, "eu", False),
    (DotProductSimilarity, "dot", False), (CosineSimilarity, "cos", None)])
def test_matrix_and_pairs_match_numpy(cls, kind, norm):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    dist = cls() if norm is None else cls(normalize_embeddings=norm)
    got = dist(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, _np_pairwise(x, y, kind), rtol=1e-10, atol=1e-10)
    paired = dist.pairs(torch.tensor(x[:4]), torch.tensor(y)).numpy()
    np.testing.assert_allclose(paired, np.diag(_np_pairwise(x[:4], y, kind)), rtol=1e-10, atol=1e-10)


def test_euclidean_gradient_finite_at_zero_distance():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    d = EuclideanDistance(normalize_embeddings=False)(x)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(d.diagonal() == 0)


def test_euclidean_gradcheck_off_diagonal():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(EuclideanDistance(), (x, y))


def test_mahalanobis_equals_quadratic_form():
    torch.manual_seed(0)
    dist = MahalanobisDistance(dim=5)
    with torch.no_grad():
        dist.projection.copy_(torch.randn(5, 5))
    x, y = torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    a = dist.metric_matrix.double()
    expected = torch.stack([torch.stack([torch.sqrt((xi - yj) @ a @ (xi - yj)) for yj in y]) for xi in x])
    torch.testing.assert_close(dist(x, y).double(), expected, rtol=1e-5, atol=1e-6)
    # A = L^T L is positive semi-definite by construction.
    assert torch.linalg.eigvalsh(a).min() > -1e-6


def test_mahalanobis_is_learnable_and_checks_dim():
    dist = MahalanobisDistance(dim=4, rank=2)
    d = dist(torch.randn(3, 4), torch.randn(3, 4))
    d.sum().backward()
    assert dist.projection.grad is not None and dist.projection.grad.shape == (2, 4)
    with pytest.raises(ValueError, match="dimension 4"):
        dist(torch.randn(2, 3))


def test_margin_direction():
    pos, neg = torch.tensor([1.0]), torch.tensor([2.0])
    assert EuclideanDistance().margin_violation(pos, neg, 0.5).item() == pytest.approx(-0.5)
    assert CosineSimilarity().margin_violation(pos, neg, 0.5).item() == pytest.approx(1.5)
    assert EuclideanDistance().closer(pos, neg).item() and not CosineSimilarity().closer(pos, neg).item()


def test_get_distance_by_name_and_registry():
    assert isinstance(get_distance("cosine"), CosineSimilarity)
    assert isinstance(get_distance(None, "dot"), DotProductSimilarity)
    with pytest.raises(TypeError):
        get_distance(3)
    assert set(registry.names("distance")) >= {"euclidean", "squared_euclidean", "cosine", "dot", "mahalanobis"}
