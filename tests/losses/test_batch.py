import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch.func import functional_call

from deepmetric.losses.batch import LiftedStructureLoss, MultiSimilarityLoss, NPairLoss, NTXentLoss, ProxyAnchorLoss
from deepmetric.losses.tuples import masked_logsumexp
from deepmetric.types import Pairs
from loss_reference import cosine, euclidean, normalized, pairs, pk_batch


def logsumexp(values):
    values = list(values)
    if not values:
        return -math.inf
    peak = max(values)
    return peak + math.log(sum(math.exp(v - peak) for v in values))


def relu(x):
    return max(x, 0.0)


def float32_batch(seed):
    return pk_batch(8, 4, 16, seed=seed, dtype=torch.float32)


def gradcheck(loss, embeddings, labels, **kwargs):
    embeddings = embeddings.clone().requires_grad_(True)
    return torch.autograd.gradcheck(lambda x: loss(x, labels, **kwargs), (embeddings,))


def test_masked_logsumexp_empty_rows_and_gradient():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_logsumexp(values, mask)
    assert out[0].item() == pytest.approx(math.log(math.e + math.e ** 3))
    assert out[1].item() == -math.inf
    plus_one = masked_logsumexp(values, mask, add_one=True)
    assert plus_one[1].item() == 0.0 and plus_one[0].item() == pytest.approx(math.log(1 + math.e + math.e ** 3))
    plus_one.sum().backward()
    assert torch.isfinite(values.grad).all() and values.grad[1].abs().sum() == 0 and values.grad[0, 1] == 0


