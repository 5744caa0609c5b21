"""Independent references for the index tests."""

import numpy as np


def brute_force(database, queries, metric, k):
    """Independent numpy reference: full score matrix, stable argsort."""
    if metric == "cosine":
        database = database / np.linalg.norm(database, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = -((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(-1)
    else:
        scores = queries.astype(np.float64) @ database.T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order
