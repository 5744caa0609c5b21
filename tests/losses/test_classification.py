"""Classification losses against pytorch-metric-learning (where definitions coincide), plain torch / numpy
references, and the behaviour specific to each paper (annealing, AdaCos scale, centre updates, sub-centres,
dynamic margins, mined weights)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml

from deepmetric import registry
from deepmetric.losses.classification import (
    AdaCosLoss,
    ArcFaceLoss,
    CenterLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    DynamicMarginArcFaceLoss,
    NormalizedSoftmaxLoss,
    SoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    mined_weights,
)
from deepmetric.losses.margins import arc_margin, combined_margin
from deepmetric.types import Pairs, Triplets

DIM, CLASSES, BATCH = 6, 7, 12


def data(seed=0, dtype=torch.float64, batch=BATCH, num_classes=CLASSES):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, DIM, generator=generator, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return embeddings, labels


def randomise(loss, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in loss.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return loss


def compare_with_pml(ours, theirs, *, chunk_size=3):
    ours = randomise(ours).double()
    ours.head.chunk_size = chunk_size
    theirs = theirs.double()
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)
    embeddings, labels = data()
    value = ours(embeddings, labels)
    grad_embeddings, grad_weight = torch.autograd.grad(value, [embeddings, ours.weight])
    expected = theirs(embeddings, labels)
    expected_embeddings, expected_weight = torch.autograd.grad(expected, [embeddings, theirs.W])
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_embeddings, expected_embeddings, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_weight, expected_weight.T, rtol=1e-8, atol=1e-10)


def test_arcface_equals_pml():
    compare_with_pml(ArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, margin=0.5, scale=64.0),
                     pml.ArcFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=math.degrees(0.5), scale=64))


def test_arcface_equals_pml_past_pi():
    # A margin of 2.5 rad puts most targets in the theta + m > pi branch; both use cos(theta) - m sin(m).
    compare_with_pml(ArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, margin=2.5, scale=10.0),
                     pml.ArcFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=math.degrees(2.5), scale=10))


def test_cosface_equals_pml():
    compare_with_pml(CosFaceLoss(embedding_dim=DIM, num_classes=CLASSES, margin=0.35, scale=30.0),
                     pml.CosFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=0.35, scale=30))


def test_subcenter_arcface_equals_pml():
    compare_with_pml(SubCenterArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, num_subcenters=3, margin=0.4,
                                          scale=20.0),
                     pml.SubCenterArcFaceLoss(num_classes=CLASSES, embedding_size=DIM, sub_centers=3,
                                              margin=math.degrees(0.4), scale=20))


def test_normalized_softmax_equals_pml():
    compare_with_pml(NormalizedSoftmaxLoss(embedding_dim=DIM, num_classes=CLASSES, scale=20.0),
                     pml.NormalizedSoftmaxLoss(num_classes=CLASSES, embedding_size=DIM, temperature=0.05))


def test_sphereface_without_annealing_equals_pml():
    # pytorch-metric-learning has psi and the kept feature norm but no lambda; lambda = 0 coincides.
    ours = SphereFaceLoss(embedding_dim=DIM, num_classes=CLASSES, margin=3, lambda_max=0.0, lambda_min=0.0)
    compare_with_pml(ours, pml.SphereFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=3, scale=1))


def test_softmax_equals_linear_cross_entropy():
    loss = randomise(SoftmaxLoss(embedding_dim=DIM, num_classes=CLASSES, chunk_size=2)).double()
    embeddings, labels = data()
    value = loss(embeddings, labels)
    expected = F.cross_entropy(embeddings @ loss.weight.T + loss.head.bias, labels)
    torch.testing.assert_close(value, expected)
    got = torch.autograd.grad(value, [embeddings, loss.weight, loss.head.bias])
    want = torch.autograd.grad(expected, [embeddings, loss.weight, loss.head.bias])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(loss.logits(embeddings), embeddings @ loss.weight.T + loss.head.bias)


def numpy_margin_softmax(embeddings, labels, weight, scale, target_fn):
    """Loop reference: per sample, cosines to every class, the target replaced by target_fn(theta)."""
    x = embeddings.detach().numpy()
    w = weight.detach().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    total = 0.0
    for row, label in zip(x, labels.tolist()):
        cosines = w @ (row / np.linalg.norm(row))
        logits = scale * cosines
        logits[label] = scale * target_fn(np.arccos(np.clip(cosines[label], -1, 1)))
        total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[label]
    return total / len(x)


def test_combined_margin_against_numpy_loop():
    loss = randomise(CombinedMarginLoss(embedding_dim=DIM, num_classes=CLASSES, angular_multiplier=1.0,
                                        angular_margin=0.3, cosine_margin=0.2, scale=16.0)).double()
    embeddings, labels = data()

    def target(theta):
        return np.cos(theta + 0.3) - 0.2 if theta + 0.3 <= math.pi else np.cos(theta) - 0.3 * math.sin(0.3) - 0.2

    assert loss(embeddings, labels).item() == pytest.approx(
        numpy_margin_softmax(embeddings, labels, loss.weight, 16.0, target), rel=1e-10)


def test_arcface_gradient_through_the_loss_is_exact():
    # d loss / d cos_target = s (p_target - 1) * d/dc cos(arccos c + m); check on one sample against the
    # closed form, with the embedding fixed and the target cosine moved along the centre.
    loss = randomise(ArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, margin=0.5, scale=8.0)).double()
    embeddings, labels = data(batch=1)
    inputs = F.normalize(embeddings.detach(), dim=1)
    centres = F.normalize(loss.weight.detach(), dim=1)
    cosines = (inputs @ centres.T)[0]
    target = cosines[labels[0]].clone().requires_grad_(True)
    logits = 8.0 * cosines.clone()
    logits = torch.cat([logits[:labels[0]], (8.0 * arc_margin(target, 0.5)).view(1), logits[labels[0] + 1:]])
    value = -torch.log_softmax(logits, 0)[labels[0]]
    (grad,) = torch.autograd.grad(value, target)
    p = torch.softmax(logits.detach(), 0)[labels[0]]
    c = target.detach()
    exact = 8.0 * (p - 1.0) * (math.cos(0.5) + math.sin(0.5) * c / torch.sqrt(1 - c * c))
    torch.testing.assert_close(grad, exact)
    # and the head gives the same loss as this unchunked construction
    assert loss(embeddings, labels).item() == pytest.approx(value.item(), rel=1e-12)


def test_sphereface_annealing_schedule_and_values():
    loss = SphereFaceLoss(embedding_dim=DIM, num_classes=CLASSES, margin=4).double()
    assert loss.current_lambda() == 1000.0
    embeddings, labels = data()
    lam = loss.current_lambda()
    norms = embeddings.detach().norm(dim=1)

    def reference():
        x = F.normalize(embeddings.detach(), dim=1)
        cosines = x @ F.normalize(loss.weight.detach(), dim=1).T
        theta = torch.acos(cosines[torch.arange(BATCH), labels].clamp(-1, 1))
        k = torch.floor(theta * 4 / math.pi).clamp(max=3)
        psi = (-1.0) ** k * torch.cos(4 * theta) - 2 * k
        target = (lam * torch.cos(theta) + psi) / (1 + lam)
        logits = norms[:, None] * cosines
        logits[torch.arange(BATCH), labels] = norms * target
        return F.cross_entropy(logits, labels)

    loss.train()
    expected = reference()
    torch.testing.assert_close(loss(embeddings, labels), expected)
    assert int(loss.step) == 1
    for _ in range(9):
        loss(embeddings, labels)
    assert loss.current_lambda() == pytest.approx(1000.0 / (1 + 0.12 * 10))
    loss.step.fill_(10_000)
    assert loss.current_lambda() == 5.0
    loss.eval()
    loss(embeddings, labels)
    assert int(loss.step) == 10_000


def test_sphereface_trains_from_annealing():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 5), dim=1)
    labels = torch.arange(4).repeat_interleave(16)
    features = (centres[labels] + 0.3 * torch.randn(64, 5)).requires_grad_(False)
    loss = SphereFaceLoss(embedding_dim=5, num_classes=4, margin=4, lambda_gamma=1.0)
    projection = torch.nn.Linear(5, 5)
    optimizer = torch.optim.SGD(list(loss.parameters()) + list(projection.parameters()), lr=0.1)
    values = []
    for _ in range(40):
        optimizer.zero_grad()
        value = loss(projection(features) * 5, labels)
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert loss.current_lambda() < 50  # the margin has taken over
    accuracy = (loss.logits(projection(features)).argmax(1) == labels).float().mean()
    assert accuracy > 0.75 and values[-1] < values[0]  # chance is 0.25


def test_adacos_fixed_and_dynamic_scale():
    fixed = AdaCosLoss(embedding_dim=DIM, num_classes=CLASSES, dynamic=False).double()
    embeddings, labels = data()
    assert float(fixed.scale) == pytest.approx(math.sqrt(2) * math.log(CLASSES - 1))
    fixed(embeddings, labels)
    assert float(fixed.scale) == pytest.approx(math.sqrt(2) * math.log(CLASSES - 1))

    loss = AdaCosLoss(embedding_dim=DIM, num_classes=CLASSES).double()
    with torch.no_grad():
        loss.weight.copy_(fixed.weight)
    old = float(loss.scale)
    cosines = F.normalize(embeddings.detach(), dim=1) @ F.normalize(loss.weight.detach(), dim=1).T
    target = cosines[torch.arange(BATCH), labels]
    others = torch.ones_like(cosines, dtype=torch.bool)
    others[torch.arange(BATCH), labels] = False
    b_avg = (torch.exp(old * cosines) * others).sum() / BATCH
    median = torch.acos(target).median()
    new = float(torch.log(b_avg) / torch.cos(torch.clamp(median, max=math.pi / 4)))
    value = loss(embeddings, labels)
    assert float(loss.scale) == pytest.approx(new, rel=1e-10)
    assert value.item() == pytest.approx(F.cross_entropy(new * cosines, labels).item(), rel=1e-10)
    loss.eval()
    loss(embeddings, labels)
    assert float(loss.scale) == pytest.approx(new, rel=1e-10)


def test_center_loss_gradient_mode_value():
    loss = randomise(CenterLoss(embedding_dim=DIM, num_classes=CLASSES, center_weight=0.1)).double()
    embeddings, labels = data()
    expected = (F.cross_entropy(embeddings @ loss.weight.T + loss.head.bias, labels)
                + 0.1 * 0.5 * ((embeddings - loss.centers[labels]) ** 2).sum(1).mean())
    value = loss(embeddings, labels)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert loss.centers.grad is not None and isinstance(loss.centers, torch.nn.Parameter)


def test_center_loss_alpha_rule():
    loss = CenterLoss(embedding_dim=DIM, num_classes=CLASSES, center_update="alpha", alpha=0.5).double()
    with torch.no_grad():
        loss.centers.copy_(torch.randn(CLASSES, DIM, dtype=torch.float64))
    assert "centers" not in dict(loss.named_parameters())
    before = loss.centers.clone().numpy()
    embeddings, labels = data()
    loss.train()
    loss(embeddings, labels)
    expected = before.copy()
    x = embeddings.detach().numpy()
    for j in range(CLASSES):  # Wen et al. 2016, eq. 4, one loop per class
        members = [i for i in range(BATCH) if labels[i] == j]
        delta = sum((before[j] - x[i] for i in members), np.zeros(DIM)) / (1 + len(members))
        expected[j] = before[j] - 0.5 * delta
    np.testing.assert_allclose(loss.centers.numpy(), expected, atol=1e-12)
    loss.eval()
    loss(embeddings, labels)
    np.testing.assert_allclose(loss.centers.numpy(), expected, atol=1e-12)


def subcentre_setup():
    """3 classes x 3 sub-centres along the axes of R^9; class 0's samples mostly sit at sub-centre 1."""
    loss = SubCenterArcFaceLoss(embedding_dim=9, num_classes=3, num_subcenters=3).double()
    with torch.no_grad():
        loss.weight.copy_(torch.eye(9, dtype=torch.float64) * 2.0)
    e = torch.eye(9, dtype=torch.float64)
    embeddings = torch.stack([e[1] + 0.1 * e[0], e[1], e[1] + 0.2 * e[2], e[0] + 0.05 * e[1],
                              0.2 * e[1] + 5.0 * e[4],  # labelled 0, far from all of class 0
                              e[4], e[4] + 0.1 * e[5]])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    return loss, embeddings, labels


