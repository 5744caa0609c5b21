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


def test_every_kind_is_registered_by_its_listed_module():
    for kind in registry.kinds():
        assert kind in registry.KIND_MODULES, f"kind {kind!r} has no entry in registry.KIND_MODULES"
        listed = registry.KIND_MODULES[kind]
        listed = (listed,) if isinstance(listed, str) else listed
        for name in registry.names(kind):
            module = registry.get(name, kind).__module__
            assert any(module == entry or module.startswith(entry + ".") for entry in listed), (kind, name, module)


def test_a_lookup_imports_only_its_kind():
    import subprocess
    import sys

    code = ("import sys; from deepmetric import registry; registry.get('triplet', 'loss'); "
            "print('deepmetric.eval.evaluators' in sys.modules); registry.get('retrieval', 'evaluator'); "
            "print('deepmetric.eval.evaluators' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == ["False", "True"]


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown component kind 'evaluater'.*Did you mean 'evaluator'"):
        registry.get("retrieval", "evaluater")
