import math

import numpy as np
import pytest

from deepmetric import registry
from deepmetric.eval import map_at_r, recall_at_k
from deepmetric.eval.evaluators import query_gallery_rows


def build_evaluator(name, **args):
    return registry.build({"name": name, "args": args}, "evaluator")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 20
    x = (rng.normal(size=(20, 12))[labels] + 0.9 * rng.normal(size=(300, 12))).astype(np.float32)
    return x, labels


def test_retrieval_evaluator_agrees_with_pure_functions(data):
    x, labels = data
    evaluator = build_evaluator("retrieval", ks=(1, 4))
    out = evaluator(x, labels)
    assert evaluator.primary_metric == "retrieval/map@r"
    assert out["retrieval/map@r"] == pytest.approx(map_at_r(x, labels))
    assert out["retrieval/recall@4"] == pytest.approx(recall_at_k(x, labels, k=4))
    assert all(isinstance(v, float) for v in out.values())


def test_verification_evaluator_flags_unsupported_far(data):
    x, labels = data
    evaluator = build_evaluator("verification", num_bootstrap=20)
    out = evaluator(x, labels)
    assert out["verification/num_impostor"] == 300 * 299 / 2 - 20 * 15 * 14 / 2
    assert out["verification/tar@far=1e-4/available"] == 1.0
    assert out["verification/tar@far=1e-6/available"] == 0.0 and math.isnan(out["verification/tar@far=1e-6"])
    assert out["verification/auc_ci95_low"] <= out["verification/auc"] <= out["verification/auc_ci95_high"]
    assert evaluator.primary_metric in out


def test_identification_evaluator(data):
    x, labels = data
    evaluator = build_evaluator("identification", unknown_fraction=0.25, distractor_counts=(10, 100))
    out = evaluator(x, labels)
    assert out["identification/num_non_mated_probes"] == 5 * 15
    assert out["identification/rank@1"] <= out["identification/rank@5"] <= out["identification/rank@10"]
    assert out["identification/dir@fpir=1e-2/available"] == 0.0
    assert out["identification/rank1@distractors=100"] <= out["identification/rank1@distractors=10"]
    templated = build_evaluator("identification", enroll_per_identity=3)(x, labels)
    assert templated["identification/num_mated_probes"] == 16 * (15 - 3)  # 4 of 20 identities unknown


def test_other_evaluators_and_bad_protocol(data):
    x, labels = data
    assert "fewshot/5way1shot/accuracy" in build_evaluator("fewshot", queries_per_class=10, episodes=20)(x, labels)
    assert 0 < build_evaluator("clustering")(x, labels)["clustering/nmi"] <= 1
    with pytest.raises(ValueError, match="Did you mean 'retrieval'"):
        build_evaluator("retreival")


@pytest.mark.parametrize("name", registry.names("evaluator"))
def test_every_registered_evaluator_builds_from_its_example_and_names_its_primary_metric(name, data):
    x, labels = data
    evaluator = registry.build({"name": name, "args": registry.example("evaluator", name)}, "evaluator")
    out = evaluator(x, labels)
    assert evaluator.primary_metric in out and all(key.startswith(f"{evaluator.name}/") for key in out)
    assert set(registry.names("evaluator")) == {"retrieval", "verification", "identification", "fewshot",
                                                 "clustering"}


def brute_force_flags(x, labels, is_query, is_gallery, k):
    """Loops over rows: each query row ranks the other gallery rows by cosine (ties by row), then the metrics."""
    unit = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    recall, precision, r_precision, map_r, ap = [], [], [], [], []
    for q in np.flatnonzero(is_query):
        gallery = [g for g in np.flatnonzero(is_gallery) if g != q]
        order = sorted(gallery, key=lambda g: (-unit[q] @ unit[g], g))
        rel = np.array([labels[g] == labels[q] for g in order], bool)
        r = int(rel.sum())
        if r == 0:
            continue
        recall.append(float(rel[:k].any()))
        precision.append(rel[:k].sum() / k)
        r_precision.append(rel[:r].sum() / r)
        hits = np.cumsum(rel)
        map_r.append(sum(hits[i] / (i + 1) for i in range(r) if rel[i]) / r)
        ap.append(sum(hits[i] / (i + 1) for i in range(len(rel)) if rel[i]) / r)
    return {"recall@3": np.mean(recall), "precision@3": np.mean(precision), "r_precision": np.mean(r_precision),
            "map@r": np.mean(map_r), "map": np.mean(ap), "num_queries": len(recall)}


def test_retrieval_honours_is_query_and_is_gallery_against_brute_force(loop_index):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 7, size=90)
    x = (rng.normal(size=(7, 6))[labels] + 1.1 * rng.normal(size=(90, 6))).astype(np.float32)
    # query-only, gallery-only and both-flag rows; some classes have a single gallery row
    kind = rng.integers(0, 3, size=90)
    is_query, is_gallery = kind != 1, kind != 0
    expected = brute_force_flags(x, labels, is_query, is_gallery, k=3)
    evaluator = build_evaluator("retrieval", ks=(1, 3), full_map=True)
    out = evaluator(x, labels, is_query=is_query, is_gallery=is_gallery)
    for key, value in expected.items():
        assert out[f"retrieval/{key}"] == pytest.approx(value, abs=1e-9), key
    query_rows, gallery_rows = query_gallery_rows(is_query, is_gallery, len(x))
    ids = evaluator.details["neighbours"].ids
    assert not (gallery_rows[np.maximum(ids, 0)] == query_rows[:, None])[ids >= 0].any()  # never itself
    # through an index holding the gallery rows: the same lists, each query's own row dropped
    through_index = build_evaluator("retrieval", ks=(1, 3), index=loop_index(x[gallery_rows]))
    indexed = through_index(x, labels, is_query=is_query, is_gallery=is_gallery)
    assert indexed["retrieval/ann_neighbour_recall"] == 1.0
    assert indexed["retrieval/map@r"] == pytest.approx(expected["map@r"], abs=1e-6)


def test_every_row_query_and_gallery_is_leave_one_out(data):
    x, labels = data
    flags = np.ones(len(x), bool)
    assert build_evaluator("retrieval")(x, labels, is_query=flags, is_gallery=flags) == \
        build_evaluator("retrieval")(x, labels)


def test_bad_flags_are_rejected(data):
    x, labels = data
    with pytest.raises(ValueError, match="is_query must be a bool array of shape"):
        build_evaluator("retrieval")(x, labels, is_query=np.ones(3, bool))
    with pytest.raises(ValueError, match="at least one query"):
        build_evaluator("retrieval")(x, labels, is_query=np.zeros(len(x), bool))
    with pytest.raises(ValueError, match="not both"):
        build_evaluator("retrieval")(x, labels, is_query=np.ones(len(x), bool), gallery_embeddings=x,
                                     gallery_labels=labels)


def test_retrieval_through_an_ann_index_reports_the_loss(data):
    pytest.importorskip("hnswlib")
    from deepmetric.index import build_index

    x, labels = data
    index = build_index("HNSW32", x.shape[1], backend="hnswlib")
    index.add(x, ids=np.arange(len(x)))
    out = build_evaluator("retrieval", index=index)(x, labels)
    assert 0.9 <= out["retrieval/ann_neighbour_recall"] <= 1.0
    assert out["retrieval/ann_map@r_loss"] == pytest.approx(out["retrieval/exact/map@r"] - out["retrieval/map@r"])
    assert abs(out["retrieval/ann_map@r_loss"]) < 0.05
