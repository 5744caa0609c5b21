import math

import numpy as np
import pytest

from deepmetric.eval import build_evaluator, map_at_r, recall_at_k


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
    with pytest.raises(ValueError, match="protocol must be one of"):
        build_evaluator("retreival")


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
