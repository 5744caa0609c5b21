"""Golden tests of the Google Landmarks metrics (GAP, mAP@100) and the revisited Oxford/Paris mAP: hand-computed
values, and independent re-implementations written from the challenges' published definitions."""

import numpy as np
import pytest

from deepmetric.eval.retrieval import (
    gap_from_predictions,
    gap_from_solution,
    map_at_k_from_predictions,
    revisited_ap,
    revisited_from_rankings,
    revisited_oxford_paris,
)


def challenge_gap(predictions, solution, ignore_non_gt=False):
    """The recognition challenge's GAP, step by step as its evaluation script does it: count the queries with
    ground truth, walk the predictions by descending score (Python's stable sort), add precision at each hit."""
    expected = sum(1 for labels in solution.values() if labels)
    ranked = sorted(predictions.items(), key=lambda item: item[1][1], reverse=True)
    made = correct = 0
    gap = 0.0
    for key, (label, _) in ranked:
        if ignore_non_gt and not solution[key]:
            continue
        made += 1
        if label in solution[key]:
            correct += 1
            gap += correct / made
    return gap / expected


def test_gap_hand_computed_with_non_landmarks_and_ties():
    # order by confidence, ties in query order: a (0.9, right), b (0.9, guess on a non-landmark), c (0.5, wrong),
    # d (0.5, right), e (no prediction, landmark); M = 4 (a, c, d, e)
    solution = {"a": {1}, "b": set(), "c": {2}, "d": {3, 4}, "e": {5}}
    predictions = {"a": (1, 0.9), "b": (7, 0.9), "c": (9, 0.5), "d": (4, 0.5)}
    expected = (1 / 1 + 2 / 4) / 4
    assert gap_from_solution(predictions, solution) == pytest.approx(expected)
    assert challenge_gap(predictions, solution) == pytest.approx(expected)
    # the tie resolved the other way round (b first) changes the value: ties follow the query order
    swapped = {"b": (7, 0.9), "a": (1, 0.9), "c": (9, 0.5), "d": (4, 0.5)}
    solution_swapped = {"b": set(), "a": {1}, "c": {2}, "d": {3, 4}, "e": {5}}
    assert gap_from_solution(swapped, solution_swapped) == pytest.approx((1 / 2 + 2 / 4) / 4)
    # ignoring the non-landmark query's prediction: a, c, d -> (1 + 2/3) / 4
    assert gap_from_solution(predictions, solution, ignore_non_landmark_queries=True) == pytest.approx(
        (1 + 2 / 3) / 4)


def test_gap_abstaining_on_non_landmark_costs_nothing():
    truth = np.array([1, -1, 2])
    confidences = np.array([0.9, 0.8, 0.7])
    assert gap_from_predictions([1, 5, 2], confidences, truth) == pytest.approx((1 + 2 / 3) / 2)
    assert gap_from_predictions([1, -1, 2], confidences, truth) == pytest.approx(1.0)
    assert gap_from_predictions([1, 5, 2], [0.9, np.nan, 0.7], truth) == pytest.approx(1.0)  # NaN: no prediction
    assert np.isnan(gap_from_predictions([1], [0.5], [-1]))  # no landmark query at all: undefined


@pytest.mark.parametrize("seed", range(5))
def test_gap_matches_the_challenge_script(seed):
    rng = np.random.default_rng(seed)
    num = 60
    truth = rng.integers(-1, 6, num)  # -1: non-landmark
    predicted = rng.integers(-1, 6, num)  # -1: abstain
    confidences = np.round(rng.random(num), 1)  # many ties
    solution = {f"q{i}": set() if t < 0 else {int(t)} for i, t in enumerate(truth)}
    predictions = {f"q{i}": (int(p), float(c)) for i, (p, c) in enumerate(zip(predicted, confidences)) if p >= 0}
    for ignore in (False, True):
        expected = challenge_gap(predictions, solution, ignore)
        assert gap_from_predictions(predicted, confidences, truth, ignore_non_landmark_queries=ignore) == \
            pytest.approx(expected)
        assert gap_from_solution(predictions, solution, ignore_non_landmark_queries=ignore) == pytest.approx(expected)


