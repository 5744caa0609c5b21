import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from deepmetric.eval import ami, fewshot_accuracy, nmi


def test_fewshot_brute_force_episode():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 10)
    x = (rng.normal(size=(8, 5))[labels] + 1.5 * rng.normal(size=(80, 5))).astype(np.float32)
    result = fewshot_accuracy(x, labels, ways=3, shots=2, queries_per_class=4, episodes=1, seed=7)
    # replay the same draws
    rng = np.random.default_rng(7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    classes = rng.choice(np.arange(8), 3, replace=False)
    protos, correct = [], []
    picks = []
    for c in classes:
        picked = rng.choice(np.nonzero(labels == c)[0], 6, replace=False)
        picks.append(picked)
        protos.append(xn[picked[:2]].mean(0))
    for pos, picked in enumerate(picks):
        correct.extend(np.argmax(np.stack(protos) @ xn[q]) == pos for q in picked[2:])
    assert result["accuracy"] == pytest.approx(np.mean(correct))


def test_fewshot_interval_and_errors():
    labels = np.repeat(np.arange(6), 5)
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    result = fewshot_accuracy(x, labels, ways=5, shots=1, queries_per_class=4, episodes=50)
    assert 0 <= result["accuracy"] <= 1 and result["ci95"] > 0
    with pytest.raises(ValueError, match="need 5 classes"):
        fewshot_accuracy(x, labels, ways=5, shots=3, queries_per_class=3)


def test_nmi_ami_match_sklearn():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 20)
    x = (rng.normal(size=(5, 8))[labels] * 3 + rng.normal(size=(100, 8))).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    clusters = KMeans(n_clusters=5, n_init=1, random_state=0).fit_predict(xn)
    assert nmi(x, labels) == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert ami(x, labels) == pytest.approx(adjusted_mutual_info_score(labels, clusters))
    assert nmi(x, labels, cluster_assignments=labels) == pytest.approx(1.0)
