import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.reducers import MeanReducer

from deepmetric.distances import MahalanobisDistance, get_distance
from deepmetric.losses.pair import ContrastiveLoss, QuadrupletLoss, TripletLoss
from deepmetric.losses.tuples import as_dissimilarity, hinge_sums, pair_values
from deepmetric.types import Pairs, Triplets
from loss_reference import cosine, euclidean, pairs, pk_batch, reduce, triplets


def relu(x):
    return max(x, 0.0)


# ---------------------------------------------------------------- hinge_sums (the all-combinations trick)

def test_hinge_sums_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    pos = torch.rand(4, 7, generator=generator, dtype=torch.float64)
    neg = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    pos_mask = torch.rand(4, 7, generator=generator) > 0.4
    neg_mask = torch.rand(4, 9, generator=generator) > 0.3
    neg_mask[2] = False  # a row without negatives
    totals, violating, counts = hinge_sums(pos, pos_mask, neg, neg_mask, 0.25)
    for r in range(4):
        terms = [relu(float(pos[r, i] - neg[r, j]) + 0.25) for i in range(7) for j in range(9)
                 if pos_mask[r, i] and neg_mask[r, j]]
        assert totals[r].item() == pytest.approx(sum(terms), abs=1e-12)
        assert int(violating[r]) == sum(t > 0 for t in terms)
        assert int(counts[r]) == len(terms)


def test_hinge_sums_gradcheck():
    generator = torch.Generator().manual_seed(2)
    pos = torch.rand(3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    neg = torch.rand(3, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    pos_mask = torch.rand(3, 5, generator=generator) > 0.3
    neg_mask = torch.rand(3, 6, generator=generator) > 0.3
    assert torch.autograd.gradcheck(lambda p, n: hinge_sums(p, pos_mask, n, neg_mask, 0.3)[0], (pos, neg))


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "cosine", "dot", "mahalanobis"])
@pytest.mark.parametrize("num_pairs", [3, 200])  # gathered rows / one matrix product
def test_pair_values_equal_the_distance_matrix(name, num_pairs):
    distance = MahalanobisDistance(dim=5, rank=3) if name == "mahalanobis" else get_distance(name)
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(12, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    refs = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    rows = torch.randint(12, (num_pairs,), generator=generator)
    cols = torch.randint(9, (num_pairs,), generator=generator)
    expected = as_dissimilarity(distance, distance(embeddings, refs))[rows, cols]
    assert torch.allclose(pair_values(distance, embeddings, refs, rows, cols), expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: pair_values(distance, x, refs, rows, cols), (embeddings,))


# ---------------------------------------------------------------- contrastive

def contrastive_reference(embeddings, labels, pos_margin, neg_margin, *, squared=False, similarity=False,
                          reduction="mean", chosen=None):
    values = cosine(embeddings) if similarity else euclidean(embeddings)
    positives, negatives = chosen or pairs(labels)
    sign = -1.0 if similarity else 1.0
    power = 2 if squared else 1
    scale = 0.5 if squared else 1.0
    pos = [scale * relu(sign * (values[a, j] - pos_margin)) ** power for a, j in positives]
    neg = [scale * relu(sign * (neg_margin - values[a, j])) ** power for a, j in negatives]
    return reduce(pos, reduction) + reduce(neg, reduction)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_nonzero"])
def test_contrastive_matches_loop(squared, reduction):
    embeddings, labels = pk_batch()
    loss = ContrastiveLoss(pos_margin=0.3, neg_margin=1.2, squared=squared, reduction=reduction)
    expected = contrastive_reference(embeddings, labels, 0.3, 1.2, squared=squared, reduction=reduction)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)


def test_contrastive_cosine_margins_are_similarity_thresholds():
    embeddings, labels = pk_batch(seed=3)
    loss = ContrastiveLoss(pos_margin=0.9, neg_margin=0.1, distance="cosine")
    expected = contrastive_reference(embeddings, labels, 0.9, 0.1, similarity=True)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)


def test_contrastive_with_mined_pairs_uses_only_them():
    embeddings, labels = pk_batch()
    mined = Pairs(torch.tensor([0, 3]), torch.tensor([1, 5]), torch.tensor([0, 2, 7]), torch.tensor([4, 9, 1]))
    chosen = ([(0, 1), (3, 5)], [(0, 4), (2, 9), (7, 1)])
    expected = contrastive_reference(embeddings, labels, 0.0, 1.5, chosen=chosen)
    value = ContrastiveLoss(neg_margin=1.5)(embeddings, labels, mined=mined)
    assert value.item() == pytest.approx(expected, rel=1e-10)
    from_triplets = ContrastiveLoss(neg_margin=1.5)(
        embeddings, labels, mined=Triplets(torch.tensor([0, 3, 0]), torch.tensor([1, 5, 1]), torch.tensor([4, 9, 9])))
    expected = contrastive_reference(embeddings, labels, 0.0, 1.5, chosen=([(0, 1), (3, 5)], [(0, 4), (3, 9), (0, 9)]))
    assert from_triplets.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("reduction,pml_reducer", [("mean_nonzero", None), ("mean", MeanReducer())])
