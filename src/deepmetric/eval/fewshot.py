r"""Few-shot classification: N-way K-shot episodes classified by the nearest class prototype."""

from __future__ import annotations

import math

import numpy as np

from deepmetric.distances import canonical_metric
from deepmetric.index.topk import as_embeddings, as_labels
from deepmetric.validation import check_int, check_positive_int


def fewshot_accuracy(embeddings, labels, *, ways: int = 5, shots: int = 1, queries_per_class: int = 15,
                     episodes: int = 600, metric: str = "cosine", seed: int = 0) -> dict[str, float]:
    r"""Mean accuracy over N-way K-shot episodes with prototypes (Snell et al. 2017, "Prototypical Networks
    for Few-shot Learning"). Each episode draws ``ways`` classes, ``shots`` support and
    ``queries_per_class`` query items per class (without overlap); the prototype of class c is
    :math:`p_c = \frac{1}{K}\sum_{i \in S_c} e_i`, a query gets the class of the most similar prototype
    (cosine, dot, or negative Euclidean distance). The 95% interval is
    :math:`\bar a \pm 1.96\,\sigma_a/\sqrt{E}` over the E episode accuracies (the usual few-shot report,
    e.g. Chen et al. 2019).

    Returns:
        {"accuracy": mean, "ci95": half-width, "episodes": E}.

    Example:
        >>> import numpy as np
        >>> x = np.repeat(np.eye(6, dtype=np.float32), 4, axis=0)
        >>> fewshot_accuracy(x, np.repeat(np.arange(6), 4), ways=3, shots=1, queries_per_class=3, episodes=5)
        {'accuracy': 1.0, 'ci95': 0.0, 'episodes': 5}
    """
    x = as_embeddings("embeddings", embeddings).astype(np.float64)
    labels = as_labels("labels", labels, len(x))
    ways = check_int("ways", ways, low=2)  # one way is no choice
    for name, value in (("shots", shots), ("queries_per_class", queries_per_class), ("episodes", episodes)):
        check_positive_int(name, value)
    metric = canonical_metric(metric)
    if metric == "cosine":
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    unique, counts = np.unique(labels, return_counts=True)
    eligible = unique[counts >= shots + queries_per_class]
    if len(eligible) < ways:
        raise ValueError(f"{ways}-way {shots}-shot episodes with {queries_per_class} queries per class need "
                         f"{ways} classes with >= {shots + queries_per_class} items; only {len(eligible)} have")
    members = {c: np.nonzero(labels == c)[0] for c in eligible.tolist()}
    rng = np.random.default_rng(seed)
    accuracies = np.empty(episodes)
    for e in range(episodes):
        classes = rng.choice(eligible, ways, replace=False)
        support, query, query_class = [], [], []
        for c_pos, c in enumerate(classes.tolist()):
            picked = rng.choice(members[c], shots + queries_per_class, replace=False)
            support.append(x[picked[:shots]].mean(0))
            query.append(x[picked[shots:]])
            query_class.append(np.full(queries_per_class, c_pos))
        prototypes, queries = np.stack(support), np.concatenate(query)
        if metric == "euclidean":
            scores = -((queries[:, None, :] - prototypes[None]) ** 2).sum(-1)
        else:
            scores = queries @ prototypes.T
        accuracies[e] = (scores.argmax(1) == np.concatenate(query_class)).mean()
    return {"accuracy": float(accuracies.mean()), "ci95": float(1.96 * accuracies.std() / math.sqrt(episodes)),
            "episodes": episodes}
