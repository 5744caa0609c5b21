import numpy as np
import pytest
import torch

from deepmetric.miners import AllPairsMiner, PairRatioMiner
from miner_reference import DISTANCES, build_distance, is_similarity, pair_sets, relations, table


def batch(seed, size=20, num_classes=4):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(size, 5, generator=generator, dtype=torch.float64),
            torch.randint(0, num_classes, (size,), generator=generator))


@pytest.mark.parametrize("use_ref", [False, True])
def test_all_pairs_is_every_pair(use_ref):
    embeddings, labels = batch(0)
    ref_embeddings, ref_labels = batch(1, size=13) if use_ref else (None, None)
    positives, negatives = relations(labels, ref_labels)
    pairs = AllPairsMiner()(embeddings, labels, ref_embeddings, ref_labels)
    assert pair_sets(pairs) == ({(a, p) for a, ps in enumerate(positives) for p in ps},
                                {(a, n) for a, ns in enumerate(negatives) for n in ns})
    assert pairs.num_positive == sum(map(len, positives))


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_pair_ratio_hardest_matches_brute_force(distance, ratio):
    embeddings, labels = batch(2, size=30, num_classes=8)
    values = table(distance, embeddings)
    positives, negatives = relations(labels)
    all_negative = [(a, n) for a, ns in enumerate(negatives) for n in ns]
    cap = int(ratio * sum(map(len, positives)))
    assert cap < len(all_negative)
    # Selection by counting. (a, n) and (n, a) tie, so at the cap either may be kept: a negative must be
    # kept when fewer than `cap` others are at least as hard, and may be kept when fewer are strictly harder.
    negative_values = np.array([values[a, n] for a, n in all_negative])
    closer = negative_values[None, :] > negative_values[:, None] if is_similarity(distance) else \
        negative_values[None, :] < negative_values[:, None]
    strictly = closer.sum(1)
    ties = (negative_values[None, :] == negative_values[:, None]).sum(1) - 1
    may = {pair for pair, count in zip(all_negative, strictly) if count < cap}
    must = {pair for pair, count, tie in zip(all_negative, strictly, ties) if count + tie < cap}
    pairs = PairRatioMiner(ratio=ratio, distance=build_distance(distance))(embeddings, labels)
    positive_set, negative_set = pair_sets(pairs)
    assert positive_set == {(a, p) for a, ps in enumerate(positives) for p in ps}
    assert must <= negative_set <= may and pairs.num_negative == cap
    assert len(must) >= cap - 1


def test_pair_ratio_random_is_valid_deterministic_and_uniform():
    embeddings, labels = batch(3, size=12, num_classes=3)
    positives, negatives = relations(labels)
    all_negative = {(a, n) for a, ns in enumerate(negatives) for n in ns}
    cap = int(1.0 * sum(map(len, positives)))
    first = PairRatioMiner(ratio=1.0, strategy="random", seed=5)(embeddings, labels)
    second = PairRatioMiner(ratio=1.0, strategy="random", seed=5)(embeddings, labels)
    assert pair_sets(first) == pair_sets(second)
    counts = dict.fromkeys(all_negative, 0)
    miner = PairRatioMiner(ratio=1.0, strategy="random", seed=11)
    rounds = 400
    for _ in range(rounds):
        pairs = miner(embeddings, labels)
        chosen = pair_sets(pairs)[1]
        assert len(chosen) == cap and chosen <= all_negative
        for pair in chosen:
            counts[pair] += 1
    expected = rounds * cap / len(all_negative)
    # Binomial(400, p) with p = cap / #negatives: 5 standard deviations.
    p = cap / len(all_negative)
    spread = 5 * (rounds * p * (1 - p)) ** 0.5
    assert all(abs(c - expected) < spread for c in counts.values())


def test_pair_ratio_keeps_all_negatives_below_cap_and_none_without_positives():
    embeddings, labels = batch(4, size=6, num_classes=2)
    pairs = PairRatioMiner(ratio=100.0)(embeddings, labels)
    assert pairs.num_negative == sum(map(len, relations(labels)[1]))
    distinct = torch.arange(6)
    assert len(PairRatioMiner(ratio=3.0)(embeddings, distinct)) == 0


def test_pair_ratio_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ratio"):
        PairRatioMiner(ratio=0)
    with pytest.raises(ValueError, match="strategy"):
        PairRatioMiner(strategy="easiest")
    with pytest.raises(TypeError, match="seed"):
        PairRatioMiner(seed=1.5)
