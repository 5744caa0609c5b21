import pytest
import torch

from deepmetric.miners import AllTripletsMiner, BatchHardMiner, HardMiner, SemiHardMiner
from deepmetric.miners import triplets as triplet_miners
from miner_reference import DISTANCES, build_distance, hardest, pair_sets, relations, semi_hard, table, triplet_set


def batch(seed, size=24, dim=6, num_classes=5):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(size, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (size,), generator=generator)
    return embeddings, labels


def inputs(seed, use_ref):
    """(embeddings, labels, ref_embeddings, ref_labels), the last two None without a reference set."""
    if not use_ref:
        return (*batch(seed), None, None)
    return (*batch(seed, size=10), *batch(seed + 100, size=17))


@pytest.mark.parametrize("use_ref", [False, True])
def test_all_triplets_is_every_valid_triplet(use_ref):
    embeddings, labels, ref_embeddings, ref_labels = inputs(1, use_ref)
    positives, negatives = relations(labels, ref_labels)
    expected = {(a, p, n) for a in range(len(labels)) for p in positives[a] for n in negatives[a]}
    triplets = AllTripletsMiner()(embeddings, labels, ref_embeddings, ref_labels)
    assert triplet_set(triplets) == expected
    assert len(triplets) == len(expected)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("use_ref", [False, True])
def test_hard_matches_brute_force(distance, k, use_ref):
    embeddings, labels, ref_embeddings, ref_labels = inputs(k, use_ref)
    values = table(distance, embeddings, ref_embeddings)
    positives, negatives = relations(labels, ref_labels)
    hard_pos = hardest(distance, values, positives, k, farthest=True)
    hard_neg = hardest(distance, values, negatives, k, farthest=False)

    pair_miner = HardMiner(tuple_type="pairs", k=k, distance=build_distance(distance))
    pairs = pair_miner(embeddings, labels, ref_embeddings, ref_labels)
    assert pair_sets(pairs) == ({(a, p) for a, ps in enumerate(hard_pos) for p in ps},
                                {(a, n) for a, ns in enumerate(hard_neg) for n in ns})
    triplet_miner = HardMiner(tuple_type="triplets", k=k, distance=build_distance(distance))
    triplets = triplet_miner(embeddings, labels, ref_embeddings, ref_labels)
    expected = {(a, p, n) for a in range(len(labels)) for p in hard_pos[a] for n in hard_neg[a]}
    assert triplet_set(triplets) == expected and len(triplets) == len(expected)


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_hard_matches_brute_force(distance):
    embeddings, labels = batch(7, size=40, num_classes=8)
    labels[-1] = 99  # a singleton: no triplet for it as anchor
    values = table(distance, embeddings)
    positives, negatives = relations(labels)
    hard_pos = hardest(distance, values, positives, 1, farthest=True)
    hard_neg = hardest(distance, values, negatives, 1, farthest=False)
    expected = {(a, hard_pos[a][0], hard_neg[a][0]) for a in range(len(labels)) if hard_pos[a] and hard_neg[a]}
    triplets = BatchHardMiner(distance=build_distance(distance))(embeddings, labels)
    assert triplet_set(triplets) == expected and len(triplets) == len(expected)
    assert all(a != len(labels) - 1 for a, _, _ in expected)


def test_batch_hard_agrees_with_pytorch_metric_learning():
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    embeddings, labels = batch(3, size=64, dim=16, num_classes=10)
    anchor, positive, negative = pml_miners.BatchHardMiner()(embeddings, labels)
    ours = BatchHardMiner()(embeddings, labels)
    assert triplet_set(ours) == set(zip(anchor.tolist(), positive.tolist(), negative.tolist()))


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("search", ["scan", "sort"])
def test_semi_hard_matches_brute_force(distance, fallback, use_ref, search, monkeypatch):
    # both lookups: a masked-min scan per positive, and sort + searchsorted
    monkeypatch.setattr(triplet_miners, "_SCAN_MAX_POSITIVES", 10**6 if search == "scan" else 0)
    margin = {"euclidean": 0.3, "squared_euclidean": 0.4, "cosine": 0.2, "dot": 0.8, "raw_euclidean": 0.6}[distance]
    for seed in range(2):
        embeddings, labels, ref_embeddings, ref_labels = inputs(seed, use_ref)
        values = table(distance, embeddings, ref_embeddings)
        positives, negatives = relations(labels, ref_labels)
        expected = semi_hard(distance, values, positives, negatives, margin, fallback)
        miner = SemiHardMiner(margin=margin, fallback_to_hardest=fallback, distance=build_distance(distance))
        triplets = miner(embeddings, labels, ref_embeddings, ref_labels)
        assert triplet_set(triplets) == expected and len(triplets) == len(expected)
        if not fallback:
            assert expected, "the test data should contain semi-hard triplets"


def test_semi_hard_float32_and_tuple_count_bounded_by_positive_pairs():
    embeddings, labels = batch(5, size=64, num_classes=4)
    triplets = SemiHardMiner(margin=0.5, fallback_to_hardest=True)(embeddings.float(), labels)
    num_positive_pairs = sum(len(p) for p in relations(labels)[0])
    assert 0 < len(triplets) <= num_positive_pairs


def test_semi_hard_large_batch_stays_quadratic():
    # A (B, B, B) float tensor at B=2048 would need 34 GB; the miner must finish with O(B^2) memory.
    size, per_class = 2048, 4
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(size, 32, generator=generator)
    labels = torch.arange(size // per_class).repeat_interleave(per_class)
    triplets = SemiHardMiner(margin=0.2, fallback_to_hardest=True)(embeddings, labels)
    assert len(triplets) == size * (per_class - 1)  # one per positive pair: O(B K)
    assert bool((labels[triplets.anchor] == labels[triplets.positive]).all())
    assert bool((labels[triplets.anchor] != labels[triplets.negative]).all())


def test_hard_and_semi_hard_reject_bad_arguments():
    with pytest.raises(ValueError, match="tuple_type"):
        HardMiner(tuple_type="quads")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        HardMiner(k=0)
    with pytest.raises(ValueError, match="margin"):
        SemiHardMiner(margin=-0.1)
    with pytest.raises(ValueError, match="margin"):
        SemiHardMiner(margin=float("nan"))
