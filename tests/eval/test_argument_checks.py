"""The evaluation's arguments go through deepmetric.validation: a wrong type is a TypeError, a wrong value a
ValueError, each naming the argument and the value; the accepted forms (numpy integers among them) work."""

import numpy as np
import pytest

from deepmetric import registry
from deepmetric.eval.calibration import calibrate_threshold
from deepmetric.eval.clustering import kmeans_assignments
from deepmetric.eval.pipeline import evaluate
from deepmetric.eval.retrieval import recall_from_neighbours, search_neighbours
from deepmetric.eval.verification import bootstrap_ci, pair_scores, tar_at_far, verification_kfold


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.7, 0.1, 200), rng.normal(0.1, 0.1, 2000)]
    return scores, np.r_[np.ones(200, bool), np.zeros(2000, bool)]


def test_pair_scores_takes_two_matrices_of_one_shape():
    a = np.eye(3)
    np.testing.assert_allclose(pair_scores(a, a.tolist()), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"embeddings_a must be a matrix of shape \(N, D\), got shape \(3,\)"):
        pair_scores(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"embeddings_b must be a matrix of shape \(N, 3\), got shape \(3, 2\)"):
        pair_scores(a, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"embeddings_b must have one row per row of embeddings_a \(3\), got 2"):
        pair_scores(a, a[:2])


def test_rates_folds_and_bootstrap_arguments(pairs):
    scores, same = pairs
    assert 0 <= tar_at_far(scores, same, np.float32(0.01)) <= 1
    assert verification_kfold(scores, same, folds=np.int64(5))["accuracy"] > 0.9
    for far in (0, 1, float("nan")):
        with pytest.raises(ValueError, match=r"far must be a finite number in \(0, 1\)"):
            tar_at_far(scores, same, far)
    with pytest.raises(TypeError, match=r"far must be a finite number in .*got str: '0.01'"):
        tar_at_far(scores, same, "0.01")
    with pytest.raises(ValueError, match=r"folds must be an integer in \[2, 2200\], got 2201"):
        verification_kfold(scores, same, folds=2201)
    with pytest.raises(TypeError, match=r"folds must be an integer in .*got float: 5.0"):
        verification_kfold(scores, same, folds=5.0)

    def statistic(values, flags):
        return float(values[flags].mean())

    low, high = bootstrap_ci(scores, same, statistic, num_bootstrap=20, confidence=0.9)
    assert low <= high
    with pytest.raises(ValueError, match=r"confidence must be a finite number in \(0, 1\), got 1"):
        bootstrap_ci(scores, same, statistic, confidence=1)
    assert all(np.isnan(bootstrap_ci(scores, same, statistic, num_bootstrap=0)))  # no interval asked for
    with pytest.raises(ValueError, match=r"num_bootstrap must be a non-negative integer, got -1"):
        bootstrap_ci(scores, same, statistic, num_bootstrap=-1)
    with pytest.raises(ValueError, match=r"target_far must be a finite number in \(0, 1\), got 1.5"):
        calibrate_threshold(scores, same, target_far=1.5)
    with pytest.raises(TypeError, match=r"target_far must be .*got NoneType"):
        calibrate_threshold(scores, same, target_far=None)


def test_neighbour_cut_offs():
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    labels = np.arange(30) % 3
    nb = search_neighbours(x, labels, k=5)
    assert recall_from_neighbours(nb, np.int64(5)) >= recall_from_neighbours(nb, 1)
    with pytest.raises(ValueError, match=r"k must be a positive integer, got 0"):
        recall_from_neighbours(nb, 0)
    with pytest.raises(TypeError, match=r"k must be a positive integer, got bool: True"):
        recall_from_neighbours(nb, True)
    with pytest.raises(ValueError, match=r"k=6 needs 6 neighbours but only 5 were searched"):
        recall_from_neighbours(nb, 6)


def test_num_clusters():
    x = np.random.default_rng(0).normal(size=(12, 3))
    assert len(np.unique(kmeans_assignments(x, np.int64(3)))) == 3
    with pytest.raises(ValueError, match=r"num_clusters must be an integer in \[1, 12\], got 13"):
        kmeans_assignments(x, 13)
    with pytest.raises(TypeError, match=r"num_clusters must be an integer in .*got float: 3.0"):
        kmeans_assignments(x, 3.0)


def build(name, **args):
    return registry.build({"name": name, "args": args}, "evaluator")


def test_evaluator_constructors_accept_their_documented_forms():
    assert build("retrieval", ks=[1, np.int64(5)], map_at_k=None).ks == (1, 5)
    assert build("verification", fars=(0.1, np.float64(0.01)), folds=np.int64(4)).fars == (0.1, 0.01)
    assert build("identification", ranks=range(1, 4), unknown_fraction=0).ranks == (1, 2, 3)
    assert build("clustering", num_clusters=np.int64(4)).num_clusters == 4


