"""Independent references for the index tests."""

import numpy as np


def brute_force(database, queries, metric, k):
    """Independent numpy reference in float64: full score matrix, stable argsort (ties to the lowest position).
    Scores are similarities: cosine, dot, minus the Euclidean distance."""
    metric = {"ip": "dot", "l2": "euclidean"}.get(metric, metric)
    if metric == "cosine":
        database = database / np.linalg.norm(database, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "euclidean":
        scores = -np.sqrt(((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(-1))
    else:
        scores = queries.astype(np.float64) @ database.T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def lane_scores(q, g, metric):
    """Every (query, item) score by the engine's documented float32 arithmetic, written independently in numpy:
    eight running sums over dimensions d = l (mod 8), a tail, then ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))."""
    euclidean = metric == "euclidean"
    dim = q.shape[1]
    full = dim - dim % 8
    lanes = np.zeros((len(q), len(g), 8), np.float32)
    for d in range(0, full, 8):
        a, b = q[:, None, d:d + 8], g[None, :, d:d + 8]
        lanes += (a - b) * (a - b) if euclidean else a * b
    tail = np.zeros((len(q), len(g)), np.float32)
    for d in range(full, dim):
        a, b = q[:, None, d], g[None, :, d]
        tail += (a - b) * (a - b) if euclidean else a * b
    s = lanes.transpose(2, 0, 1)
    total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail
    return (-np.sqrt(total) if euclidean else total) + np.float32(0.0)


def ranked(scores, k):
    """Ids (Q, k) and scores of a full score matrix: score descending, then position ascending; -1 / -inf pad."""
    ids = np.full((len(scores), k), -1, np.int64)
    out = np.full((len(scores), k), -np.inf, np.float32)
    for row, values in enumerate(scores):
        order = np.lexsort((np.arange(len(values)), -values))
        order = order[np.isfinite(values[order])][:k]
        ids[row, :len(order)], out[row, :len(order)] = order, values[order]
    return ids, out


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Unit vectors around random centres, so nearest neighbours are well separated from the rest."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
