import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from deepmetric.eval import (
    global_average_precision,
    map_at_r,
    mean_average_precision,
    precision_at_k,
    r_precision,
    recall_at_k,
)
from deepmetric.eval.retrieval import (
    gap_from_predictions,
    map_at_k_from_neighbours,
    revisited_ap,
    revisited_oxford_paris,
    search_neighbours,
)


def ranked_lists(x, labels, gallery=None, gallery_labels=None):
    """Brute force: for each query, the labels of the gallery sorted by cosine (desc), self removed."""
    same = gallery is None
    g, gl = (x, labels) if same else (gallery, gallery_labels)
    qn = x / np.linalg.norm(x, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = []
    for i, q in enumerate(qn):
        scores = gn @ q
        order = [j for j in sorted(range(len(g)), key=lambda j: (-scores[j], j)) if not (same and j == i)]
        out.append(np.array([gl[j] == labels[i] for j in order]))
    return out


def loop_metrics(x, labels, k, gallery=None, gallery_labels=None):
    lists = ranked_lists(x, labels, gallery, gallery_labels)
    recall, precision, rprec, mapr, ap = [], [], [], [], []
    for rel in lists:
        r = int(rel.sum())
        if r == 0:
            continue
        recall.append(float(rel[:k].any()))
        precision.append(rel[:k].sum() / k)
        rprec.append(rel[:r].sum() / r)
        total = 0.0
        for i in range(r):
            if rel[i]:
                total += rel[: i + 1].sum() / (i + 1)
        mapr.append(total / r)
        hits = np.cumsum(rel)
        ap.append(sum(hits[i] / (i + 1) for i in range(len(rel)) if rel[i]) / r)
    return {name: float(np.mean(v)) for name, v in
            dict(recall=recall, precision=precision, r_precision=rprec, map_at_r=mapr, map=ap).items()}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    # class sizes 1..9, including a single-member class (no relevant items)
    labels = np.repeat(np.arange(9), np.arange(1, 10))
    centres = rng.normal(size=(9, 6))
    x = (centres[labels] + 1.2 * rng.normal(size=(len(labels), 6))).astype(np.float32)
    return x, labels


def test_against_brute_force_loops(data):
    x, labels = data
    expected = loop_metrics(x, labels, k=3)
    assert recall_at_k(x, labels, k=3) == pytest.approx(expected["recall"])
    assert precision_at_k(x, labels, k=3) == pytest.approx(expected["precision"])
    assert r_precision(x, labels) == pytest.approx(expected["r_precision"])
    assert map_at_r(x, labels) == pytest.approx(expected["map_at_r"])
    assert mean_average_precision(x, labels, query_block_size=5) == pytest.approx(expected["map"])


def test_separate_gallery(data):
    x, labels = data
    q, ql, g, gl = x[::3], labels[::3], x[1::3], labels[1::3]
    expected = loop_metrics(q, ql, 2, g, gl)
    assert recall_at_k(q, ql, g, gl, k=2) == pytest.approx(expected["recall"])
    assert map_at_r(q, ql, g, gl) == pytest.approx(expected["map_at_r"])
    assert mean_average_precision(q, ql, g, gl) == pytest.approx(expected["map"])


def test_map_against_sklearn_average_precision(data):
    x, labels = data
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    aps = []
    for i in range(len(x)):
        others = np.arange(len(x)) != i
        relevant = labels[others] == labels[i]
        if relevant.any():
            aps.append(average_precision_score(relevant, xn[others] @ xn[i]))
    assert mean_average_precision(x, labels) == pytest.approx(np.mean(aps))


def test_trap_map_at_r_never_capped_by_small_k():
    # class 0 has 6 members; a k-capped implementation (k=2) would report MAP@R = 1.0 here
    x = np.array([[1, 0], [0.99, 0.1], [0.98, 0.2], [0, 1], [0.1, 0.99], [0.2, 0.98], [0.97, 0.25],
                  [0.3, 0.95], [0.35, 0.93]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0])
    value = map_at_r(x, labels)
    assert value == pytest.approx(loop_metrics(x, labels, 1)["map_at_r"])
    assert value < 0.9


def test_trap_map_divided_by_all_relevant_not_retrieved():
    # one query, two relevant items: first at rank 1, second at rank 4; AP = (1/1 + 2/4) / 2
    nb_ids = np.array([[0, 1, 2, 3]])
    from deepmetric.eval.retrieval import Neighbours
    nb = Neighbours(nb_ids, np.zeros((1, 4), np.float32), np.array([[True, False, False, True]]), np.array([2]))
    assert map_at_k_from_neighbours(nb, None) == pytest.approx(0.75)
    # AP@2 divides by min(R, 2) = 2, not by the 1 relevant item retrieved
    assert map_at_k_from_neighbours(nb, 2) == pytest.approx(0.5)


def test_ties_ranked_by_index():
    # items 1 and 2 are exact duplicates: 1 (wrong label) ranks before 2 (right label)
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    assert precision_at_k(x, labels, k=1) == pytest.approx(np.mean([0, 0, 1, 0]))


def test_empty_results_and_no_relevant():
    x = np.eye(3, dtype=np.float32)
    assert np.isnan(recall_at_k(x, [0, 1, 2], k=1))  # nobody has a relevant item
    assert recall_at_k(x, [0, 0, 1], k=5) == 1.0  # k larger than the gallery


def test_ann_index_plug_in_drops_self(loop_index):
    x = np.random.default_rng(3).normal(size=(40, 5)).astype(np.float32)
    labels = np.arange(40) % 4
    exact = search_neighbours(x, labels, k=5)
    approx = search_neighbours(x, labels, k=5, index=loop_index(x))
    np.testing.assert_array_equal(exact.ids, approx.ids)


def test_gap_hand_computed():
    # sorted by confidence: correct, non-landmark (wrong), correct, wrong; M = 3 landmark queries
    predicted = np.array([1, 5, 2, 9])
    confidences = np.array([0.9, 0.8, 0.7, 0.6])
    truth = np.array([1, -1, 2, 3])
    assert gap_from_predictions(predicted, confidences, truth) == pytest.approx((1 / 1 + 2 / 3) / 3)
    g = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0.1, 0], [0.1, 0.7, 0.7]], dtype=np.float32)
    assert global_average_precision(q, [0, -1], g, [0, 1, 2]) == pytest.approx(1.0)
    # a confident non-landmark query ranked first halves the precision of the correct one
    q = np.array([[1, 0.1, 0], [0, 0, 1]], dtype=np.float32)
    assert global_average_precision(q, [0, -1], g, [0, 1, 2]) == pytest.approx(0.5)


def test_revisited_protocol_ignores_junk():
    # ranking: junk, positive, negative, positive -> junk removed: positives at ranks 0 and 2
    assert revisited_ap([7, 1, 5, 2], [1, 2], [7]) == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    g = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0.5, 0.2, 0]], dtype=np.float32)
    out = revisited_oxford_paris(q, g, [{"easy": [0], "hard": [2], "junk": [1]}], ks=(1,))
    assert out["easy/map"] == pytest.approx(1.0)
    assert out["hard/map"] == pytest.approx(1.0)  # easy item 0 ignored, hard item 2 is first of the rest
    assert out["medium/map"] == pytest.approx(1.0)