def test_contrastive_equals_pytorch_metric_learning(reduction, pml_reducer):
    embeddings, labels = pk_batch(8, 4, 16, seed=4, dtype=torch.float32)
    ours = ContrastiveLoss(pos_margin=0.1, neg_margin=1.1, reduction=reduction)(embeddings, labels)
    kwargs = {} if pml_reducer is None else {"reducer": pml_reducer}
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.1, neg_margin=1.1, **kwargs)(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_contrastive_with_reference_set():
    embeddings, labels = pk_batch(3, 2, 4, seed=5)
    ref_embeddings, ref_labels = pk_batch(4, 3, 4, seed=6)
    values = euclidean(embeddings, ref_embeddings)
    positives, negatives = pairs(labels, ref_labels)
    expected = (np.mean([values[a, j] for a, j in positives])
                + np.mean([relu(1.0 - values[a, j]) for a, j in negatives]))
    value = ContrastiveLoss()(embeddings, labels, ref_embeddings=ref_embeddings, ref_labels=ref_labels)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_contrastive_gradcheck():
    embeddings, labels = pk_batch(3, 3, 4, seed=7)
    embeddings.requires_grad_(True)
    loss = ContrastiveLoss(pos_margin=0.2, neg_margin=1.3, squared=True)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (embeddings,))


# ---------------------------------------------------------------- triplet

def triplet_reference(embeddings, labels, margin, reduction, *, ref=None, chosen=None, soft=False):
    ref_embeddings, ref_labels = ref if ref is not None else (None, None)
    values = euclidean(embeddings, ref_embeddings)
    chosen = chosen if chosen is not None else triplets(labels, ref_labels)
    terms = [values[a, p] - values[a, n] + margin for a, p, n in chosen]
    losses = [math.log1p(math.exp(t)) if soft else relu(t) for t in terms]
    return reduce(losses, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_nonzero"])
def test_triplet_all_triplets_matches_loop(reduction):
    embeddings, labels = pk_batch()
    value = TripletLoss(margin=0.4, reduction=reduction)(embeddings, labels)
    assert value.item() == pytest.approx(triplet_reference(embeddings, labels, 0.4, reduction), rel=1e-10)


def test_triplet_fast_path_gradient_equals_enumeration():
    embeddings, labels = pk_batch(4, 4, 6, seed=8)
    x1 = embeddings.clone().requires_grad_(True)
    x2 = embeddings.clone().requires_grad_(True)
    TripletLoss(margin=0.5)(x1, labels).backward()
    per_triplet = TripletLoss(margin=0.5, reduction="none")(x2, labels)
    (per_triplet.sum() / (per_triplet > 0).sum()).backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12)


def test_triplet_gradcheck():
    embeddings, labels = pk_batch(3, 3, 4, seed=9)
    embeddings.requires_grad_(True)
    loss = TripletLoss(margin=0.8, reduction="mean")
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (embeddings,))


def test_triplet_soft_margin_and_mined_triplets():
    embeddings, labels = pk_batch()
    chosen = [(0, 1, 5), (4, 3, 11), (9, 10, 0)]
    mined = Triplets(*(torch.tensor(column) for column in zip(*chosen)))
    value = TripletLoss(margin=0.1, soft_margin=True)(embeddings, labels, mined=mined)
    expected = triplet_reference(embeddings, labels, 0.1, "mean_nonzero", chosen=chosen, soft=True)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_triplet_from_mined_pairs_combines_per_anchor():
    embeddings, labels = pk_batch()
    mined = Pairs(torch.tensor([0, 0, 4]), torch.tensor([1, 2, 5]), torch.tensor([0, 4]), torch.tensor([6, 0]))
    chosen = [(0, 1, 6), (0, 2, 6), (4, 5, 0)]
    value = TripletLoss(margin=0.3, reduction="mean")(embeddings, labels, mined=mined)
    assert value.item() == pytest.approx(triplet_reference(embeddings, labels, 0.3, "mean", chosen=chosen), rel=1e-10)


def test_triplet_with_reference_set():
    embeddings, labels = pk_batch(3, 2, 4, seed=10)
    ref = pk_batch(4, 3, 4, seed=11)
    value = TripletLoss(margin=0.3)(embeddings, labels, ref_embeddings=ref[0], ref_labels=ref[1])
    assert value.item() == pytest.approx(triplet_reference(embeddings, labels, 0.3, "mean_nonzero", ref=ref), rel=1e-10)


