r"""Magnet loss (Rippel, Paluri, Dollar, Bourdev, "Metric learning with adaptive density discrimination",
ICLR 2016): each class is K clusters found by k-means, and an item is pulled to its own cluster and pushed
from the clusters of other classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import SquaredEuclideanDistance
from deepmetric.losses.base import BaseLoss
from deepmetric.losses.tuples import masked_logsumexp
from deepmetric.reducers import check_reduction, reduce, zero_loss
from deepmetric.registry import register
from deepmetric.validation import check_batch, check_int, check_number

_SQUARED_EUCLIDEAN = SquaredEuclideanDistance(normalize_embeddings=False)


def kmeans(points: torch.Tensor, num_clusters: int, *, iterations: int = 20,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns (num_clusters, D) centres (fewer rows if there are
    fewer distinct points). Runs without gradient."""
    with torch.no_grad():
        points = points.detach()
        num_clusters = min(num_clusters, points.shape[0])
        first = int(torch.randint(points.shape[0], (1,), generator=generator))
        centres = points[first:first + 1]
        for _ in range(1, num_clusters):
            nearest = torch.cdist(points, centres).amin(1).pow(2)
            if float(nearest.sum()) <= 0:
                break  # every point coincides with a centre already
            pick = int(torch.multinomial(nearest / nearest.sum(), 1, generator=generator))
            centres = torch.cat([centres, points[pick:pick + 1]])
        for _ in range(iterations):
            assignment = torch.cdist(points, centres).argmin(1)
            counts = torch.bincount(assignment, minlength=centres.shape[0]).to(points.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assignment, points)
            updated = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
            if torch.equal(updated, centres):
                break
            centres = updated
        return centres


