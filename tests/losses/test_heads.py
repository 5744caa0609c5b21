"""The chunked class-centre head against a plain unchunked implementation (float64 values and gradients),
gradcheck, the sampled head, the underflow fallback and AdaCos scales."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from deepmetric.losses.heads import ClassCentreHead, adacos_dynamic_scale, adacos_fixed_scale
from deepmetric.losses.margins import arc_margin, sphere_psi


def arcface(cosine, labels):
    return arc_margin(cosine, 0.5)


def reference_losses(inputs, labels, weight, bias, row_scale, margin, num_subcenters, normalize, class_index=None):
    """Unchunked: the full (B, C) logit matrix, the margin written into the target column, cross-entropy."""
    centres = F.normalize(weight, dim=1) if normalize else weight
    cosines = (inputs @ centres.T).view(inputs.shape[0], -1, num_subcenters).amax(dim=2)
    rows = torch.arange(inputs.shape[0])
    target = cosines[rows, labels]
    logits = row_scale[:, None] * cosines
    target_logits = row_scale * margin(target, labels)
    if bias is not None:
        logits = logits + bias
        target_logits = target_logits + bias[labels]
    logits = logits.index_put((rows, labels), target_logits)
    if class_index is not None:
        logits = logits[:, class_index]
        labels = torch.searchsorted(class_index, labels)
    return F.cross_entropy(logits, labels, reduction="none")


def make_case(*, num_subcenters=1, bias=False, normalize=True, num_classes=23, batch=9, dim=6, chunk_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    head = ClassCentreHead(embedding_dim=dim, num_classes=num_classes, num_subcenters=num_subcenters,
                           normalize_weight=normalize, bias=bias, chunk_size=chunk_size).double()
    with torch.no_grad():
        head.weight.normal_(generator=generator)
        if bias:
            head.bias.normal_(generator=generator)
    inputs = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=1)
    inputs.requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    labels[1] = labels[0]  # repeated classes accumulate into the same centre
    row_scale = (1.0 + 3.0 * torch.rand(batch, generator=generator, dtype=torch.float64)).requires_grad_(True)
    return head, inputs, labels, row_scale


def parameters(head):
    return [head.weight] + ([head.bias] if head.bias is not None else [])


CASES = [dict(), dict(num_subcenters=3), dict(bias=True, normalize=False), dict(num_subcenters=2, bias=True),
         dict(chunk_size=1), dict(chunk_size=1000)]


@pytest.mark.parametrize("case", CASES)
def test_chunked_equals_unchunked_values_and_gradients(case):
    head, inputs, labels, row_scale = make_case(**case)
    upstream = torch.randn(inputs.shape[0], dtype=torch.float64)
    ours = head(inputs, labels, row_scale=row_scale, margin=arcface).losses
    grads = torch.autograd.grad(ours, [inputs, row_scale] + parameters(head), upstream)
    expected = reference_losses(inputs, labels, head.weight, head.bias, row_scale, arcface, head.num_subcenters,
                                head.normalize_weight)
    expected_grads = torch.autograd.grad(expected, [inputs, row_scale] + parameters(head), upstream)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", [dict(), dict(num_subcenters=2, bias=True)])
def test_gradcheck_chunked_function(case):
    head, inputs, labels, row_scale = make_case(num_classes=4, batch=3, dim=3, chunk_size=2, **case)
    bias = head.bias if head.bias is not None else torch.zeros(4, dtype=torch.float64, requires_grad=True)

    def run(inputs, row_scale, weight, bias_values):
        state = {"weight": weight, **({"bias": bias_values} if head.bias is not None else {})}
        return torch.func.functional_call(head, state, (inputs, labels),
                                          {"row_scale": row_scale, "margin": lambda c, y: sphere_psi(c, 2)}).losses

    assert torch.autograd.gradcheck(run, (inputs, row_scale, head.weight, bias))


def test_sampled_denominator_equals_reference_and_keeps_every_positive():
    torch.manual_seed(0)
    head, inputs, labels, row_scale = make_case(num_classes=40, batch=8)
    head.head, head.sample_rate = "sampled", 0.25
    class_index = head.sample_classes(labels)
    assert set(labels.tolist()) <= set(class_index.tolist())
    assert torch.equal(class_index, class_index.sort().values)
    assert class_index.numel() == max(10, labels.unique().numel())
    ours = head(inputs, labels, row_scale=row_scale, margin=arcface, class_index=class_index).losses
    expected = reference_losses(inputs, labels, head.weight, None, row_scale, arcface, 1, True, class_index)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    ours.sum().backward()
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[class_index] = False
    assert torch.count_nonzero(head.weight.grad[untouched]) == 0
    assert torch.count_nonzero(head.weight.grad[class_index]) > 0


@pytest.mark.parametrize("case", [dict(num_subcenters=3), dict(num_subcenters=2, bias=True),
                                  dict(bias=True, normalize=False)])
def test_sampled_denominator_gradients_equal_reference(case):
    # Sub-centre rows are visited sub-centre-major inside a chunk and written back by row id.
    torch.manual_seed(1)
    head, inputs, labels, row_scale = make_case(num_classes=31, batch=8, chunk_size=3, **case)
    head.head, head.sample_rate = "sampled", 0.4
    class_index = head.sample_classes(labels)
    upstream = torch.randn(inputs.shape[0], dtype=torch.float64)
    ours = head(inputs, labels, row_scale=row_scale, margin=arcface, class_index=class_index).losses
    grads = torch.autograd.grad(ours, [inputs, row_scale] + parameters(head), upstream)
    expected = reference_losses(inputs, labels, head.weight, head.bias, row_scale, arcface, head.num_subcenters,
                                head.normalize_weight, class_index)
    expected_grads = torch.autograd.grad(expected, [inputs, row_scale] + parameters(head), upstream)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("num_subcenters", [1, 3])
def test_float32_head_matches_float64_reference(num_subcenters):
    # float32 takes the in-place weight-gradient path and base-2 exponentials at realistic scales.
    head, inputs, labels, _ = make_case(num_subcenters=num_subcenters, num_classes=50, batch=16, dim=32,
                                        chunk_size=7)
    head32 = head.float()
    inputs32 = inputs.detach().float().requires_grad_(True)
    ours = head32(inputs32, labels, row_scale=30.0, margin=arcface).losses
    ours.sum().backward()
    weight64 = head.weight.detach().double().requires_grad_(True)
    inputs64 = inputs.detach().double().requires_grad_(True)
    expected = reference_losses(inputs64, labels, weight64, None, torch.full((16,), 30.0, dtype=torch.float64),
                                arcface, num_subcenters, True)
    expected.sum().backward()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    # float32 rounding (products of norm-30 logits) reaches ~3e-5 here, as it did with base-e exponentials.
    torch.testing.assert_close(head32.weight.grad.double(), weight64.grad, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(inputs32.grad.double(), inputs64.grad, rtol=1e-4, atol=1e-4)


def test_sampled_head_draws_fresh_classes_in_training_only():
    head, inputs, labels, _ = make_case(num_classes=400, batch=8, chunk_size=64)
    head.head, head.sample_rate = "sampled", 0.05
    for seed in range(5):
        torch.manual_seed(seed)
        index = head.sample_classes(labels)
        assert index.numel() == 20 and set(labels.tolist()) <= set(index.tolist())
    head.eval()
    full = head(inputs, labels, row_scale=2.0, margin=arcface).losses
    expected = reference_losses(inputs, labels, head.weight, None, torch.full((8,), 2.0, dtype=torch.float64),
                                arcface, 1, True)
    torch.testing.assert_close(full, expected)


def test_class_index_missing_a_label_is_an_error():
    head, inputs, labels, _ = make_case()
    others = torch.tensor(sorted(set(range(23)) - {int(labels[0])}))
    with pytest.raises(ValueError, match="class_index must contain every label"):
        head(inputs, labels, class_index=others)


def test_underflowing_rows_are_recomputed_exactly():
    # Every non-target centre points away from the sample: with s = 64 all exp(s cos - s) underflow in
    # float32, and the target sits at theta ~ pi so those tiny terms decide the loss.
    dim, num_classes = 4, 6
    head = ClassCentreHead(embedding_dim=dim, num_classes=num_classes, chunk_size=2)
    direction = F.normalize(torch.tensor([[1.0, 0.2, -0.1, 0.3]]), dim=1)
    with torch.no_grad():
        head.weight.copy_(-direction + 0.05 * torch.randn(num_classes, dim))
    labels = torch.tensor([2])
    ours = head(direction, labels, row_scale=64.0, margin=arcface).losses
    expected = reference_losses(direction.double(), labels, head.weight.double(), None,
                                torch.tensor([64.0], dtype=torch.float64), arcface, 1, True)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    rest = head.nontarget_logsumexp(direction, labels, row_scale=64.0)
    assert rest.item() < -40  # far below the bound 64, recomputed instead of -inf


def test_float64_inputs_with_float32_centres_keep_each_dtype():
    head, inputs, labels, row_scale = make_case()
    head.float()
    losses = head(inputs, labels, row_scale=row_scale, margin=arcface).losses
    assert losses.dtype == torch.float64
    losses.sum().backward()
    assert head.weight.grad.dtype == torch.float32 and inputs.grad.dtype == torch.float64


def test_logits_and_target_cosines():
    head, inputs, labels, _ = make_case(num_subcenters=3, bias=True)
    logits = head.logits(inputs, row_scale=3.0)
    cosines = (inputs @ F.normalize(head.weight, dim=1).T).view(inputs.shape[0], -1, 3).amax(dim=2)
    torch.testing.assert_close(logits, 3.0 * cosines + head.bias)
    torch.testing.assert_close(head.target_cosines(inputs, labels), cosines[torch.arange(9), labels])
    logits.sum().backward()  # differentiable for whoever needs it
    assert inputs.grad is not None


def test_nontarget_logsumexp_matches_reference():
    head, inputs, labels, _ = make_case(num_subcenters=2)
    cosines = (inputs @ F.normalize(head.weight, dim=1).T).view(inputs.shape[0], -1, 2).amax(dim=2)
    logits = (5.0 * cosines).index_put((torch.arange(9), labels), torch.tensor(-math.inf, dtype=torch.float64))
    torch.testing.assert_close(head.nontarget_logsumexp(inputs, labels, row_scale=5.0), torch.logsumexp(logits, 1))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        ClassCentreHead(embedding_dim=4, num_classes=0)
    with pytest.raises(ValueError, match="head must be one of"):
        ClassCentreHead(embedding_dim=4, num_classes=3, head="sharded")
    with pytest.raises(ValueError, match=r"^sample_rate must be a finite number in \(0, 1\], got 1.5$"):
        ClassCentreHead(embedding_dim=4, num_classes=3, sample_rate=1.5)
    head = ClassCentreHead(embedding_dim=4, num_classes=3)
    with pytest.raises(ValueError, match=r"^embeddings must be a matrix of shape \(N, 4\), got shape \(2, 5\)$"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=3\)"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_batch_by_classes_tensor_in_forward_or_backward():
    batch, dim, num_classes = 64, 8, 4096
    head = ClassCentreHead(embedding_dim=dim, num_classes=num_classes, num_subcenters=2, chunk_size=512)
    inputs = F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch,))
    with _LargestTensor() as mode:
        head(inputs, labels, row_scale=30.0, margin=arcface).losses.mean().backward()
    # The weight gradient (C * K * D) is the largest; a (B, C) block would be 4x larger.
    assert mode.largest == head.weight.numel() < batch * num_classes


def test_adacos_scales():
    assert adacos_fixed_scale(1001) == pytest.approx(math.sqrt(2) * math.log(1000))
    with pytest.raises(ValueError, match="num_classes >= 3"):
        adacos_fixed_scale(2)
    rest = torch.tensor([3.0, 4.0, 5.0, 2.5], dtype=torch.float64)
    cosines = torch.tensor([0.9, 0.5, 0.2, 0.8], dtype=torch.float64)
    b_avg = np.mean(np.exp(rest.numpy()))
    # torch's median of an even count is the lower middle value
    lower_median = np.sort(np.arccos(cosines.numpy()))[1]
    assert adacos_dynamic_scale(rest, cosines) == pytest.approx(np.log(b_avg) / np.cos(min(math.pi / 4, lower_median)))
    # a median angle above pi/4 is capped at pi/4
    wide = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    assert adacos_dynamic_scale(rest[:3], wide) == pytest.approx(
        np.log(np.mean(np.exp(rest[:3].numpy()))) / np.cos(math.pi / 4))


def test_half_precision_inputs_are_computed_in_float32():
    head, inputs, labels, _ = make_case()
    head.float()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = head(inputs.detach().bfloat16().requires_grad_(True), labels, row_scale=64.0, margin=arcface).losses
    expected = reference_losses(inputs.detach().bfloat16().double(), labels, head.weight.double(), None,
                                torch.full((9,), 64.0, dtype=torch.float64), arcface, 1, True)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses.double(), expected, rtol=1e-4, atol=1e-4)
    losses.sum().backward()
    assert torch.isfinite(head.weight.grad).all()
