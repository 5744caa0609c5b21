r"""Class-centre heads for softmax-style losses: the (sub-)centre matrix, full or sampled (PartialFC),
and a chunked cross-entropy that never holds a (B, num_classes) tensor, so 1,000,000 classes fit.

The head computes, per sample ``i`` with label ``y_i``, scale ``s_i`` and a margin transform ``psi``
(``deepmetric.losses.margins``), the cross-entropy

.. math::
    \ell_i = \log\Big(e^{t_i} + \sum_{j \ne y_i} e^{s_i \langle x_i, \hat w_j \rangle + b_j}\Big) - t_i,
    \qquad t_i = s_i\, \psi(\langle x_i, \hat w_{y_i} \rangle) + b_{y_i},

where ``\hat w_j`` is centre ``j`` (L2-normalised when ``normalize_weight``; with ``K`` sub-centres the
largest of the ``K`` products is used, Deng et al. 2020). The forward pass streams over chunks of
classes, normalising each chunk's centres on the fly and summing ``exp(logit - bound)``; the backward
pass recomputes each chunk's logits (four matrix products in all, instead of three for an
implementation that keeps the (B, C) probabilities) and writes that chunk's rows of the weight
gradient. The margin touches only the ``B`` target values, and its derivative
is taken exactly with autograd on those ``B`` values.

The same engine serves a head whose classes are split across processes
(``deepmetric.losses.partial_fc``): each process streams over its own classes, and a ``Reductions``
object sums the partial denominators (and takes the maximum of the log-sum-exp bound) across them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from deepmetric.validation import check_bool, check_choice, check_embeddings, check_positive_int, check_probability

MarginFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(target_cosines (B,), labels (B,)) -> margin-penalised target values (B,)``."""

HEADS = ("full", "sampled")

