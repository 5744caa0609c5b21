import numpy as np
import pytest
import torch

from deepmetric.miners import DistanceWeightedMiner
from miner_reference import relations, table, triplet_set


def batch(seed, size=24, dim=6, num_classes=4):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(size, dim, generator=generator, dtype=torch.float64),
            torch.randint(0, num_classes, (size,), generator=generator))


def reference_weights(embeddings, labels, cutoff, nonzero_loss_cutoff):
    """Wu et al. 2017 by the formula, directly (no logs): w = 1 / q(max(d, cutoff)) for eligible negatives."""
    dim = embeddings.shape[1]
    distances = table("euclidean", embeddings)
    _, negatives = relations(labels)
    weights = np.zeros_like(distances)
    for a, candidates in enumerate(negatives):
        for n in candidates:
            d = max(distances[a, n], cutoff)
            if distances[a, n] < nonzero_loss_cutoff:
                weights[a, n] = 1.0 / (d ** (dim - 2) * (1 - d * d / 4) ** ((dim - 3) / 2))
        if weights[a].sum() > 0:
            weights[a] /= weights[a].sum()
    return weights


@pytest.mark.parametrize("dim", [3, 6, 16])
def test_weights_follow_inverse_sphere_density(dim):
    embeddings, labels = batch(dim, dim=dim)
    miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    weights = miner.sampling_weights(embeddings, labels, embeddings, None).numpy()
    expected = reference_weights(embeddings, labels, 0.5, 1.4)
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)
    # the same density through a cosine similarity or a squared distance
    for distance in ("cosine", "squared_euclidean"):
        other = DistanceWeightedMiner(distance=distance).sampling_weights(embeddings, labels, embeddings, None)
        np.testing.assert_allclose(other.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_large_dimension_does_not_overflow():
    embeddings, labels = batch(1, size=64, dim=512, num_classes=8)
    weights = DistanceWeightedMiner().sampling_weights(embeddings.float(), labels, embeddings.float(), None)
    assert torch.isfinite(weights).all()
    rows = weights.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]))


def test_triplets_are_valid_and_one_per_positive_pair():
    embeddings, labels = batch(2)
    miner = DistanceWeightedMiner(seed=3, nonzero_loss_cutoff=2.0)
    triplets = miner(embeddings, labels)
    positives, _ = relations(labels)
    assert sorted(zip(triplets.anchor.tolist(), triplets.positive.tolist())) == sorted(
        (a, p) for a, ps in enumerate(positives) for p in ps)
    distances = table("euclidean", embeddings)
    for a, p, n in triplet_set(triplets):
        assert labels[a] == labels[p] != labels[n] and a != p
        assert distances[a, n] < 2.0


def test_seeded_determinism():
    embeddings, labels = batch(4)
    first = DistanceWeightedMiner(seed=7)(embeddings, labels)
    second = DistanceWeightedMiner(seed=7)(embeddings, labels)
    other = DistanceWeightedMiner(seed=8)(embeddings, labels)
    assert torch.equal(first.negative, second.negative)
    assert not torch.equal(first.negative, other.negative)
    torch.manual_seed(0)
    global_rng = DistanceWeightedMiner()(embeddings, labels)
    torch.manual_seed(0)
    assert torch.equal(global_rng.negative, DistanceWeightedMiner()(embeddings, labels).negative)


def test_empirical_frequencies_match_weights():
    embeddings, labels = batch(5, size=16, dim=4, num_classes=2)
    miner = DistanceWeightedMiner(seed=1, cutoff=0.5, nonzero_loss_cutoff=2.0)
    expected = reference_weights(embeddings, labels, 0.5, 2.0)
    counts = np.zeros_like(expected)
    for _ in range(300):
        triplets = miner(embeddings, labels)
        np.add.at(counts, (triplets.anchor.numpy(), triplets.negative.numpy()), 1)
    draws = counts.sum(1, keepdims=True)
    mean = draws * expected
    spread = 5 * np.sqrt(draws * expected * (1 - expected)) + 1
    assert np.all(np.abs(counts - mean) <= spread)
    assert np.all(counts[expected == 0] == 0)


def test_no_negative_within_cutoff_gives_nothing():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    labels = torch.tensor([0, 0, 1, 1])
    assert len(DistanceWeightedMiner(seed=0)(embeddings, labels)) == 0  # negatives at distance ~2 > 1.4
    assert len(DistanceWeightedMiner(seed=0, nonzero_loss_cutoff=2.0)(embeddings, labels)) == 4


def test_with_reference_set():
    embeddings, labels = batch(6, size=8)
    ref_embeddings, ref_labels = batch(7, size=30)
    triplets = DistanceWeightedMiner(seed=0, nonzero_loss_cutoff=2.0)(embeddings, labels, ref_embeddings, ref_labels)
    positives, _ = relations(labels, ref_labels)
    assert len(triplets) == sum(map(len, positives))
    assert bool((labels[triplets.anchor] == ref_labels[triplets.positive]).all())
    assert bool((labels[triplets.anchor] != ref_labels[triplets.negative]).all())


def test_bad_cutoffs():
    with pytest.raises(ValueError, match="cutoff < nonzero_loss_cutoff <= 2"):
        DistanceWeightedMiner(cutoff=1.5, nonzero_loss_cutoff=1.4)
    with pytest.raises(ValueError, match=r"^cutoff must be a finite number > 0, got 0.0$"):
        DistanceWeightedMiner(cutoff=0.0)