@pytest.mark.parametrize("name, args, error, message", [
    ("retrieval", {"ks": ()}, ValueError, r"ks must be a non-empty sequence of positive integers, got \(\)"),
    ("retrieval", {"ks": 5}, TypeError, "ks must be a non-empty sequence of positive integers, got int: 5"),
    ("retrieval", {"ks": "15"}, TypeError, "ks must be a non-empty sequence .*got str: '15'"),
    ("retrieval", {"ks": (1, 0)}, ValueError, r"ks\[1\] must be a positive integer, got 0"),
    ("retrieval", {"map_at_k": 0}, ValueError, "map_at_k must be a positive integer or None, got 0"),
    ("identification", {"ranks": (1.0,)}, TypeError, r"ranks\[0\] must be a positive integer, got float: 1.0"),
    ("identification", {"unknown_fraction": 1}, ValueError, r"unknown_fraction must be a finite number in \[0, 1\)"),
    ("verification", {"fars": (0.1, 0)}, ValueError, r"fars\[1\] must be a finite number in \(0, 1\), got 0"),
    ("verification", {"folds": 1}, ValueError, "folds must be an integer >= 2, got 1"),
    ("verification", {"num_bootstrap": -1}, ValueError, "num_bootstrap must be a non-negative integer, got -1"),
    ("clustering", {"num_clusters": 0}, ValueError, "num_clusters must be a positive integer or None, got 0"),
])
def test_evaluator_constructors_refuse_with_the_shared_messages(name, args, error, message):
    with pytest.raises(error, match=message):
        build(name, **args)


def test_saved_embeddings_must_be_a_finite_float_matrix(saved, tmp_path):
    folder = saved[0]
    for stem, array, error, message in [
        ("flat", np.zeros(160, np.float32), ValueError, r"must be a matrix of shape \(N, D\), got shape \(160,\)"),
        ("nan", np.full((160, 6), np.nan, np.float32), ValueError, "must hold finite values, got 960 NaN"),
        ("ints", np.zeros((160, 6), np.int64), TypeError, "must be a floating-point .* got dtype int64"),
    ]:
        path = tmp_path / f"{stem}.npy"
        np.save(path, array)
        with pytest.raises(error, match=f"the embeddings in .*{stem}.npy {message}"):
            evaluate({"embeddings": str(path), "labels": str(folder / "labels.npy"),
                      "output_dir": str(tmp_path / "out"), "embedding_map": False})


def test_fewshot_ways_and_metric_aliases():
    from deepmetric.eval import fewshot_accuracy

    labels = np.repeat(np.arange(6), 5)
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    args = dict(shots=1, queries_per_class=4, episodes=20)
    assert fewshot_accuracy(x, labels, ways=3, metric="l2", **args) == fewshot_accuracy(
        x, labels, ways=np.int64(3), metric="euclidean", **args)
    with pytest.raises(ValueError, match=r"ways must be an integer >= 2, got 1"):
        fewshot_accuracy(x, labels, ways=1, **args)
    with pytest.raises(TypeError, match=r"ways must be an integer >= 2, got float: 3.0"):
        fewshot_accuracy(x, labels, ways=3.0, **args)
    with pytest.raises(ValueError, match=r"metric must be one of .*got 'cosin'"):
        fewshot_accuracy(x, labels, ways=3, metric="cosin", **args)


def test_pair_scores_read_the_metric_aliases():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_array_equal(pair_scores(a, b, metric="ip"), pair_scores(a, b, metric="dot"))
    np.testing.assert_array_equal(pair_scores(a, b, metric="L2"), -np.linalg.norm(a - b, axis=1))
    with pytest.raises(ValueError, match="metric must be one of"):
        pair_scores(a, b, metric="manhattan")


def test_distractor_counts_are_non_negative_integers():
    from deepmetric.eval import distractor_curve

    rng = np.random.default_rng(1)
    gallery, labels = rng.normal(size=(5, 4)).astype(np.float32), np.arange(5)
    distractors = rng.normal(size=(20, 4)).astype(np.float32)
    assert list(distractor_curve(gallery, labels, gallery, labels, distractors, counts=[np.int64(3), 0])) == [0, 3]
    for counts, error, message in [((), ValueError, "counts must name at least one distractor count"),
                                   ((0, -1), ValueError, r"counts\[1\] must be a non-negative integer, got -1"),
                                   ((1.5,), TypeError, r"counts\[0\] must be a non-negative integer, got float")]:
        with pytest.raises(error, match=message):
            distractor_curve(gallery, labels, gallery, labels, distractors, counts=counts)
