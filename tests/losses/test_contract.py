"""The loss contract, checked over every registry entry of kind "loss" (built from its registered example)."""

import numpy as np
import pytest
import torch

from deepmetric import registry
from deepmetric.types import Pairs, Triplets

EMBEDDING_DIM, NUM_CLASSES = 16, 8


def build(name):
    return registry.build({"name": name, "args": registry.example("loss", name)},
                          embedding_dim=EMBEDDING_DIM, num_classes=NUM_CLASSES)


def batch(dtype, *, num_classes=4, per_class=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_classes * per_class, EMBEDDING_DIM, generator=generator, dtype=dtype)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return embeddings.requires_grad_(True), labels


def has_class_centres(loss):
    return bool(getattr(loss, "has_class_centres", False))


def uses_mined(loss):
    """Whether the loss consumes mined tuples: a pair/triplet loss (no class centres) that runs with a mined
    Pairs without complaint."""
    if has_class_centres(loss):
        return False
    embeddings, labels = batch(torch.float32)
    try:
        pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([4]))
        loss(embeddings, labels, mined=pairs)
    except (TypeError, ValueError):
        return False
    return True


LOSS_NAMES = registry.names("loss")


def test_registry_has_every_pair_and_batch_loss():
    expected = {"contrastive", "triplet", "quadruplet", "lifted_structure", "npair", "ntxent", "multi_similarity",
                "magnet", "proxy_anchor"}
    assert expected <= set(LOSS_NAMES)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_differentiable_and_dtype_kept(name, dtype):
    loss = build(name).to(dtype)
    embeddings, labels = batch(dtype)
    value = loss(embeddings, labels)
    assert value.dim() == 0 and value.dtype == dtype and torch.isfinite(value)
    value.backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0
    for parameter in loss.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_zero_loss_that_back_propagates_when_nothing_is_mined(name):
    loss = build(name)
    if not uses_mined(loss):
        pytest.skip(f"{name} does not consume mined tuples")
    for empty in (Pairs.empty(), Triplets.empty()):
        embeddings, labels = batch(torch.float32)
        value = loss(embeddings, labels, mined=empty)
        value.backward()
        assert value.item() == 0.0
        assert embeddings.grad is not None and torch.count_nonzero(embeddings.grad) == 0


# A batch of one class: nothing to contrast, so zero for every loss whose terms need a negative. The
# exceptions pull positives together on their own (by definition, not by accident).
PULLS_POSITIVES_WITHOUT_NEGATIVES = {"contrastive"}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_one_class_batch(name):
    loss = build(name)
    embeddings, labels = batch(torch.float32, num_classes=1, per_class=8)
    value = loss(embeddings, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(embeddings.grad).all()
    if has_class_centres(loss) or name in PULLS_POSITIVES_WITHOUT_NEGATIVES:
        return
    assert value.item() == 0.0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_input_is_a_clear_error(name):
    loss = build(name)
    with pytest.raises(ValueError, match=r"^embeddings must be a matrix of shape \(N, D\), got shape \(4,\)$"):
        loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"^labels must be an integer torch\.Tensor, got dtype torch\.float32$"):
        loss(torch.randn(4, EMBEDDING_DIM), torch.zeros(4))
    with pytest.raises(TypeError, match=r"^embeddings must be a floating-point torch\.Tensor of shape \(N, D\), "
                                        r"got ndarray: "):
        loss(np.zeros((4, EMBEDDING_DIM), np.float32), torch.zeros(4, dtype=torch.long))
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^ref_labels must have shape \(3,\), one label per row of ref_embeddings, "
                                         r"got shape \(4,\)$"):
        loss(torch.randn(4, EMBEDDING_DIM), labels, ref_embeddings=torch.randn(3, EMBEDDING_DIM), ref_labels=labels)
