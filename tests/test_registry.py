import pytest

from deepmetric import registry


def test_unknown_name_has_hint():
    with pytest.raises(ValueError, match="Did you mean 'euclidean'"):
        registry.build({"name": "euclidian"})


def test_unknown_argument_has_hint():
    with pytest.raises(ValueError, match="normalize_embeddings"):
        registry.build({"name": "euclidean", "args": {"normalise_embeddings": True}})


def test_unknown_node_key():
    with pytest.raises(ValueError, match="only 'name' and 'args'"):
        registry.build({"name": "euclidean", "arg": {}})


def test_build_and_extra():
    dist = registry.build({"name": "mahalanobis"}, dim=4)
    assert dist.projection.shape == (4, 4)
