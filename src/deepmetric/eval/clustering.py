r"""Clustering quality of embeddings: k-means with as many clusters as classes, then NMI and AMI against the
labels (scikit-learn)."""

from __future__ import annotations

import numpy as np

from deepmetric.index.topk import as_embeddings, as_labels
from deepmetric.validation import check_int


def kmeans_assignments(embeddings, num_clusters: int, *, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Cluster index of each embedding after k-means (scikit-learn, k-means++ init, one run, seeded);
    embeddings are L2-normalised first when ``normalize``."""
    from sklearn.cluster import KMeans

    x = as_embeddings("embeddings", embeddings)
    num_clusters = check_int("num_clusters", num_clusters, low=1, high=len(x))  # high: the number of rows
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit_predict(x)


def _assignments(embeddings, labels, num_clusters, seed, cluster_assignments):
    labels = as_labels("labels", labels, len(as_embeddings("embeddings", embeddings)))
    if cluster_assignments is None:
        count = len(np.unique(labels)) if num_clusters is None else num_clusters
        cluster_assignments = kmeans_assignments(embeddings, count, seed=seed)
    cluster_assignments = as_labels("cluster_assignments", cluster_assignments, len(labels))
    return labels, cluster_assignments


def nmi(embeddings, labels, *, num_clusters: int | None = None, seed: int = 0,
        cluster_assignments=None) -> float:
    r"""Normalised mutual information between k-means clusters and labels (Strehl & Ghosh 2002; arithmetic
    normalisation as in scikit-learn): :math:`\mathrm{NMI}(Y, C) = \frac{I(Y; C)}{(H(Y) + H(C))/2}`.

    Args:
        embeddings: (N, D). labels: (N,).
        num_clusters: k for k-means (default: the number of distinct labels).
        cluster_assignments: (N,) precomputed clusters, skipping k-means.

    Example: NMI ignores how clusters are numbered, and is 0 when clusters say nothing about the labels:

    >>> x = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    >>> nmi(x, [0, 0, 1, 1], cluster_assignments=[1, 1, 0, 0]), nmi(x, [0, 1, 0, 1], cluster_assignments=[0, 0, 1, 1])
    (1.0, 0.0)
    """
    from sklearn.metrics import normalized_mutual_info_score

    labels, assignments = _assignments(embeddings, labels, num_clusters, seed, cluster_assignments)
    return float(normalized_mutual_info_score(labels, assignments))


def ami(embeddings, labels, *, num_clusters: int | None = None, seed: int = 0,
        cluster_assignments=None) -> float:
    r"""Adjusted mutual information (Vinh et al. 2010): mutual information corrected for chance,
    :math:`\frac{I - E[I]}{\mathrm{mean}(H(Y), H(C)) - E[I]}`; arguments as ``nmi``."""
    from sklearn.metrics import adjusted_mutual_info_score

    labels, assignments = _assignments(embeddings, labels, num_clusters, seed, cluster_assignments)
    return float(adjusted_mutual_info_score(labels, assignments))
