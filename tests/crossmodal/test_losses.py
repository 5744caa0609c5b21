"""Cross-modal losses against explicit loops (numpy), CLIP's cross-entropy form, and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepmetric.crossmodal.losses import BidirectionalTripletLoss, InfoNCELoss, SigLIPLoss, build_crossmodal_loss


def _batch(seed=0, images=10, texts=7, dim=5, classes=4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(images, dim, generator=generator, dtype=dtype), dim=1)
    y = F.normalize(torch.randn(texts, dim, generator=generator, dtype=dtype), dim=1)
    image_labels = torch.randint(0, classes, (images,), generator=generator)
    text_labels = torch.arange(texts) % classes
    return x, y, image_labels, text_labels


def _triplet_direction_loop(sim, pos, margin, mining):
    """One direction of the triplet loss, anchor by anchor, positive by positive."""
    losses = []
    for a in range(sim.shape[0]):
        negs = [n for n in range(sim.shape[1]) if not pos[a, n]]
        if not negs or not pos[a].any():
            continue
        for p in range(sim.shape[1]):
            if not pos[a, p]:
                continue
            if mining == "all":
                losses.extend(max(0.0, margin - sim[a, p] + sim[a, n]) for n in negs)
                continue
            if mining == "hardest":
                n_sim = max(sim[a, n] for n in negs)
            else:
                semi = [sim[a, n] for n in negs if sim[a, n] < sim[a, p]]
                n_sim = max(semi) if semi else min(sim[a, n] for n in negs)
            losses.append(max(0.0, margin - sim[a, p] + n_sim))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("mining", ["semi_hard", "hardest", "all"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bidirectional_triplet_matches_loops(mining, seed):
    x, y, li, lt = _batch(seed)
    sim = (x @ y.T).numpy()
    pos = (li[:, None] == lt[None, :]).numpy()
    expected = (_triplet_direction_loop(sim, pos, 0.3, mining) + _triplet_direction_loop(sim.T, pos.T, 0.3, mining))
    got = BidirectionalTripletLoss(margin=0.3, mining=mining)(x, y, li, lt)
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("mining", ["semi_hard", "hardest", "all"])
def test_bidirectional_triplet_gradcheck(mining):
    x, y, li, lt = _batch(3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = BidirectionalTripletLoss(margin=0.5, mining=mining)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, li, lt), (x, y))


def test_infonce_equals_clip_cross_entropy_on_paired_batch():
    x, y, _, _ = _batch(4, images=6, texts=6)
    loss = InfoNCELoss(temperature=0.1)
    labels = torch.arange(6)
    logits = (x @ y.T) * 10.0
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert loss(x, y, labels, labels).item() == pytest.approx(float(clip), rel=1e-6)


def test_infonce_multi_positive_matches_loop_and_soft_cross_entropy():
    x, y, li, lt = _batch(5)
    loss = InfoNCELoss(temperature=0.2).double()
    z = (x @ y.T).numpy() * 5.0
    pos = (li[:, None] == lt[None, :]).numpy()

    def direction(z, pos):
        rows = []
        for i in range(z.shape[0]):
            if not pos[i].any():
                continue
            log_softmax = z[i] - math.log(np.exp(z[i]).sum())
            rows.append(-np.mean([log_softmax[p] for p in range(z.shape[1]) if pos[i, p]]))
        return np.mean(rows)

    expected = (direction(z, pos) + direction(z.T, pos.T)) / 2
    assert loss(x, y, li, lt).item() == pytest.approx(expected, rel=1e-6)
    keep = pos.any(1)
    targets = torch.as_tensor(pos[keep] / pos[keep].sum(1, keepdims=True))
    soft = F.cross_entropy(torch.as_tensor(z[keep]), targets)
    assert float(direction(z, pos)) == pytest.approx(float(soft), rel=1e-9)


def test_infonce_logit_scale_is_clamped_and_learnt():
    loss = InfoNCELoss(temperature=1e-4, max_scale=100.0)
    assert loss.scale.item() == 100.0
    x, y, li, lt = _batch(6, dtype=torch.float32)
    loss = InfoNCELoss()
    loss(x, y, li, lt).backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad != 0


def test_siglip_matches_loop_and_gradcheck():
    x, y, li, lt = _batch(7)
    loss = SigLIPLoss(scale=3.0, bias=-1.0).double()
    sim = (x @ y.T).numpy()
    total = 0.0
    for i in range(sim.shape[0]):
        for t in range(sim.shape[1]):
            sign = 1.0 if li[i] == lt[t] else -1.0
            total += math.log1p(math.exp(-sign * (3.0 * sim[i, t] - 1.0)))
    assert loss(x, y, li, lt).item() == pytest.approx(total / sim.shape[0], rel=1e-6)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: loss(a, y, li, lt), (x,))


def test_positive_mask_overrides_labels_and_bad_input_is_refused():
    x, y, li, lt = _batch(8)
    mask = li[:, None] == lt[None, :]
    loss = BidirectionalTripletLoss()
    assert float(loss(x, y, positive_mask=mask)) == float(loss(x, y, li, lt))
    with pytest.raises(ValueError, match="positive_mask must have shape"):
        loss(x, y, positive_mask=mask[:, :3])
    with pytest.raises(ValueError, match="differ in size"):
        loss(x, y[:, :3], li, lt)
    with pytest.raises(ValueError, match="one entry per row"):
        loss(x, y, li[:3], lt)
    with pytest.raises(ValueError, match="mining"):
        build_crossmodal_loss("triplet", {"mining": "random"})
