import numpy as np
import pytest

from index_reference import clustered


@pytest.fixture(scope="session")
def data():
    database = clustered(2000, 16, seed=0)
    queries = clustered(40, 16, seed=1)
    ids = np.random.default_rng(2).choice(2**40, size=database.shape[0], replace=False).astype(np.int64)
    return database, queries, ids