@register("loss", "magnet", example={"clusters_per_class": 2, "alpha": 1.0, "refresh_every": 5, "memory_size": 256})
class MagnetLoss(BaseLoss):
    r"""Magnet loss (Rippel et al., ICLR 2016).

    With :math:`\mu(r_n)` the mean of the batch items assigned to :math:`r_n`'s cluster,
    :math:`\sigma^2 = \frac{1}{N-1} \sum_n \|r_n - \mu(r_n)\|^2` and :math:`\mu_k` the batch means of the
    clusters of other classes:

    .. math:: L = \frac1N \sum_n \Big[\frac{\|r_n - \mu(r_n)\|^2}{2\sigma^2} + \alpha
        + \log \sum_{k: C(\mu_k) \ne C(r_n)} e^{-\|r_n - \mu_k\|^2 / 2\sigma^2}\Big]_+

    Cluster assignment: each class has up to ``clusters_per_class`` centres found by k-means on stored
    embeddings; an item belongs to the nearest centre of its class (a class without centres yet counts as
    one cluster). The loss keeps the last ``memory_size`` batch embeddings (detached) and re-runs k-means
    on them every ``refresh_every`` calls in training mode. For the paper's schedule (re-embed the whole
    training set, then cluster) call ``update_clusters(embeddings, labels)`` yourself and set
    ``refresh_every=0``. The centres, the stored embeddings and the call count are part of
    ``state_dict`` (as extra state), so a training run resumed from a checkpoint keeps its clusters.

    Args:
        clusters_per_class: K.
        alpha: the margin :math:`\alpha` (paper: 1.0), in units of :math:`2\sigma^2`.
        refresh_every: automatic k-means refresh period in calls (0 = never).
        memory_size: number of recent embeddings kept for the refresh.
        kmeans_iterations: Lloyd iterations per refresh.
        seed: seed of the k-means++ initialisation.
        reduction: over the batch items (``mean`` default, as in the paper).

    Example:
        >>> loss = MagnetLoss(clusters_per_class=2)
        >>> value = loss(torch.randn(12, 4), torch.tensor([0] * 6 + [1] * 6))
    """

    def __init__(self, *, clusters_per_class: int = 4, alpha: float = 1.0, refresh_every: int = 100,
                 memory_size: int = 10000, kmeans_iterations: int = 20, seed: int = 0,
                 reduction: str = "mean") -> None:
        super().__init__()
        for name, value, low in (("clusters_per_class", clusters_per_class, 1), ("refresh_every", refresh_every, 0),
                                 ("memory_size", memory_size, 1), ("kmeans_iterations", kmeans_iterations, 1)):
            check_int(name, value, low=low)
        self.clusters_per_class = clusters_per_class
        self.alpha = check_number("alpha", alpha)
        self.refresh_every = refresh_every
        self.memory_size = memory_size
        self.kmeans_iterations = kmeans_iterations
        self.seed = int(seed)
        self.reduction = check_reduction(reduction)
        self.calls = 0
        self.centres: torch.Tensor | None = None
        self.centre_labels: torch.Tensor | None = None
        self._memory: torch.Tensor | None = None
        self._memory_labels: torch.Tensor | None = None

    _STATE_TENSORS = ("centres", "centre_labels", "_memory", "_memory_labels")

    def get_extra_state(self) -> dict:
        """The clusters, the embedding memory and the call count (saved with ``state_dict``)."""
        state = {"calls": torch.tensor(self.calls)}
        state.update({name: getattr(self, name) for name in self._STATE_TENSORS if getattr(self, name) is not None})
        return state

    def set_extra_state(self, state: dict) -> None:
        unknown = set(state) - {"calls", *self._STATE_TENSORS}
        if "calls" not in state or unknown:
            raise ValueError(f"magnet state must hold 'calls' and only {self._STATE_TENSORS}; got {sorted(state)}")
        self.calls = int(state["calls"])
        for name in self._STATE_TENSORS:
            setattr(self, name, state.get(name))

    def update_clusters(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Re-run k-means per class on ``embeddings`` (N, D) with ``labels`` (N,) and keep the centres."""
        check_batch(embeddings, labels, labels_required=True)
        generator = torch.Generator().manual_seed(self.seed + self.calls)
        embeddings = embeddings.detach()
        centres, centre_labels = [], []
        for label in torch.unique(labels):
            found = kmeans(embeddings[labels == label].cpu(), self.clusters_per_class,
                           iterations=self.kmeans_iterations, generator=generator)
            centres.append(found.to(embeddings.device))
            centre_labels.append(torch.full((found.shape[0],), int(label), dtype=torch.long, device=labels.device))
        self.centres = torch.cat(centres)
        self.centre_labels = torch.cat(centre_labels)

    def assign(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cluster id of each item: the index of the nearest centre of its class, or, for a class without
        centres, ``len(centres) + position of the class among the batch's unique labels``."""
        _, class_index = torch.unique(labels, return_inverse=True)
        if self.centres is None:
            return class_index
        offset = self.centres.shape[0]
        with torch.no_grad():
            squared = torch.cdist(embeddings.detach(), self.centres.to(embeddings)).pow(2)
            own_class = labels[:, None] == self.centre_labels.to(labels.device)[None, :]
            nearest = torch.where(own_class, squared, torch.full_like(squared, float("inf"))).argmin(1)
        return torch.where(own_class.any(1), nearest, offset + class_index)

    def _remember(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        stored = embeddings.detach()
        if self._memory is not None and self._memory.shape[1] == stored.shape[1]:
            stored = torch.cat([self._memory.to(stored), stored])
            labels = torch.cat([self._memory_labels.to(labels.device), labels])
        self._memory, self._memory_labels = stored[-self.memory_size:], labels[-self.memory_size:]

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        if ref_embeddings is not None or mined is not None:
            raise ValueError("magnet builds its own clusters: mined tuples and ref_embeddings are not used")
        if self.training:
            self.calls += 1
            self._remember(embeddings, labels)
            if self.refresh_every and self.calls % self.refresh_every == 0:
                self.update_clusters(self._memory, self._memory_labels)
        if embeddings.shape[0] < 2:
            return zero_loss(embeddings)
        cluster_ids, item_cluster = torch.unique(self.assign(embeddings, labels), return_inverse=True)
        num_clusters = cluster_ids.numel()
        counts = torch.bincount(item_cluster, minlength=num_clusters).to(embeddings.dtype)
        means = torch.zeros(num_clusters, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
        means = means.index_add(0, item_cluster, embeddings) / counts[:, None]
        cluster_labels = torch.zeros(num_clusters, dtype=labels.dtype, device=labels.device)
        cluster_labels[item_cluster] = labels
        squared = _SQUARED_EUCLIDEAN.matrix(embeddings, means)
        own = squared.gather(1, item_cluster[:, None]).squeeze(1)
        variance = (own.sum() / (embeddings.shape[0] - 1)).clamp_min(torch.finfo(embeddings.dtype).eps)
        other_class = labels[:, None] != cluster_labels[None, :]
        losses = F.relu(own / (2 * variance) + self.alpha + masked_logsumexp(-squared / (2 * variance), other_class))
        return reduce(losses, self.reduction, like=embeddings)
