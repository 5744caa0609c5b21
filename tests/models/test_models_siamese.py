import numpy as np
import pytest
import torch

from deepmetric import registry
from deepmetric.models import PairDataset, SiameseNetwork, TripletDataset, TripletNetwork, build_embedder, pair_batch
from deepmetric.models.siamese import sample_pairs

PRE = {"image_size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.5]}


def small_embedder():
    return build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 8, "stages": 2}},
                           "embedding_dim": 16, "preprocessing": PRE})


def contrastive(first, second, same, margin=1.0):
    """Hadsell, Chopra, LeCun (2006): same * D^2 / 2 + (1 - same) * max(0, m - D)^2 / 2, written out here as
    the reference so this test does not depend on the loss library."""
    distance = (first - second).norm(dim=1)
    same = same.float()
    return (same * distance ** 2 + (1 - same) * (margin - distance).clamp_min(0) ** 2).mean() / 2


def test_sample_pairs_ratio_and_correctness():
    labels = np.repeat(np.arange(6), 5)
    first, second, same = sample_pairs(labels, num_pairs=400, negative_ratio=3.0, seed=1)
    assert same.sum() == 100 and (~same).sum() == 300
    np.testing.assert_array_equal(labels[first] == labels[second], same)
    assert not np.any(first[same] == second[same])  # a positive pair is two different items
    again = sample_pairs(labels, num_pairs=400, negative_ratio=3.0, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((first, second, same), again))
    with pytest.raises(ValueError, match="only one label"):
        sample_pairs(np.zeros(5, int), num_pairs=4)


def test_pair_batch_indexes_the_stacked_embeddings():
    first, second = torch.randn(4, 3), torch.randn(4, 3)
    embeddings, pairs = pair_batch(first, second, torch.tensor([1, 0, 0, 1]))
    assert embeddings.shape == (8, 3)
    assert pairs.anchor_positive.tolist() == [0, 3] and pairs.positive.tolist() == [4, 7]
    assert pairs.anchor_negative.tolist() == [1, 2] and pairs.negative.tolist() == [5, 6]


def test_siamese_shares_weights_and_trains_from_pair_labels_alone():
    torch.manual_seed(0)
    digits = registry.build({"name": "digits", "args": {"split": "train", "image_size": 16, "augment": False}},
                            "dataset")
    # Only same/different labels reach the pair data set: identities are hidden from it.
    subset = np.arange(200)
    first, second, same = sample_pairs(digits.labels[subset], num_pairs=64, negative_ratio=1.0, seed=0)
    images = torch.utils.data.TensorDataset(torch.stack([digits[i][0] for i in subset]))
    pairs = PairDataset(images, pairs=(first, second, same))
    loader = torch.utils.data.DataLoader(pairs, batch_size=64)
    network = SiameseNetwork(embedder=small_embedder())
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    batch_first, batch_second, batch_same = next(iter(loader))
    positive = batch_same.bool()

    def step():
        z1, z2 = network(batch_first, batch_second)
        loss = contrastive(z1, z2, batch_same)
        similarity = torch.nn.functional.cosine_similarity(z1, z2).detach()
        return loss, (similarity[positive].mean() - similarity[~positive].mean()).item()

    initial_loss, initial_gap = step()
    for _ in range(12):
        loss, _ = step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final_loss, final_gap = step()
    assert final_loss.item() < 0.5 * initial_loss.item()
    assert final_gap > initial_gap + 0.2
    # Siamese "branches" are literally one module.
    assert sum(1 for _ in network.parameters()) == sum(1 for _ in network.embedder.parameters())


def test_pair_dataset_from_labels_redraws_per_epoch():
    data = torch.utils.data.TensorDataset(torch.randn(20, 1, 16, 16), torch.arange(20) % 4)
    data.labels = (np.arange(20) % 4)
    pairs = PairDataset(data, num_pairs=30, negative_ratio=2.0)
    assert len(pairs) == 30 and sum(pairs[i][2] for i in range(30)) == 10
    before = pairs.first.copy()
    pairs.set_epoch(1)
    assert not np.array_equal(before, pairs.first)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 20\)"):
        PairDataset(data, pairs=([0, 25], [1, 2], [True, False]))


def test_triplet_network_and_dataset():
    data = torch.utils.data.TensorDataset(torch.randn(12, 1, 16, 16), torch.arange(12) % 3)
    data.labels = np.arange(12) % 3
    triplets = TripletDataset(data, num_triplets=10)
    assert (data.labels[triplets.anchors] == data.labels[triplets.positives]).all()
    assert (data.labels[triplets.anchors] != data.labels[triplets.negatives]).all()
    anchor, positive, negative = (torch.stack(t) for t in zip(*[triplets[i] for i in range(4)]))
    network = TripletNetwork(embedder=small_embedder())
    outputs = network(anchor, positive, negative)
    assert [o.shape for o in outputs] == [(4, 16)] * 3


def test_pair_dataset_forwards_reseed_to_augmented_images():
    digits = registry.build({"name": "digits", "args": {"split": "train", "image_size": 16}}, "dataset")
    pairs = PairDataset(digits, num_pairs=6)
    pairs.reseed(3)
    first = [pairs[i][0] for i in range(3)]
    pairs.reseed(3)
    assert all(torch.equal(a, pairs[i][0]) for i, a in enumerate(first))