def test_gap_multi_label_truth_and_errors():
    assert gap_from_predictions([3, 2], [0.2, 0.1], [[1, 3], []]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the solution"):
        gap_from_solution({"zz": (1, 0.5)}, {"a": {1}})
    with pytest.raises(ValueError, match="one entry per query"):
        gap_from_predictions([1, 2], [0.5, 0.4], [[1]])
    with pytest.raises(ValueError, match="same length"):
        gap_from_predictions([1, 2], [0.5], [1, 2])


def challenge_map(predictions, solution, k=100):
    total = 0.0
    for key, relevant in solution.items():
        ranked = predictions.get(key, [])
        ap, hits, used = 0.0, 0, set()
        for i in range(min(len(ranked), k)):
            if ranked[i] in used:
                continue
            used.add(ranked[i])
            if ranked[i] in relevant:
                hits += 1
                ap += hits / (i + 1)
        total += ap / min(len(relevant), k)
    return total / len(solution)


def test_map_at_100_hand_computed():
    solution = {"q1": ["a", "b", "c"], "q2": ["d"], "q3": ["e"]}
    predictions = {"q1": ["x", "a", "a", "c"],  # hits at ranks 2 and 4 (the repeated a is skipped, keeps rank 3)
                   "q2": ["d"]}  # q3 predicted nothing: 0
    expected = ((1 / 2 + 2 / 4) / 3 + 1 + 0) / 3
    assert map_at_k_from_predictions(predictions, solution) == pytest.approx(expected)
    assert challenge_map(predictions, solution) == pytest.approx(expected)
    # the cut-off: beyond K nothing counts, and the denominator is min(m, K)
    assert map_at_k_from_predictions({"q": ["x", "a"]}, {"q": ["a", "b", "c"]}, k=1) == 0.0
    assert map_at_k_from_predictions({"q": ["a", "x"]}, {"q": ["a", "b", "c"]}, k=1) == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_map_at_100_matches_the_challenge_script(seed):
    rng = np.random.default_rng(seed)
    solution = {f"q{i}": [f"i{j}" for j in rng.choice(300, rng.integers(1, 150), replace=False)] for i in range(20)}
    predictions = {f"q{i}": [f"i{j}" for j in rng.integers(0, 300, 130)] for i in range(18)}
    assert map_at_k_from_predictions(predictions, solution) == pytest.approx(challenge_map(predictions, solution))


def test_map_at_100_errors():
    with pytest.raises(ValueError, match="no relevant"):
        map_at_k_from_predictions({}, {"q": []})
    with pytest.raises(ValueError, match="not in the solution"):
        map_at_k_from_predictions({"z": ["a"]}, {"q": ["a"]})
    with pytest.raises(ValueError, match="k"):
        map_at_k_from_predictions({}, {"q": ["a"]}, k=0)


def brute_force_revisited_ap(ranking, positive, junk):
    """AP as the revisited benchmark's script computes it: positions of positives and junk in the ranking,
    each positive's position lowered by the junk ranked before it, trapezoids of the precision-recall curve."""
    ranking = list(ranking)
    pos = np.array(sorted(ranking.index(p) for p in positive if p in ranking))
    junk_pos = np.array(sorted(ranking.index(j) for j in junk if j in ranking))
    adjusted = np.array([p - (junk_pos < p).sum() for p in pos], dtype=float)
    ap = 0.0
    recall_step = 1.0 / len(positive)
    for j, rank in enumerate(adjusted):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2
    return ap


def test_revisited_map_hand_computed():
    # gallery 0..5, ranking 3 0 4 1 5 2; easy {0, 1}, hard {2}, junk {4}
    gt = [{"easy": [0, 1], "hard": [2], "junk": [4]}]
    out = revisited_from_rankings([[3, 0, 4, 1, 5, 2]], gt, ks=(1, 2))
    # easy: ignore 4 and 2 -> 3 0 1 5: positives at 1, 2 -> ((0 + 1/2)/2 + (1/2 + 2/3)/2) / 2
    assert out["easy/map"] == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # medium: ignore 4 -> 3 0 1 5 2: positives at 1, 2, 4
    assert out["medium/map"] == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3)
    # hard: ignore 4, 0, 1 -> 3 5 2: positive at 2
    assert out["hard/map"] == pytest.approx((0 + 1 / 3) / 2)
    assert out["easy/mp@1"] == 0.0 and out["easy/mp@2"] == 0.5 and out["hard/mp@2"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_revisited_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gallery, queries = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(7, 6)).astype(np.float32)
    gt = []
    for _ in queries:
        chosen = rng.permutation(40)
        gt.append({"easy": chosen[:5].tolist(), "hard": chosen[5:8].tolist(), "junk": chosen[8:12].tolist()})
    gt[0]["hard"] = []  # a query without hard positives is skipped in the hard setting
    out = revisited_oxford_paris(queries, gallery, gt, ks=(5,))
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
        (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    ranking = np.argsort(-scores, axis=1, kind="stable")
    for setting, positive_keys, junk_keys in (("easy", ["easy"], ["junk", "hard"]), ("medium", ["easy", "hard"],
                                              ["junk"]), ("hard", ["hard"], ["junk", "easy"])):
        aps = []
        for row, g in zip(ranking, gt):
            positive = [i for key in positive_keys for i in g[key]]
            if positive:
                aps.append(brute_force_revisited_ap(row, positive, [i for key in junk_keys for i in g[key]]))
        assert out[f"{setting}/map"] == pytest.approx(np.mean(aps), abs=1e-12)
        assert revisited_ap(ranking[1], gt[1]["easy"], gt[1]["junk"] + gt[1]["hard"]) == pytest.approx(
            brute_force_revisited_ap(ranking[1], gt[1]["easy"], gt[1]["junk"] + gt[1]["hard"]))


def test_revisited_rankings_errors():
    with pytest.raises(ValueError, match="one entry per query"):
        revisited_from_rankings([[0, 1]], [])
    with pytest.raises(ValueError, match="shape"):
        revisited_from_rankings([0, 1], [{}])
