import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from deepmetric.losses.magnet import MagnetLoss, kmeans
from deepmetric.types import Pairs
from loss_reference import pk_batch


def blobs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], dtype=torch.float64)
    points = centres.repeat_interleave(20, 0) + 0.3 * torch.randn(60, 2, generator=generator, dtype=torch.float64)
    return points, centres


def inertia(points, centres):
    return float(torch.cdist(points, centres).amin(1).pow(2).sum())


def test_kmeans_finds_blobs_like_sklearn():
    points, true_centres = blobs()
    found = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    reference = KMeans(n_clusters=3, n_init=10, random_state=0).fit(points.numpy())
    assert inertia(points, found) == pytest.approx(reference.inertia_, rel=1e-6)
    assert torch.cdist(true_centres, found).amin(1).max() < 0.3
    assert kmeans(points[:2], 5).shape == (2, 2)  # never more centres than points


def magnet_reference(embeddings, labels, centres, centre_labels, alpha):
    x, y = embeddings.numpy(), labels.numpy()
    assignment = []
    for i in range(len(x)):
        own = [k for k in range(len(centres)) if centre_labels[k] == y[i]]
        assignment.append(min(own, key=lambda k: ((x[i] - centres[k]) ** 2).sum()))
    clusters = sorted(set(assignment))
    means = {k: x[[i for i in range(len(x)) if assignment[i] == k]].mean(0) for k in clusters}
    variance = sum(((x[i] - means[assignment[i]]) ** 2).sum() for i in range(len(x))) / (len(x) - 1)
    losses = []
    for i in range(len(x)):
        own = ((x[i] - means[assignment[i]]) ** 2).sum() / (2 * variance)
        others = [-((x[i] - means[k]) ** 2).sum() / (2 * variance) for k in clusters if centre_labels[k] != y[i]]
        peak = max(others)
        losses.append(max(own + alpha + peak + math.log(sum(math.exp(o - peak) for o in others)), 0.0))
    return float(np.mean(losses))


def test_magnet_matches_loop_with_given_clusters():
    embeddings, labels = pk_batch(3, 6, 4, seed=1)
    loss = MagnetLoss(clusters_per_class=2, alpha=0.5, refresh_every=0).eval()
    loss.update_clusters(embeddings, labels)
    assert loss.centres.shape == (6, 4) and loss.centre_labels.tolist() == [0, 0, 1, 1, 2, 2]
    expected = magnet_reference(embeddings, labels, loss.centres.numpy(), loss.centre_labels.numpy(), 0.5)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)


def test_magnet_without_clusters_treats_each_class_as_one_cluster_and_gradcheck():
    embeddings, labels = pk_batch(3, 3, 4, seed=2)
    loss = MagnetLoss(clusters_per_class=2, refresh_every=0).eval()
    centres = torch.stack([embeddings[labels == c].mean(0) for c in range(3)]).numpy()
    expected = magnet_reference(embeddings, labels, centres, np.arange(3), 1.0)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (embeddings.clone().requires_grad_(True),))


def test_magnet_refreshes_clusters_from_memory():
    embeddings, labels = pk_batch(4, 6, 4, seed=3, dtype=torch.float32)
    loss = MagnetLoss(clusters_per_class=3, refresh_every=2, memory_size=30)
    loss(embeddings, labels)
    assert loss.centres is None
    loss(embeddings + 0.01, labels)
    assert loss.calls == 2 and loss._memory.shape == (30, 4)
    assert loss.centres is not None and loss.centres.shape[0] <= 12
    assert set(loss.centre_labels.tolist()) <= set(labels.tolist())


def test_magnet_degenerate_inputs_and_errors():
    embeddings = torch.randn(6, 4, requires_grad=True)
    value = MagnetLoss()(embeddings, torch.zeros(6, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(embeddings.grad).all()
    with pytest.raises(ValueError, match="mined tuples and ref_embeddings are not used"):
        MagnetLoss()(embeddings, torch.zeros(6, dtype=torch.long), mined=Pairs.empty())
    with pytest.raises(ValueError, match="clusters_per_class must be an integer >= 1, got 0"):
        MagnetLoss(clusters_per_class=0)


def test_magnet_state_survives_a_checkpoint_round_trip():
    from deepmetric.train.checkpoint import flatten_state, load_module_state, unflatten_state

    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(4).repeat_interleave(6)
    loss = MagnetLoss(clusters_per_class=2, refresh_every=2, memory_size=40)
    for _ in range(3):
        loss(torch.randn(24, 5, generator=generator), labels)
    assert loss.centres is not None and loss.calls == 3
    meta, tensors = flatten_state({"loss": loss.state_dict()})
    restored = MagnetLoss(clusters_per_class=2, refresh_every=2, memory_size=40)
    load_module_state(restored, unflatten_state(meta, tensors)["loss"], "loss")
    assert restored.calls == 3
    for name in ("centres", "centre_labels", "_memory", "_memory_labels"):
        assert torch.equal(getattr(restored, name), getattr(loss, name))
    batch = torch.randn(24, 5, generator=generator)
    loss.eval(), restored.eval()
    torch.testing.assert_close(restored(batch, labels), loss(batch, labels))
    with pytest.raises(ValueError, match="magnet state"):
        restored.set_extra_state({"centres": loss.centres})