@pytest.mark.parametrize("soft_margin", [False, True])
def test_triplet_equals_pytorch_metric_learning(soft_margin):
    embeddings, labels = pk_batch(8, 4, 16, seed=12, dtype=torch.float32)
    ours = TripletLoss(margin=0.2, soft_margin=soft_margin)(embeddings, labels)
    theirs = pml_losses.TripletMarginLoss(margin=0.2, smooth_loss=soft_margin)(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_triplet_consumes_pml_semihard_triplets_like_pml():
    embeddings, labels = pk_batch(8, 4, 16, seed=13, dtype=torch.float32)
    a, p, n = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(embeddings, labels)
    ours = TripletLoss(margin=0.2)(embeddings, labels, mined=Triplets(a, p, n))
    theirs = pml_losses.TripletMarginLoss(margin=0.2)(embeddings, labels, (a, p, n))
    assert len(a) > 0 and ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_triplet_zero_when_nothing_mined_and_bad_mined_index():
    embeddings, labels = pk_batch()
    embeddings.requires_grad_(True)
    for mined in (Triplets.empty(), Pairs.empty()):
        value = TripletLoss()(embeddings, labels, mined=mined)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(embeddings.grad).all()
    with pytest.raises(ValueError, match=r"mined negative indices must lie in \[0, 12\)"):
        TripletLoss()(embeddings, labels, mined=Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([12])))


def test_pair_loss_argument_errors():
    with pytest.raises(TypeError, match=r"^margin must be a finite number, got str: '0\.2'$"):
        TripletLoss(margin="0.2")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ContrastiveLoss(reduction="avg")
    with pytest.raises(ValueError, match="form must be one of"):
        QuadrupletLoss(form="chenn")
    with pytest.raises(ValueError, match="reduction='none' is not available"):
        QuadrupletLoss(reduction="none")


# ---------------------------------------------------------------- quadruplet

def quadruplet_reference(embeddings, labels, form, margin, second_margin, reduction):
    values = euclidean(embeddings) ** 2
    positives, negatives = pairs(labels)
    if form == "chen":
        first = [relu(values[a, p] - values[a, n] + margin) for a, p, n in triplets(labels)]
        second = [relu(values[i, j] - values[k, q] + second_margin) for i, j in positives for k, q in negatives
                  if labels[k] != labels[i] and labels[q] != labels[i]]
        return reduce(first, reduction) + reduce(second, reduction)
    ranking = [relu(values[a, p] - values[a, s] + margin) for a, p in positives for b, s in positives
               if a == b and p != s]
    triplet = [relu(values[a, s] - values[a, n] + second_margin) for a, s, n in triplets(labels)]
    return reduce(triplet, reduction) + reduce(ranking, reduction)


@pytest.mark.parametrize("form", ["chen", "ni"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_nonzero"])
def test_quadruplet_matches_loop(form, reduction):
    embeddings, labels = pk_batch(4, 3, 5, seed=14)
    loss = QuadrupletLoss(form=form, margin=0.5, second_margin=0.25, reduction=reduction)
    expected = quadruplet_reference(embeddings, labels, form, 0.5, 0.25, reduction)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("form", ["chen", "ni"])
def test_quadruplet_gradcheck(form):
    embeddings, labels = pk_batch(3, 3, 4, seed=15)
    embeddings.requires_grad_(True)
    loss = QuadrupletLoss(form=form, margin=0.7, second_margin=0.4)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (embeddings,))


def test_quadruplet_with_mined_triplets_and_one_class():
    embeddings, labels = pk_batch(4, 3, 5, seed=16)
    mined = Triplets(torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([6, 9]))
    values = euclidean(embeddings) ** 2
    first = np.mean([relu(values[0, 1] - values[0, 6] + 0.5), relu(values[3, 4] - values[3, 9] + 0.5)])
    second = np.mean([relu(values[i, j] - values[k, q] + 0.2) for i, j in [(0, 1), (3, 4)]
                      for k, q in [(0, 6), (3, 9)] if labels[k] != labels[i] and labels[q] != labels[i]])
    value = QuadrupletLoss(margin=0.5, second_margin=0.2)(embeddings, labels, mined=mined)
    assert value.item() == pytest.approx(first + second, rel=1e-10)
    one_class = torch.zeros(12, dtype=torch.long)
    embeddings.requires_grad_(True)
    value = QuadrupletLoss()(embeddings, one_class)
    value.backward()
    assert value.item() == 0.0 and torch.count_nonzero(embeddings.grad) == 0
