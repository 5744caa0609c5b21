import numpy as np
import pytest


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Unit vectors around random centres, so nearest neighbours are well separated from the rest."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def data():
    database = clustered(2000, 16, seed=0)
    queries = clustered(40, 16, seed=1)
    ids = np.random.default_rng(2).choice(2**40, size=database.shape[0], replace=False).astype(np.int64)
    return database, queries, ids