def test_subcentre_votes_dominant_centres_and_keep_mask():
    loss, embeddings, labels = subcentre_setup()
    votes = loss.subcentre_votes(embeddings, labels)
    assert votes.tolist() == [[1, 4, 0], [0, 2, 0], [0, 0, 0]]
    dominant = loss.dominant_centres(votes)
    torch.testing.assert_close(dominant, torch.eye(9, dtype=torch.float64)[[1, 4, 6]])
    keep = loss.keep_mask(embeddings, labels, max_angle=math.radians(75))
    # sample 3 is near sub-centre 0, 87 degrees from the dominant one; sample 4 is 88 degrees away
    angles = torch.rad2deg(torch.acos(F.normalize(embeddings, dim=1)[:, [1, 1, 1, 1, 1, 4, 4]].diagonal()))
    assert keep.tolist() == (angles <= 75).tolist() == [True, True, True, False, False, True, True]
    # votes gathered over more data can change the dominant sub-centre
    keep_other = loss.keep_mask(embeddings, labels, votes=torch.tensor([[9, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert keep_other[:5].tolist() == [False, False, False, True, False]
    with pytest.raises(ValueError, match=r"votes must be a tensor of shape \(3, 3\)"):
        loss.dominant_centres(torch.zeros(3, 2))


def test_dynamic_margins_from_counts():
    counts = [1000, 100, 10, 1, 5, 50, 500]
    loss = randomise(DynamicMarginArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, class_counts=counts,
                                              margin_scale=0.4, margin_offset=0.05, margin_power=0.25,
                                              scale=16.0)).double()
    expected_margins = 0.4 * np.asarray(counts, dtype=float) ** -0.25 + 0.05
    np.testing.assert_allclose(loss.class_margins.numpy(), expected_margins, rtol=1e-6)
    embeddings, labels = data()

    def target_for(label):
        m = float(loss.class_margins[label])
        return lambda theta: np.cos(theta + m) if theta + m <= math.pi else np.cos(theta) - m * math.sin(m)

    x = F.normalize(embeddings.detach(), dim=1)
    w = F.normalize(loss.weight.detach(), dim=1)
    total = 0.0
    for i in range(BATCH):
        total += numpy_margin_softmax(embeddings[i:i + 1], labels[i:i + 1], loss.weight, 16.0,
                                      target_for(int(labels[i])))
    assert loss(embeddings, labels).item() == pytest.approx(total / BATCH, rel=1e-6)
    assert (x @ w.T).shape == (BATCH, CLASSES)
    with pytest.raises(ValueError, match="class_counts must have one count per class"):
        DynamicMarginArcFaceLoss(embedding_dim=DIM, num_classes=3, class_counts=[1, 2])
    with pytest.raises(ValueError, match="class_counts must all be >= 1"):
        DynamicMarginArcFaceLoss(embedding_dim=DIM, num_classes=2, class_counts=[0, 2])


def test_mined_weights_follow_pml_and_empty_is_zero():
    embeddings, labels = data()
    loss = randomise(ArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, scale=16.0)).double()
    mined = Triplets(torch.tensor([0, 0, 2]), torch.tensor([1, 1, 3]), torch.tensor([5, 6, 5]))
    weights = mined_weights(mined, BATCH, embeddings)
    assert weights.tolist()[:7] == [1.0, 1.0, 0.5, 0.5, 0.0, 1.0, 0.5] and weights[7:].sum() == 0
    full = torch.stack([loss(embeddings[i:i + 1], labels[i:i + 1]) for i in range(BATCH)])
    torch.testing.assert_close(loss(embeddings, labels, mined=mined), (full * weights).mean())
    pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    assert mined_weights(pairs, BATCH, embeddings).tolist()[:3] == [1.0, 0.5, 0.5]
    value = loss(embeddings, labels, mined=Triplets.empty())
    value.backward()
    assert value.item() == 0.0 and torch.count_nonzero(embeddings.grad) == 0


def test_logits_are_margin_free_scaled_cosines():
    loss = randomise(CosFaceLoss(embedding_dim=DIM, num_classes=CLASSES, scale=30.0)).double()
    embeddings, _ = data()
    expected = 30.0 * F.normalize(embeddings, dim=1) @ F.normalize(loss.weight, dim=1).T
    torch.testing.assert_close(loss.logits(embeddings), expected)


def test_sampled_head_through_the_registry():
    torch.manual_seed(0)
    loss = registry.build({"name": "arcface", "args": {"head": "sampled", "sample_rate": 0.02}},
                          embedding_dim=DIM, num_classes=1000)
    assert type(loss).has_class_centres
    embeddings, labels = data(dtype=torch.float32, num_classes=1000)
    loss(embeddings, labels).backward()
    touched = loss.weight.grad.abs().sum(1) > 0
    assert set(labels.tolist()) <= set(touched.nonzero().flatten().tolist())
    assert int(touched.sum()) == 20
    loss.eval()
    full = loss(embeddings, labels)
    centres = F.normalize(loss.weight, dim=1)
    cosines = F.normalize(embeddings, dim=1) @ centres.T
    target = arc_margin(cosines[torch.arange(BATCH), labels], 0.5)
    logits = 64.0 * cosines.index_put((torch.arange(BATCH), labels), target)
    torch.testing.assert_close(full, F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build, message", [
    (lambda: ArcFaceLoss(embedding_dim=4, num_classes=3, margin=4.0),
     r"^margin must be a finite number in \[0, 3.14159\d*\), got 4.0$"),
    (lambda: ArcFaceLoss(embedding_dim=4, num_classes=3, scale=0.0), "scale must be a finite number > 0, got 0.0"),
    (lambda: CosFaceLoss(embedding_dim=4, num_classes=3, margin=-0.1), "margin must be a finite number >= 0"),
    (lambda: SphereFaceLoss(embedding_dim=4, num_classes=3, margin=0), "^margin must be an integer >= 1, got 0$"),
    (lambda: SphereFaceLoss(embedding_dim=4, num_classes=3, lambda_min=10.0, lambda_max=5.0), "lambda_min"),
    (lambda: CenterLoss(embedding_dim=4, num_classes=3, center_update="momentum"), "center_update must be one of"),
    (lambda: AdaCosLoss(embedding_dim=4, num_classes=2), "num_classes >= 3"),
    (lambda: SubCenterArcFaceLoss(embedding_dim=4, num_classes=3, num_subcenters=0), "num_subcenters must be"),
    (lambda: ArcFaceLoss(embedding_dim=4, num_classes=3, head="partial"), "head must be one of"),
])
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sphereface_margin_is_an_integer():
    with pytest.raises(TypeError, match=r"^margin must be an integer >= 1, got float: 1\.5$"):
        SphereFaceLoss(embedding_dim=4, num_classes=3, margin=1.5)


def test_labels_required_and_in_range():
    loss = ArcFaceLoss(embedding_dim=4, num_classes=3)
    with pytest.raises(TypeError, match=r"^labels must be an integer torch\.Tensor, got NoneType: None$"):
        loss(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=3\)"):
        loss(torch.randn(2, 4), torch.tensor([0, 5]))


def test_combined_margin_loss_general_multiplier_runs():
    loss = CombinedMarginLoss(embedding_dim=DIM, num_classes=CLASSES, angular_multiplier=1.5, angular_margin=0.1,
                              cosine_margin=0.05, scale=10.0).double()
    embeddings, labels = data()
    x = F.normalize(embeddings.detach(), dim=1)
    cosines = x @ F.normalize(loss.weight.detach(), dim=1).T
    target = combined_margin(cosines[torch.arange(BATCH), labels], 1.5, 0.1, 0.05)
    expected = F.cross_entropy(10.0 * cosines.index_put((torch.arange(BATCH), labels), target), labels)
    torch.testing.assert_close(loss(embeddings, labels), expected)


def test_empty_batch_is_a_zero_loss():
    loss = ArcFaceLoss(embedding_dim=4, num_classes=3)
    embeddings = torch.randn(0, 4, requires_grad=True)
    value = loss(embeddings, torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and embeddings.grad.shape == (0, 4)