# Elements of one (B, chunk * K) logit block: 1 Mi floats = 4 MiB in float32, so the block that the
# matrix product writes is still in the last-level cache when the exponential and the sums read it
# (measured at B = 256, C = 1M: 4 MiB blocks make a step ~20% faster than 16 MiB blocks), and below
# glibc's 32 MiB mmap threshold so each block reuses heap memory instead of page-faulting.
_CHUNK_ELEMENTS = 1 << 20
# Blocks are computed in base 2: the inputs side of the product carries a factor log2(e), so
# exp2(block) = exp(logits). exp2 costs a third of exp on CPUs (measured 3.5 vs 1.2 G/s per core) and
# the factor rides along with the product for free.
_LOG2E = 1.0 / math.log(2.0)
_NORM_EPS = 1e-12
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def identity_margin(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """No margin: the target logit is the plain (scaled) product."""
    return cosine


def default_chunk_size(batch_size: int, num_subcenters: int = 1) -> int:
    """Classes per chunk so that a (B, chunk * K) block holds about 1 Mi elements."""
    return max(256, _CHUNK_ELEMENTS // max(1, batch_size * num_subcenters))


class Reductions:
    """Collective reductions over the processes that together hold a softmax's classes, in place.

    This base class is one process (identities); ``deepmetric.losses.partial_fc`` all-reduces."""

    def maximum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def logsumexp_(self, values: torch.Tensor) -> torch.Tensor:
        """``log sum_ranks exp(values)`` element-wise (``-inf`` where every rank has ``-inf``)."""
        return values


LOCAL = Reductions()


@dataclass(frozen=True)
class ShardTargets:
    """Which samples' target classes this process holds, for a head whose classes are split across
    processes: ``owned`` (B,) bool; ``labels`` (B,) the global class ids (margins see these; the
    engine's own ``labels`` are then row positions in the local shard, any valid one where not owned);
    ``reductions`` combine the processes' partial results."""

    owned: torch.Tensor
    labels: torch.Tensor
    reductions: Reductions


@dataclass
class _Chunk:
    """One chunk of classes; its rows in the head's order (sub-centres of a class adjacent). Blocks are
    computed transposed, (n * K, B), so the largest of a class's K sub-centres is an element-wise
    maximum of K strided (n, B) slabs and the weight gradient is written straight into its rows."""

    start: int                      # first column (position among the head's classes)
    stop: int
    row_ids: torch.Tensor | None    # rows of the weight matrix (None: the contiguous slice)
    augmented: torch.Tensor         # (n * K, D + extra): [unit centre | bias | 1], see _augmented_inputs
    centres: torch.Tensor           # (n * K, D) view of the (unit) centres inside `augmented`
    inv_norms: torch.Tensor | None  # (n * K,) 1 / ||w|| of the rows (None: not normalised)


def _subcentre_rows(classes: torch.Tensor, num_subcenters: int) -> torch.Tensor:
    if num_subcenters == 1:
        return classes
    offsets = torch.arange(num_subcenters, device=classes.device)
    return (classes[:, None] * num_subcenters + offsets).reshape(-1)


def _inverse_norms(rows: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(rows, dim=-1).clamp_min(_NORM_EPS).reciprocal()


def _normalise_rows(rows: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not normalize:
        return rows, None
    inv_norms = _inverse_norms(rows)
    return rows * inv_norms.unsqueeze(-1), inv_norms


def _column_inverse_norms(weight: torch.Tensor, class_index: torch.Tensor | None, num_subcenters: int,
                          dtype: torch.dtype) -> torch.Tensor:
    """``1 / ||w||`` of the head's rows in column order (the sampled rows only for a sampled head)."""
    rows = weight if class_index is None else weight.index_select(0, _subcentre_rows(class_index, num_subcenters))
    return _inverse_norms(rows).to(dtype)


def _augmented_inputs(scaled: torch.Tensor, has_bias: bool, shift: torch.Tensor | None,
                      factor: float = 1.0) -> torch.Tensor:
    """``factor * [s_i x_i | 1 | -shift_i]`` so that one matrix product with ``[w_j | b_j | 1]`` gives
    ``factor * (s_i <x_i, w_j> + b_j - shift_i)``: the bias, the log-sum-exp shift and the change to
    base 2 (``factor = log2(e)``) cost no pass over the block."""
    batch, dim = scaled.shape
    augmented = scaled.new_empty(batch, dim + 1 + int(has_bias))
    augmented[:, :dim] = scaled if factor == 1.0 else scaled * factor
    if has_bias:
        augmented[:, dim] = factor
    augmented[:, -1] = 0.0 if shift is None else -factor * shift
    return augmented


def _num_columns(weight: torch.Tensor, class_index: torch.Tensor | None, num_subcenters: int) -> int:
    return weight.shape[0] // num_subcenters if class_index is None else class_index.numel()


def _chunks(weight: torch.Tensor, bias: torch.Tensor | None, class_index: torch.Tensor | None,
            num_subcenters: int, chunk_size: int, dtype: torch.dtype,
            inv_norms: torch.Tensor | None) -> Iterator[_Chunk]:
    """Chunks of ``chunk_size`` classes, centres scaled by ``inv_norms`` (column order; None: raw).

    Without autograd one buffer serves every chunk, so a step costs a handful of kernels per chunk."""
    k = num_subcenters
    dim = weight.shape[1]
    width = dim + 1 + int(bias is not None)
    num_columns = _num_columns(weight, class_index, k)
    reuse = not torch.is_grad_enabled()  # logits() with autograd needs a fresh tensor per chunk
    buffer = None
    for start in range(0, num_columns, chunk_size):
        stop = min(start + chunk_size, num_columns)
        if class_index is None:
            row_ids = None
            rows = weight[start * k:stop * k]
            chunk_bias = None if bias is None else bias[start:stop]
        else:
            classes = class_index[start:stop]
            row_ids = _subcentre_rows(classes, k)
            rows = weight.index_select(0, row_ids)
            chunk_bias = None if bias is None else bias.index_select(0, classes)
        chunk_inv = None if inv_norms is None else inv_norms[start * k:stop * k]
        if buffer is None or not reuse:
            buffer = torch.empty(min(chunk_size, num_columns) * k, width, dtype=dtype, device=weight.device)
            buffer[:, -1] = 1.0
        augmented = buffer[:rows.shape[0]]
        if chunk_inv is None:
            augmented[:, :dim] = rows
        elif reuse:
            torch.mul(rows, chunk_inv.unsqueeze(1), out=augmented[:, :dim])
        else:
            augmented[:, :dim] = rows * chunk_inv.unsqueeze(1)
        if chunk_bias is not None:
            augmented[:, dim] = chunk_bias.repeat_interleave(k) if k > 1 else chunk_bias
        yield _Chunk(start, stop, row_ids, augmented, augmented[:, :dim], chunk_inv)


class _TargetCells:
    """The target cell ``(i, target_columns[i])`` of every row, grouped by chunk with one host sync, so
    masking a block costs a single indexed write. A negative column means the target is not among
    these columns (it is held by another process)."""

    def __init__(self, target_columns: torch.Tensor, chunk_size: int) -> None:
        order = torch.argsort(target_columns)
        columns = target_columns[order]
        present = int(torch.searchsorted(columns, 0))  # negative columns sort first
        order, columns = order[present:], columns[present:]
        chunk_ids = torch.div(columns, chunk_size, rounding_mode="floor")
        counts = torch.bincount(chunk_ids).tolist()
        self.rows = order.split(counts)
        self.columns = (columns - chunk_ids * chunk_size).split(counts)
        self.chunk_size = chunk_size

    def fill(self, block: torch.Tensor, start: int, value: float) -> None:
        position = start // self.chunk_size
        if position < len(self.rows) and self.rows[position].numel():
            block[self.rows[position], self.columns[position]] = value


def _project_out_norms(grad_unit: torch.Tensor, unit: torch.Tensor, inv_norms: torch.Tensor) -> torch.Tensor:
    """In place: the gradient w.r.t. rows ``w`` from the gradient ``g`` w.r.t. their unit vectors
    ``u = w / ||w||``: ``(g - u <g, u>) / ||w||``. Applied to each chunk's rows while they are in cache."""
    radial = torch.linalg.vecdot(grad_unit, unit).unsqueeze(1)
    return grad_unit.addcmul_(unit, radial, value=-1.0).mul_(inv_norms.unsqueeze(1))


def _target_products(inputs: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, num_subcenters: int,
                     normalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Products with each sample's own class centre: values (B,), best sub-centre (B,), that (unit, when
    normalised) centre (B, D) and its ``1 / ||w||`` (B,) (None when not normalised)."""
    rows = weight.view(-1, num_subcenters, weight.shape[1])[labels].to(inputs.dtype)
    centres, inv_norms = _normalise_rows(rows, normalize)
    values, best = torch.einsum("bd,bkd->bk", inputs, centres).max(dim=1)
    picked = torch.arange(labels.numel(), device=labels.device)
    return values, best, centres[picked, best], None if inv_norms is None else inv_norms[picked, best]


def _block_t(augmented_inputs: torch.Tensor, chunk: _Chunk, num_subcenters: int) -> torch.Tensor:
    """(n, B) logits minus the shift for one chunk, transposed (largest sub-centre; see _Chunk)."""
    products = chunk.augmented @ augmented_inputs.T
    if num_subcenters == 1:
        return products
    return products.view(-1, num_subcenters, products.shape[1]).amax(dim=1)


def _logsumexp_bound(inputs: torch.Tensor, row_scale: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None, normalize: bool, reductions: Reductions = LOCAL) -> torch.Tensor:
    """An upper bound of every logit ``s_i <x_i, w_j> + b_j`` per row (Cauchy-Schwarz), over every
    process's classes (the largest centre norm and bias are all-reduced with a maximum)."""
    if normalize and bias is None:
        return row_scale.abs() * torch.linalg.vector_norm(inputs, dim=1)
    largest = inputs.new_full((2,), -math.inf)
    if weight.shape[0]:
        largest[0] = 1.0 if normalize else torch.linalg.vector_norm(weight.detach(), dim=1).max()
        largest[1] = 0.0 if bias is None else bias.detach().max()
    max_norm, max_bias = reductions.maximum_(largest).tolist()
    bound = row_scale.abs() * torch.linalg.vector_norm(inputs, dim=1) * max_norm
    return bound if bias is None else bound + max_bias


def _exact_nontarget_logsumexp(scaled: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               target_columns: torch.Tensor, class_index: torch.Tensor | None, num_subcenters: int,
                               chunk_size: int, inv_norms: torch.Tensor | None) -> torch.Tensor:
    augmented = _augmented_inputs(scaled, bias is not None, None)
    total = scaled.new_full((scaled.shape[0],), -math.inf)
    targets = _TargetCells(target_columns, chunk_size)
    for chunk in _chunks(weight, bias, class_index, num_subcenters, chunk_size, scaled.dtype, inv_norms):
        logits = _block_t(augmented, chunk, num_subcenters).T
        targets.fill(logits, chunk.start, -math.inf)
        total = torch.logaddexp(total, torch.logsumexp(logits, dim=1))
    return total


def nontarget_logsumexp(inputs: torch.Tensor, row_scale: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None, target_columns: torch.Tensor,
                        class_index: torch.Tensor | None, num_subcenters: int, chunk_size: int,
                        normalize_weight: bool, reductions: Reductions = LOCAL
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log sum_{j != y_i} exp(s_i <x_i, w_j> + b_j)`` (B,) streamed over class chunks, and the inverse
    centre norms in column order (None when not normalised), reused by the backward pass.

    Each block is exponentiated after subtracting a per-row upper bound of its logits (folded into the
    matrix product), so nothing overflows and no per-block maximum is needed. Rows whose sum could
    have lost precision to underflow (all logits far below the bound) are recomputed with an exact
    streaming log-sum-exp. ``reductions`` adds up the sums of every process holding part of the
    classes (the bound is shared, so the partial sums add exactly), and likewise the exact fallback.
    """
    k = num_subcenters
    inv_norms = _column_inverse_norms(weight, class_index, k, inputs.dtype) if normalize_weight else None
    scaled = inputs * row_scale.unsqueeze(1)
    shift = _logsumexp_bound(inputs, row_scale, weight, bias, normalize_weight, reductions)
    augmented = _augmented_inputs(scaled, bias is not None, shift, _LOG2E)
    num_columns = _num_columns(weight, class_index, k)
    partial_sums = inputs.new_zeros(-(-num_columns // chunk_size), inputs.shape[0])
    targets = _TargetCells(target_columns, chunk_size)
    for position, chunk in enumerate(_chunks(weight, bias, class_index, k, chunk_size, inputs.dtype, inv_norms)):
        block = _block_t(augmented, chunk, k)
        block.exp2_()
        targets.fill(block.T, chunk.start, 0.0)
        torch.sum(block, dim=0, out=partial_sums[position])
    sums = partial_sums.sum(dim=0)
    if reductions is not LOCAL:  # one all-reduce gives the global sums and the global column count
        counted = reductions.sum_(torch.cat([sums, sums.new_full((1,), num_columns)]))
        sums, num_columns = counted[:-1], int(counted[-1])
    total = sums.log_().add_(shift)
    # Terms below exp(log(tiny)) flush to zero; with N of them lost the relative error of the sum
    # stays below eps as long as log(sum) > log(tiny) + log(N) - log(eps).
    finfo = torch.finfo(inputs.dtype)
    floor = math.log(finfo.tiny) + math.log(max(num_columns, 2)) - math.log(finfo.eps)
    suspect = (total - shift < floor).nonzero().flatten()
    if suspect.numel():  # the same rows on every process: `total` is already global
        total[suspect] = reductions.logsumexp_(_exact_nontarget_logsumexp(
            scaled[suspect], weight, bias, target_columns[suspect], class_index, k, chunk_size, inv_norms))
    return total, inv_norms


class _ChunkedMarginCrossEntropy(torch.autograd.Function):
    """Per-sample margin cross-entropy over chunks of classes (see the module docstring).

    Returns ``(losses (B,), nontarget_logsumexp (B,), target_cosines (B,))``; only ``losses`` is
    differentiable.
    """

    @staticmethod
    def forward(ctx, inputs, row_scale, weight, bias, labels, target_columns, class_index, margin_fn,
                num_subcenters, chunk_size, normalize_weight, shard=None, sparse_gradient=False):
        reductions = LOCAL if shard is None else shard.reductions
        rest, inv_norms = nontarget_logsumexp(inputs, row_scale, weight, bias, target_columns, class_index,
                                              num_subcenters, chunk_size, normalize_weight, reductions)
        target_cos = _target_products(inputs, weight, labels, num_subcenters, normalize_weight)[0]
        target_bias = None if bias is None else bias[labels].to(inputs.dtype)
        if shard is not None:  # each target is held by one process: zero elsewhere, then sum
            parts = torch.stack([target_cos, target_cos if target_bias is None else target_bias])
            parts = reductions.sum_(parts * shard.owned)
            target_cos, target_bias = parts[0], None if bias is None else parts[1]
        target_logits = row_scale * margin_fn(target_cos, labels if shard is None else shard.labels)
        if target_bias is not None:
            target_logits = target_logits + target_bias
        log_partition = torch.logaddexp(rest, target_logits)
        ctx.save_for_backward(inputs, row_scale, weight, bias, labels, target_columns, class_index,
                              log_partition, target_logits, target_cos, inv_norms)
        ctx.margin_fn = margin_fn
        ctx.shard = shard
        ctx.settings = (num_subcenters, chunk_size, normalize_weight, sparse_gradient and class_index is not None)
        ctx.mark_non_differentiable(rest, target_cos)
        return log_partition - target_logits, rest, target_cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses, _grad_rest, _grad_cos):
        with torch.autocast(device_type=grad_losses.device.type, enabled=False):
            return _ChunkedMarginCrossEntropy._backward(ctx, grad_losses)

    @staticmethod
    def _backward(ctx, grad_losses):
        (inputs, row_scale, weight, bias, labels, target_columns, class_index, log_partition, target_logits,
         target_cos, inv_norms) = ctx.saved_tensors
        num_subcenters, chunk_size, normalize, sparse = ctx.settings
        need_inputs, need_scale, need_weight, need_bias = ctx.needs_input_grad[:4]
        k = num_subcenters
        batch = inputs.shape[0]
        grad_losses = grad_losses.to(inputs.dtype)
        scaled = inputs * row_scale.unsqueeze(1)
        # exp2(block) is then exactly p_ij = exp(logit_ij - log_partition_i).
        augmented = _augmented_inputs(scaled, bias is not None, log_partition, _LOG2E)
        # G_ij = g_i p_ij. Folding g_i into the rows of `scaled` (weight gradient) and applying it to
        # the accumulated sum afterwards (input gradient) saves a pass over every (B, n) block.
        scaled_weighted = scaled * grad_losses.unsqueeze(1)
        sum_p_centres = torch.zeros_like(inputs)
        full = class_index is None
        # Gradient w.r.t. the unit centres, turned into the gradient w.r.t. the raw rows chunk by chunk.
        grad_weight = grad_bias = None
        if need_weight and sparse:  # the kept rows only, in column order; a sparse tensor at the end
            grad_weight = weight.new_zeros(class_index.numel() * k, weight.shape[1])
        elif need_weight:
            grad_weight = torch.empty_like(weight) if full else torch.zeros_like(weight)
        if need_bias:
            grad_bias = torch.empty_like(bias) if full else torch.zeros_like(bias)
        compact = full or sparse  # rows of grad_weight in column order
        write_in_place = compact and weight.dtype == inputs.dtype
        targets = _TargetCells(target_columns, chunk_size)
        for chunk in _chunks(weight, bias, class_index, k, chunk_size, inputs.dtype, inv_norms):
            products = chunk.augmented @ augmented.T  # (n * K, B), see _Chunk
            if k > 1:
                slabs = products.view(-1, k, batch)
                probs = slabs.amax(dim=1)
                # 1 at the winning sub-centre of each class, 0 elsewhere, in the product buffer.
                slabs.eq_(probs.unsqueeze(1))
            else:
                probs = products
            probs.exp2_()
            targets.fill(probs.T, chunk.start, 0.0)
            # Only the winning sub-centre of each class receives gradient (exactly tied sub-centres each
            # receive it).
            probs_rows = slabs.mul_(probs.unsqueeze(1)).view(-1, batch) if k > 1 else probs
            sum_p_centres.addmm_(probs_rows.T, chunk.centres)
            if need_weight:
                rows = slice(chunk.start * k, chunk.stop * k)
                if write_in_place:
                    grad_rows = torch.mm(probs_rows, scaled_weighted, out=grad_weight[rows])
                else:
                    grad_rows = probs_rows @ scaled_weighted
                if normalize:
                    _project_out_norms(grad_rows, chunk.centres, chunk.inv_norms)
                if not compact:
                    grad_weight.index_copy_(0, chunk.row_ids, grad_rows.to(weight.dtype))
                elif not write_in_place:
                    grad_weight[rows] = grad_rows
            if need_bias:
                grad_rows_bias = (probs @ grad_losses).to(bias.dtype)
                if full:
                    grad_bias[chunk.start:chunk.stop] = grad_rows_bias
                else:
                    grad_bias.index_copy_(0, class_index[chunk.start:chunk.stop], grad_rows_bias)

        # The target column: d loss / d t = g (p_target - 1); t = s psi(c) + b.
        grad_target = grad_losses * (torch.exp(target_logits - log_partition) - 1.0)
        with torch.enable_grad():
            cosine = target_cos.detach().requires_grad_(True)
            margin_values = ctx.margin_fn(cosine, labels if ctx.shard is None else ctx.shard.labels)
            grad_cos = torch.autograd.grad(margin_values, cosine, grad_target * row_scale, allow_unused=True)[0]
        if grad_cos is None:
            grad_cos = torch.zeros_like(target_cos)
        if ctx.shard is not None:
            # The target terms belong to the process holding the target; the others' shares add up
            # to the gradient of the inputs (and scales) when the processes' gradients are summed.
            owned = ctx.shard.owned.to(grad_cos.dtype)
            grad_cos, grad_target = grad_cos * owned, grad_target * owned
        _, target_sub, target_centres, target_inv = _target_products(inputs, weight, labels, k, normalize)

        grad_inputs = grad_scale = None
        if need_inputs:
            grad_inputs = (sum_p_centres * (grad_losses * row_scale).unsqueeze(1)
                           + grad_cos.unsqueeze(1) * target_centres)
        if need_scale:
            grad_scale = grad_losses * (sum_p_centres * inputs).sum(1) + grad_target * margin_values.detach()
        if need_weight:
            target_rows = labels * k + target_sub
            grad_target_rows = grad_cos.unsqueeze(1) * inputs
            if normalize:
                _project_out_norms(grad_target_rows, target_centres, target_inv)
            if sparse:  # not-held targets (column -1) carry a zero gradient
                target_rows = target_columns.clamp(min=0) * k + target_sub
            grad_weight.index_add_(0, target_rows, grad_target_rows.to(weight.dtype))
            if sparse:
                rows = _subcentre_rows(class_index, k).unsqueeze(0)
                grad_weight = torch.sparse_coo_tensor(rows, grad_weight, weight.shape, is_coalesced=True,
                                                      check_invariants=False)
        if need_bias:
            grad_bias.index_add_(0, labels, grad_target.to(bias.dtype))
        return (grad_inputs, grad_scale, grad_weight, grad_bias) + (None,) * 9


@dataclass(frozen=True)
class HeadOutput:
    """What a head returns for a batch: per-sample ``losses`` (B,) (differentiable), the log-sum-exp
    over the non-target classes ``nontarget_logsumexp`` (B,) and the target ``target_cosines`` (B,)
    (both detached; AdaCos and the statistics use them)."""

    losses: torch.Tensor
    nontarget_logsumexp: torch.Tensor
    target_cosines: torch.Tensor


class ClassCentreHead(nn.Module):
    r"""The class-centre matrix of a softmax-style loss and its chunked cross-entropy.

    ``weight`` has shape ``(num_classes * num_subcenters, embedding_dim)``; the sub-centres of class
    ``c`` are rows ``c*K .. c*K + K - 1``.

    Heads:

    - ``"full"``: every class is in the softmax denominator.
    - ``"sampled"`` (PartialFC, An et al. 2021): while training, the denominator uses every class that
      occurs in the batch plus uniformly drawn other classes, ``max(ceil(sample_rate * C), #positives)``
      in all (uses ``torch``'s global RNG, so ``torch.manual_seed`` makes it repeatable). Rows not drawn
      get a zero gradient (with plain SGD they are untouched; optimizers with momentum or weight decay
      still move them). In ``eval()`` mode the head is full.

    Args:
        embedding_dim: ``D``.
        num_classes: ``C``.
        num_subcenters: ``K`` centres per class, logits take the largest product.
        normalize_weight: L2-normalise each centre (cosine heads); False for the plain linear softmax.
        bias: learn a per-class bias (plain softmax).
        head: ``"full"`` or ``"sampled"``.
        sample_rate: fraction of classes in the sampled denominator, in (0, 1].
        chunk_size: classes per chunk; None picks ~4 Mi logits per chunk.
        sparse_gradient: when the denominator is a sample, give ``weight`` a sparse gradient holding only
            the sampled rows (``torch.optim.SGD`` and ``SparseAdam`` take it): the rows not drawn are then
            untouched by any optimizer, and no dense (C * K, D) gradient is allocated.
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, num_subcenters: int = 1,
                 normalize_weight: bool = True, bias: bool = False, head: str = "full",
                 sample_rate: float = 0.1, chunk_size: int | None = None, sparse_gradient: bool = False) -> None:
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("num_classes", num_classes),
                            ("num_subcenters", num_subcenters)):
            check_positive_int(name, value)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.num_subcenters = num_subcenters
        self.normalize_weight = normalize_weight
        self.head = check_choice("head", head, HEADS)
        self.sample_rate = check_probability("sample_rate", sample_rate, allow_zero=False)
        self.chunk_size = check_positive_int("chunk_size", chunk_size, allow_none=True)
        self.sparse_gradient = check_bool("sparse_gradient", sparse_gradient)
        self.weight, self.bias = self._parameters_for(num_classes, bias)

    def _parameters_for(self, num_classes: int, bias: bool) -> tuple[nn.Parameter, nn.Parameter | None]:
        """The centre matrix (and bias) this process holds: here all ``num_classes`` classes."""
        # uniform_ in place: a 1M x 128 matrix initialises in well under a second, with no temporary.
        bound = 1.0 / math.sqrt(self.embedding_dim)
        weight = torch.empty(num_classes * self.num_subcenters, self.embedding_dim).uniform_(-bound, bound)
        return nn.Parameter(weight), nn.Parameter(torch.zeros(num_classes)) if bias else None

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
                f"num_subcenters={self.num_subcenters}, normalize_weight={self.normalize_weight}, "
                f"bias={self.bias is not None}, head={self.head!r}, sample_rate={self.sample_rate}")

    def check_labels(self, labels: torch.Tensor) -> None:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, num_classes={self.num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")

    def sample_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """Sorted class ids for the sampled denominator: every label of the batch plus random others."""
        num_sampled = max(math.ceil(self.sample_rate * self.num_classes), int(torch.unique(labels).numel()))
        if num_sampled >= self.num_classes:
            return torch.arange(self.num_classes, device=labels.device)
        scores = torch.rand(self.num_classes, device=labels.device)
        scores[labels] = 2.0  # positives outrank every random score in [0, 1)
        return torch.topk(scores, num_sampled, sorted=False).indices.sort().values

    def _resolve_chunk(self, batch_size: int) -> int:
        return self.chunk_size or default_chunk_size(batch_size, self.num_subcenters)

    def _check(self, inputs: torch.Tensor, row_scale: torch.Tensor | float) -> torch.Tensor:
        check_embeddings("embeddings", inputs, dim=self.embedding_dim, finite=False, require_tensor=True)
        if isinstance(row_scale, torch.Tensor):
            return row_scale.to(inputs.dtype).expand(inputs.shape[0])
        return inputs.new_full((inputs.shape[0],), float(row_scale))

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, *, row_scale: torch.Tensor | float = 1.0,
                margin: MarginFunction = identity_margin, class_index: torch.Tensor | None = None) -> HeadOutput:
        """Per-sample margin cross-entropy.

        Args:
            inputs: (B, D) features, already L2-normalised for cosine losses.
            labels: (B,) class ids in ``[0, num_classes)``.
            row_scale: the scale ``s`` (float) or per-sample scales (B,) (e.g. feature norms); a tensor
                that requires grad receives its gradient.
            margin: ``psi(target_cosines, labels)``, a pure function (``deepmetric.losses.margins``).
            class_index: sorted class ids forming the denominator (must contain every label); None uses
                the head's own choice (all classes, or a fresh sample when ``head="sampled"`` in training).
        """
        row_scale = self._check(inputs, row_scale)
        labels = labels.to(inputs.device).long()
        self.check_labels(labels)
        if class_index is None and self.head == "sampled" and self.training:
            class_index = self.sample_classes(labels)
        target_columns, class_index = self._columns(labels, class_index)
        return self._cross_entropy(inputs, row_scale, labels, target_columns, class_index, margin)

    def _cross_entropy(self, inputs: torch.Tensor, row_scale: torch.Tensor, labels: torch.Tensor,
                       target_columns: torch.Tensor, class_index: torch.Tensor | None, margin: MarginFunction,
                       shard: ShardTargets | None = None) -> HeadOutput:
        """The chunked margin cross-entropy over this process's centres (``labels`` are their rows)."""
        if inputs.dtype in _HALF_DTYPES:
            # exp(s cos - bound) underflows in 16-bit floats; the head always computes in >= float32.
            inputs, row_scale = inputs.float(), row_scale.float()
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            losses, rest, target_cos = _ChunkedMarginCrossEntropy.apply(
                inputs, row_scale, self.weight, self.bias, labels, target_columns, class_index, margin,
                self.num_subcenters, self._resolve_chunk(inputs.shape[0]), self.normalize_weight, shard,
                self.sparse_gradient)
        return HeadOutput(losses, rest, target_cos)

    def _columns(self, labels: torch.Tensor, class_index: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions of the labels among the denominator's classes."""
        if class_index is None:
            return labels, None
        class_index = class_index.to(labels.device).long()
        columns = torch.searchsorted(class_index, labels)
        found = class_index[columns.clamp(max=class_index.numel() - 1)] == labels
        if not bool(found.all()):
            raise ValueError("class_index must contain every label of the batch")
        return columns, class_index

    def nontarget_logsumexp(self, inputs: torch.Tensor, labels: torch.Tensor, *,
                            row_scale: torch.Tensor | float = 1.0,
                            class_index: torch.Tensor | None = None) -> torch.Tensor:
        """``log sum_{j != y_i} exp(s_i <x_i, w_j> + b_j)`` (B,), no gradient, over all classes (or the
        sorted ``class_index``)."""
        row_scale = self._check(inputs, row_scale)
        labels = labels.to(inputs.device).long()
        self.check_labels(labels)
        columns, class_index = self._columns(labels, class_index)
        with torch.no_grad():
            return nontarget_logsumexp(inputs, row_scale, self.weight, self.bias, columns, class_index,
                                       self.num_subcenters, self._resolve_chunk(inputs.shape[0]),
                                       self.normalize_weight)[0]

    def target_cosines(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``max_k <x_i, w_{y_i,k}>`` (B,) (cosines when ``inputs`` are unit vectors), no gradient."""
        labels = labels.to(inputs.device).long()
        self.check_labels(labels)
        with torch.no_grad():
            return _target_products(inputs, self.weight, labels, self.num_subcenters, self.normalize_weight)[0]

    def logits(self, inputs: torch.Tensor, *, row_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Margin-free logits ``s_i <x_i, w_j> + b_j`` (B, C) (largest sub-centre), built chunk by chunk."""
        row_scale = self._check(inputs, row_scale)
        augmented = _augmented_inputs(inputs * row_scale.unsqueeze(1), self.bias is not None, None)
        inv_norms = _inverse_norms(self.weight).to(inputs.dtype) if self.normalize_weight else None
        parts = [_block_t(augmented, chunk, self.num_subcenters).T
                 for chunk in _chunks(self.weight, self.bias, None, self.num_subcenters,
                                      self._resolve_chunk(inputs.shape[0]), inputs.dtype, inv_norms)]
        return torch.cat(parts, dim=1)

    def unit_centres(self) -> torch.Tensor:
        """The centres as unit vectors, shape (C, K, D) (no gradient)."""
        with torch.no_grad():
            return _normalise_rows(self.weight, True)[0].view(self.num_classes, self.num_subcenters, -1)


def adacos_fixed_scale(num_classes: int) -> float:
    r"""AdaCos's fixed scale ``s = sqrt(2) * log(C - 1)`` (Zhang et al., CVPR 2019, eq. 13)."""
    if num_classes < 3:
        raise ValueError(f"AdaCos needs num_classes >= 3 (log(C - 1) > 0), got {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


def adacos_dynamic_scale(nontarget_logsumexp: torch.Tensor, target_cosines: torch.Tensor) -> float:
    r"""AdaCos's dynamic scale (Zhang et al. 2019, eq. 16):
    ``s = log(B_avg) / cos(min(pi/4, theta_med))`` with
    ``B_avg = (1/N) sum_i sum_{k != y_i} exp(s_old cos theta_{i,k})`` (given as per-sample
    log-sums computed with the current scale) and ``theta_med`` the median target angle of the batch.
    """
    log_b_avg = torch.logsumexp(nontarget_logsumexp, dim=0) - math.log(nontarget_logsumexp.numel())
    median_angle = torch.acos(target_cosines.clamp(-1.0, 1.0)).median()
    return float(log_b_avg / torch.cos(torch.clamp(median_angle, max=math.pi / 4)))
