r"""Distances and similarities between embeddings, as modules that losses and miners take as arguments.

Every distance says whether larger values mean *closer* (``is_similarity``), so losses written once work
with all of them: for a distance the margin condition is ``d(a,p) + m < d(a,n)``, for a similarity it is
``s(a,p) - m > s(a,n)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.registry import get, register
from deepmetric.validation import check_positive_int

_EPS = 1e-12

# The search metrics every retrieval backend (exact, faiss, hnswlib, annoy) and the evaluation accept; scores
# are similarities (higher = closer): cosine, dot product, and minus the Euclidean distance.
SEARCH_METRICS = ("cosine", "dot", "euclidean")
# faiss / hnswlib spellings, accepted so that their users' names keep working
METRIC_ALIASES = {"ip": "dot", "l2": "euclidean"}


def canonical_metric(metric: object, name: str = "metric") -> str:
    """The search metric ``metric`` names: one of ``SEARCH_METRICS``, with ``"ip"`` read as ``"dot"`` and
    ``"l2"`` as ``"euclidean"`` (case and surrounding spaces ignored).

    Example:
        >>> canonical_metric("L2"), canonical_metric("ip"), canonical_metric("cosine")
        ('euclidean', 'dot', 'cosine')
    """
    if not isinstance(metric, str):
        raise TypeError(f"{name} must be a string, one of {SEARCH_METRICS} (or an alias in "
                        f"{sorted(METRIC_ALIASES)}), got {type(metric).__name__} {metric!r}")
    key = metric.strip().lower()
    key = METRIC_ALIASES.get(key, key)
    if key not in SEARCH_METRICS:
        raise ValueError(f"{name} must be one of {SEARCH_METRICS} (or an alias in {sorted(METRIC_ALIASES)}), "
                         f"got {metric!r}")
    return key


class Distance(nn.Module):
    """Base class. Subclasses implement ``matrix`` ((N, D), (M, D)) -> (N, M) and ``paired``
    ((N, D), (N, D)) -> (N,).

    Args:
        normalize_embeddings: L2-normalise inputs first (default True, the usual metric-learning setting).
    """

    is_similarity: bool = False

    def __init__(self, *, normalize_embeddings: bool = True) -> None:
        super().__init__()
        self.normalize_embeddings = normalize_embeddings

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=_EPS) if self.normalize_embeddings else x

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """All-pairs matrix between ``x`` and ``y`` (``y = x`` when None)."""
        x = self.prepare(x)
        y = x if y is None else self.prepare(y)
        return self.matrix(x, y)

    def pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Row-wise values between ``x[i]`` and ``y[i]``."""
        return self.paired(self.prepare(x), self.prepare(y))

    def matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def closer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Boolean: value ``a`` means closer than value ``b``."""
        return a > b if self.is_similarity else a < b

    def margin_violation(self, pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
        """``d(a,p) - d(a,n) + m`` for a distance, ``s(a,n) - s(a,p) + m`` for a similarity."""
        return (neg - pos + margin) if self.is_similarity else (pos - neg + margin)


@register("distance", "squared_euclidean", example={})
class SquaredEuclideanDistance(Distance):
    r""":math:`d(x, y) = \|x - y\|_2^2`, computed for matrices as ``|x|^2 + |y|^2 - 2 x y^T`` clamped at 0.

    >>> d = SquaredEuclideanDistance(normalize_embeddings=False)
    >>> d(torch.tensor([[0.0, 0.0], [3.0, 4.0]])).tolist()
    [[0.0, 25.0], [25.0, 0.0]]
    """

    def matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xx = (x * x).sum(-1, keepdim=True)
        yy = (y * y).sum(-1)
        # addmm fuses the -2 x y^T product with the sum: one pass over the (N, M) result instead of three.
        return torch.addmm(xx + yy, x, y.T, alpha=-2.0).clamp_min(0.0)

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).pow(2).sum(-1)


def _safe_sqrt(value: torch.Tensor) -> torch.Tensor:
    # sqrt has an infinite derivative at 0 (a sample paired with itself); the gradient there is set to 0.
    if not (value.requires_grad and torch.is_grad_enabled()):
        return value.sqrt()  # no gradient to protect (e.g. miners): skip the masking passes
    positive = value > _EPS
    safe = torch.where(positive, value, torch.ones_like(value))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(value))


@register("distance", "euclidean", example={})
class EuclideanDistance(SquaredEuclideanDistance):
    r""":math:`d(x, y) = \|x - y\|_2`, with a zero (not NaN) gradient where ``x = y``.

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    >>> d = EuclideanDistance(normalize_embeddings=False)(x)
    >>> d.tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    >>> d.sum().backward(); x.grad.tolist()  # finite on the zero diagonal
    [[-1.2000000476837158, -1.600000023841858], [1.2000000476837158, 1.600000023841858]]
    """

    def matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _safe_sqrt(super().matrix(x, y))

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _safe_sqrt(super().paired(x, y))


@register("distance", "dot", example={})
class DotProductSimilarity(Distance):
    r""":math:`s(x, y) = x^T y` (a similarity: larger is closer). Not normalised unless asked."""

    is_similarity = True

    def __init__(self, *, normalize_embeddings: bool = False) -> None:
        super().__init__(normalize_embeddings=normalize_embeddings)

    def matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x @ y.T

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(-1)


@register("distance", "cosine", example={})
class CosineSimilarity(DotProductSimilarity):
    r""":math:`s(x, y) = x^T y / (\|x\| \|y\|)` (a similarity in [-1, 1]).

    >>> CosineSimilarity().pairs(torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 5.0], [3.0, 3.0]]))
    tensor([0., 1.])
    """

    def __init__(self) -> None:
        super().__init__(normalize_embeddings=True)


@register("distance", "mahalanobis", example={"dim": 8})
class MahalanobisDistance(EuclideanDistance):
    r"""Learnable Mahalanobis distance :math:`d(x, y) = \sqrt{(x-y)^T A (x-y)} = \|L(x - y)\|_2`, with
    :math:`A = L^T L` positive semi-definite by construction.

    Xing, Ng, Jordan, Russell, "Distance metric learning, with application to clustering with
    side-information", NIPS 2002 (the seeds' "learn A").

    Args:
        dim: input dimension D.
        rank: rows of L (defaults to D; a smaller rank learns a low-rank projection).
        normalize_embeddings: L2-normalise inputs before projecting (default False).

    Example: with L = diag(2, 1), a step along the first axis counts twice:

    >>> d = MahalanobisDistance(dim=2)
    >>> with torch.no_grad():
    ...     _ = d.projection.copy_(torch.diag(torch.tensor([2.0, 1.0])))
    >>> d.pairs(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist()
    [2.0, 1.0]
    """

    def __init__(self, *, dim: int, rank: int | None = None, normalize_embeddings: bool = False) -> None:
        super().__init__(normalize_embeddings=normalize_embeddings)
        dim = check_positive_int("dim", dim)
        rank = dim if rank is None else check_positive_int("rank", rank)
        self.projection = nn.Parameter(torch.eye(rank, dim))

    @property
    def metric_matrix(self) -> torch.Tensor:
        """A = L^T L, (D, D)."""
        return self.projection.T @ self.projection

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = super().prepare(x)
        if x.shape[-1] != self.projection.shape[1]:
            raise ValueError(f"expected embeddings of dimension {self.projection.shape[1]}, got {x.shape[-1]}")
        return x @ self.projection.to(x.dtype).T


def get_distance(distance: Distance | str | None, default: str = "euclidean") -> Distance:
    """Accept a Distance instance, a registry name, or None (the default).

    >>> type(get_distance("cosine")).__name__, type(get_distance(None)).__name__
    ('CosineSimilarity', 'EuclideanDistance')
    """
    if distance is None:
        distance = default
    if isinstance(distance, str):
        return get(distance, "distance")()
    if not isinstance(distance, Distance):
        raise TypeError(f"distance must be a Distance or a name, got {type(distance).__name__}")
    return distance
