import numpy as np
import pytest

from deepmetric.eval import cmc, dir_at_far, distractor_curve, make_templates


def test_cmc_brute_force():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(20, 6)).astype(np.float32)
    gallery_labels = np.arange(20)
    probes = (gallery[:15] + 0.9 * rng.normal(size=(15, 6))).astype(np.float32)
    probe_labels = np.r_[np.arange(14), 99]  # the last probe has no mate: left out
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    pn = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    ranks = []
    for i in range(14):
        order = np.argsort(-(gn @ pn[i]), kind="stable")
        ranks.append(int(np.nonzero(gallery_labels[order] == probe_labels[i])[0][0]) + 1)
    curve = cmc(probes, probe_labels, gallery, gallery_labels, max_rank=5)
    np.testing.assert_allclose(curve, [np.mean(np.array(ranks) <= r) for r in range(1, 6)])


def test_dir_at_far_hand_computed():
    gallery = np.eye(4, dtype=np.float32)[:3]
    # mated probes: mate scores 0.9 (rank 1), 0.6 (rank 1), 0.6 (rank 2: item 0 scores 0.8)
    probes = np.array([[0.9, np.sqrt(0.19), 0, 0], [0.6, 0, 0, 0.8], [0.8, 0.6, 0, 0]], dtype=np.float32)
    probe_labels = np.array([0, 0, 1])
    # 10 non-mated probes whose top-1 scores are 0.1 .. 0.5 (nine) and 0.7
    top = np.r_[np.linspace(0.1, 0.5, 9), 0.7]
    unknown = np.stack([top, np.zeros(10), np.zeros(10), np.sqrt(1 - top ** 2)], 1).astype(np.float32)
    queries = np.r_[probes, unknown]
    labels = np.r_[probe_labels, np.full(10, 7)]
    # at FPIR 0.1 one non-mated probe may pass: threshold just above the second highest (0.5)
    value = dir_at_far(queries, labels, gallery, np.arange(3), far=0.1)
    assert value == pytest.approx(2 / 3)  # 0.9 and 0.6 pass; the rank-2 mate does not count at rank 1
    assert np.isnan(dir_at_far(queries, labels, gallery, np.arange(3), far=0.01))  # < 100 non-mated


def test_distractor_curve_brute_force():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(10, 8)).astype(np.float32)
    probes = (gallery + 0.7 * rng.normal(size=(10, 8))).astype(np.float32)
    labels = np.arange(10)
    distractors = rng.normal(size=(300, 8)).astype(np.float32)
    curve = distractor_curve(probes, labels, gallery, labels, distractors, counts=(0, 10, 100, 300), block_size=64)

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    for n, value in curve.items():
        full = unit(np.r_[gallery, distractors[:n]])
        top1 = np.argmax(unit(probes) @ full.T, axis=1)
        assert value == pytest.approx(np.mean(top1 == labels)), n
    assert list(curve) == [0, 10, 100, 300]
    generated = distractor_curve(probes, labels, gallery, labels, counts=(10, 1000), block_size=256)
    assert generated[1000] <= generated[10]


def test_templates_mean_of_normalised_and_weighted():
    x = np.array([[2, 0], [0, 5], [1, 1]], dtype=np.float32)
    templates, labels = make_templates(x, [3, 3, 4])
    np.testing.assert_allclose(templates[0], [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
    assert labels.tolist() == [3, 4]
    weighted, _ = make_templates(x, [3, 3, 4], weights=[1.0, 0.0, 1.0])
    np.testing.assert_allclose(weighted[0], [1, 0])
    with pytest.raises(ValueError, match="weights"):
        make_templates(x, [3, 3, 4], weights=[1, -1, 1])