@pytest.mark.parametrize("add_one", [False, True])
def test_masked_logsumexp_sparse_path_equals_dense(add_one):
    generator = torch.Generator().manual_seed(0)
    values = (10 * torch.randn(6, 40, generator=generator, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(6, 40, generator=generator) < 0.1  # sparse: gathered path
    mask[3] = False
    sparse = masked_logsumexp(values, mask, add_one=add_one)
    dense = masked_logsumexp(values.T, mask.T, dim=0, add_one=add_one)  # column-wise: always the dense path
    assert torch.equal(torch.isinf(sparse), torch.isinf(dense))
    finite = torch.isfinite(dense)
    assert torch.allclose(sparse[finite], dense[finite], atol=1e-12)
    expected = [math.log(float(torch.exp(values.detach()[r][mask[r]]).sum()) + add_one) if mask[r].any() or add_one
                else -math.inf for r in range(6)]
    assert sparse.tolist() == pytest.approx(expected)
    assert torch.autograd.gradcheck(lambda x: masked_logsumexp(x, mask, add_one=add_one)[finite], (values,))


# ---------------------------------------------------------------- lifted structure

def lifted_song_reference(embeddings, labels, neg_margin, pos_margin=0.0, ref=None):
    ref_embeddings, ref_labels = ref if ref is not None else (None, None)
    d = euclidean(embeddings, ref_embeddings)
    positives, negatives = pairs(labels, ref_labels)
    losses = []
    for i, j in positives:
        terms = [neg_margin - d[a, k] for a, k in negatives if a == i]
        terms += [neg_margin - d[other, b] for other, b in negatives if b == j]
        losses.append(0.5 * relu(logsumexp(terms) + d[i, j] - pos_margin) ** 2)
    return float(np.mean(losses))


def lifted_generalized_reference(embeddings, labels, neg_margin, pos_margin=0.0):
    d = euclidean(embeddings)
    positives, negatives = pairs(labels)
    losses = [relu(logsumexp(d[a, p] - pos_margin for b, p in positives if b == a)
                   + logsumexp(neg_margin - d[a, n] for b, n in negatives if b == a)) for a in range(len(labels))]
    return float(np.mean(losses))


@pytest.mark.parametrize("form,reference,pml_class", [
    ("song", lifted_song_reference, pml_losses.LiftedStructureLoss),
    ("generalized", lifted_generalized_reference, pml_losses.GeneralizedLiftedStructureLoss)])
def test_lifted_matches_loop_and_pml(form, reference, pml_class):
    embeddings, labels = pk_batch(4, 3, 5, seed=1)
    value = LiftedStructureLoss(form=form, neg_margin=1.2, pos_margin=0.1)(embeddings, labels)
    assert value.item() == pytest.approx(reference(embeddings, labels, 1.2, 0.1), rel=1e-10)
    embeddings, labels = float32_batch(2)
    ours = LiftedStructureLoss(form=form, neg_margin=1.0)(embeddings, labels)
    assert ours.item() == pytest.approx(pml_class(neg_margin=1.0)(embeddings, labels).item(), rel=1e-5)


def test_lifted_song_with_reference_set_uses_column_negatives():
    embeddings, labels = pk_batch(3, 2, 4, seed=3)
    ref = pk_batch(3, 3, 4, seed=4)
    value = LiftedStructureLoss(neg_margin=1.0)(embeddings, labels, ref_embeddings=ref[0], ref_labels=ref[1])
    assert value.item() == pytest.approx(lifted_song_reference(embeddings, labels, 1.0, ref=ref), rel=1e-10)


@pytest.mark.parametrize("form", ["song", "generalized"])
def test_lifted_gradcheck(form):
    embeddings, labels = pk_batch(3, 3, 4, seed=7)
    assert gradcheck(LiftedStructureLoss(form=form, neg_margin=1.5), embeddings, labels)


# ---------------------------------------------------------------- N-pair

def test_npair_matches_loop():
    embeddings, labels = pk_batch(4, 3, 5, seed=8)
    x = embeddings.numpy()
    # One pair per class: the first item and the next one of the same label.
    anchors, positives = x[[0, 3, 6, 9]], x[[1, 4, 7, 10]]
    expected = 0.0
    for i in range(4):
        expected += math.log1p(sum(math.exp(anchors[i] @ positives[j] - anchors[i] @ positives[i])
                                   for j in range(4) if j != i)) / 4
    expected += 0.01 * np.mean([anchors[i] @ anchors[i] + positives[i] @ positives[i] for i in range(4)])
    assert NPairLoss(l2_reg=0.01)(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)


def test_npair_equals_pml_and_gradcheck():
    embeddings, labels = float32_batch(9)
    shuffled = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    embeddings, labels = embeddings[shuffled], labels[shuffled]
    # pytorch-metric-learning normalises before its dot product by default, i.e. a cosine similarity.
    ours = NPairLoss(l2_reg=0.0, distance="cosine")(embeddings, labels)
    theirs = pml_losses.NPairsLoss()(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    embeddings, labels = pk_batch(3, 2, 4, seed=10)
    assert gradcheck(NPairLoss(l2_reg=0.1), embeddings, labels)


# ---------------------------------------------------------------- NT-Xent / SupCon

def ntxent_reference(embeddings, labels, temperature, ref=None):
    ref_embeddings, ref_labels = ref if ref is not None else (None, None)
    z = cosine(embeddings, ref_embeddings) / temperature
    positives, negatives = pairs(labels, ref_labels)
    losses = []
    for a, p in positives:
        denominator = [z[a, p]] + [z[b, n] for b, n in negatives if b == a]
        losses.append(logsumexp(denominator) - z[a, p])
    return float(np.mean(losses))


def supcon_reference(embeddings, labels, temperature):
    z = cosine(embeddings) / temperature
    losses = []
    for a in range(len(labels)):
        others = [j for j in range(len(labels)) if j != a]
        positives = [j for j in others if labels[j] == labels[a]]
        denominator = logsumexp(z[a, j] for j in others)
        losses.append(-np.mean([z[a, p] - denominator for p in positives]))
    return float(np.mean(losses))


def test_ntxent_matches_loop_with_and_without_reference_set():
    embeddings, labels = pk_batch(4, 3, 5, seed=11)
    assert NTXentLoss(temperature=0.2)(embeddings, labels).item() == pytest.approx(
        ntxent_reference(embeddings, labels, 0.2), rel=1e-10)
    ref = pk_batch(4, 2, 5, seed=12)
    value = NTXentLoss(temperature=0.2)(embeddings, labels, ref_embeddings=ref[0], ref_labels=ref[1])
    assert value.item() == pytest.approx(ntxent_reference(embeddings, labels, 0.2, ref=ref), rel=1e-10)


def test_supcon_matches_loop():
    embeddings, labels = pk_batch(4, 3, 5, seed=13)
    value = NTXentLoss(temperature=0.3, supervised=True)(embeddings, labels)
    assert value.item() == pytest.approx(supcon_reference(embeddings, labels, 0.3), rel=1e-10)


@pytest.mark.parametrize("supervised", [False, True])
def test_ntxent_equals_pml_and_gradcheck(supervised):
    embeddings, labels = float32_batch(14)
    ours = NTXentLoss(temperature=0.1, supervised=supervised)(embeddings, labels)
    pml_class = pml_losses.SupConLoss if supervised else pml_losses.NTXentLoss
    theirs = pml_class(temperature=0.1)(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    embeddings, labels = pk_batch(3, 3, 4, seed=15)
    assert gradcheck(NTXentLoss(temperature=0.5, supervised=supervised), embeddings, labels)


def test_ntxent_one_class_is_zero_and_temperature_checked():
    embeddings = torch.randn(6, 4, requires_grad=True)
    for supervised in (False, True):
        value = NTXentLoss(supervised=supervised)(embeddings, torch.zeros(6, dtype=torch.long))
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(embeddings.grad).all()
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got 0$"):
        NTXentLoss(temperature=0)


# ---------------------------------------------------------------- multi-similarity

def multi_similarity_reference(embeddings, labels, alpha, beta, base, epsilon):
    s = cosine(embeddings)
    positives, negatives = pairs(labels)
    losses = []
    for a in range(len(labels)):
        pos = [s[a, p] for b, p in positives if b == a]
        neg = [s[a, n] for b, n in negatives if b == a]
        if epsilon is not None:
            pos, neg = ([v for v in pos if neg and v - epsilon < max(neg)],
                        [v for v in neg if pos and v + epsilon > min(pos)])
        losses.append(math.log1p(sum(math.exp(-alpha * (v - base)) for v in pos)) / alpha
                      + math.log1p(sum(math.exp(beta * (v - base)) for v in neg)) / beta)
    return float(np.mean(losses))


@pytest.mark.parametrize("epsilon", [None, 0.1])
def test_multi_similarity_matches_loop(epsilon):
    embeddings, labels = pk_batch(4, 3, 5, seed=16)
    value = MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.3, mining_epsilon=epsilon)(embeddings, labels)
    expected = multi_similarity_reference(embeddings, labels, 2.0, 10.0, 0.3, epsilon)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_multi_similarity_equals_pml_with_and_without_mining():
    embeddings, labels = float32_batch(17)
    ours = MultiSimilarityLoss(mining_epsilon=None)(embeddings, labels)
    theirs = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    mined = pml_miners.MultiSimilarityMiner(epsilon=0.1)(embeddings, labels)
    theirs = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(embeddings, labels, mined)
    ours = MultiSimilarityLoss(mining_epsilon=0.1)(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    # The same through mined Pairs from the other library's miner.
    ours = MultiSimilarityLoss(mining_epsilon=None)(embeddings, labels, mined=Pairs(*mined))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_multi_similarity_gradcheck():
    embeddings, labels = pk_batch(3, 3, 4, seed=18)
    assert gradcheck(MultiSimilarityLoss(beta=5.0, mining_epsilon=None), embeddings, labels)


# ---------------------------------------------------------------- proxy anchor

def proxy_anchor_reference(embeddings, labels, proxies, margin, alpha):
    s = normalized(embeddings) @ normalized(proxies).T
    num_classes = proxies.shape[0]
    present = sorted({int(y) for y in labels})
    pos = sum(math.log1p(sum(math.exp(-alpha * (s[i, c] - margin)) for i in range(len(labels)) if labels[i] == c))
              for c in present) / len(present)
    neg = sum(math.log1p(sum(math.exp(alpha * (s[i, c] + margin)) for i in range(len(labels)) if labels[i] != c))
              for c in range(num_classes)) / num_classes
    return pos + neg


def test_proxy_anchor_matches_loop_and_pml():
    embeddings, labels = pk_batch(3, 3, 5, seed=19)
    loss = ProxyAnchorLoss(embedding_dim=5, num_classes=6, margin=0.1, alpha=8.0).double()
    expected = proxy_anchor_reference(embeddings, labels, loss.proxies.detach(), 0.1, 8.0)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)
    assert loss.logits(embeddings).shape == (9, 6) and ProxyAnchorLoss.has_class_centres

    embeddings, labels = float32_batch(20)
    ours = ProxyAnchorLoss(embedding_dim=16, num_classes=10)
    theirs = pml_losses.ProxyAnchorLoss(num_classes=10, embedding_size=16, margin=0.1, alpha=32)
    with torch.no_grad():
        theirs.proxies.copy_(ours.proxies)
    assert ours(embeddings, labels).item() == pytest.approx(theirs(embeddings, labels).item(), rel=1e-5)


def test_proxy_anchor_gradcheck_and_bad_labels():
    embeddings, labels = pk_batch(3, 2, 4, seed=21)
    loss = ProxyAnchorLoss(embedding_dim=4, num_classes=4, alpha=4.0).double()
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, p: functional_call(loss, {"proxies": p}, (x, labels)),
                                    (embeddings.clone().requires_grad_(True), proxies))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss(embeddings, labels + 3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        ProxyAnchorLoss(embedding_dim=4, num_classes=0)

