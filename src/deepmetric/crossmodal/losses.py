"""Cross-modal losses with one API: ``loss(image_embeddings (B, D), text_embeddings (T, D), image_labels (B,),
text_labels (T,))`` on unit-length rows, or an explicit ``positive_mask`` (B, T).

Image ``i`` and text ``t`` are a positive pair when they share a class label, so with many images and
texts per class every same-class pair is a positive, not only the diagonal of a paired batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.validation import check_choice, check_positive_float

MINING = ("semi_hard", "hardest", "all")


def same_label_mask(image_labels: torch.Tensor, text_labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: ``image_labels[i] == text_labels[t]``."""
    return image_labels.reshape(-1, 1) == text_labels.reshape(1, -1)


class CrossModalLoss(nn.Module):
    """Base class: checks the inputs once and passes similarities ``S = X Y^T`` (B, T) and the positive
    mask to ``compute``. Rows of ``S`` that have no positive, or no negative, are left out."""

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                image_labels: torch.Tensor | None = None, text_labels: torch.Tensor | None = None, *,
                positive_mask: torch.Tensor | None = None) -> torch.Tensor:
        for name, value in (("image_embeddings", image_embeddings), ("text_embeddings", text_embeddings)):
            if not isinstance(value, torch.Tensor) or value.dim() != 2:
                raise ValueError(f"{name} must be a 2-d tensor (N, D), got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
        if image_embeddings.shape[1] != text_embeddings.shape[1]:
            raise ValueError(f"image and text embeddings differ in size: {image_embeddings.shape[1]} vs "
                             f"{text_embeddings.shape[1]}")
        if positive_mask is None:
            if image_labels is None or text_labels is None:
                raise ValueError("pass image_labels and text_labels, or positive_mask")
            if len(image_labels) != len(image_embeddings) or len(text_labels) != len(text_embeddings):
                raise ValueError(f"labels must have one entry per row: {len(image_labels)} image labels for "
                                 f"{len(image_embeddings)} images, {len(text_labels)} text labels for "
                                 f"{len(text_embeddings)} texts")
            mask = same_label_mask(torch.as_tensor(image_labels, device=image_embeddings.device),
                                              torch.as_tensor(text_labels, device=image_embeddings.device))
        else:
            mask = torch.as_tensor(positive_mask, dtype=torch.bool, device=image_embeddings.device)
            if mask.shape != (len(image_embeddings), len(text_embeddings)):
                raise ValueError(f"positive_mask must have shape ({len(image_embeddings)}, {len(text_embeddings)}), "
                                 f"got {tuple(mask.shape)}")
        return self.compute(image_embeddings @ text_embeddings.T, mask)

    def compute(self, similarities: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _directional_triplet(similarities: torch.Tensor, positives: torch.Tensor, margin: float,
                         mining: str) -> torch.Tensor:
    """Mean hinge over (anchor row, positive column) pairs with the mined negative column(s)."""
    negatives = ~positives
    usable = positives.any(1) & negatives.any(1)
    similarities, positives, negatives = similarities[usable], positives[usable], negatives[usable]
    if not len(similarities):
        return similarities.sum() * 0.0
    anchor, positive = positives.nonzero(as_tuple=True)
    positive_sim = similarities[anchor, positive]  # (P,)
    row = similarities[anchor]  # (P, T): the anchor's similarity to every column
    negative_rows = negatives[anchor]
    very_low = torch.finfo(similarities.dtype).min
    if mining == "all":
        hinge = F.relu(margin - positive_sim[:, None] + row)
        return (hinge * negative_rows).sum() / negative_rows.sum()
    if mining == "hardest":
        negative_sim = row.masked_fill(~negative_rows, very_low).amax(1)
    else:
        # The most similar negative that is still less similar than the positive; where there is none,
        # the least similar negative (as FaceNet / TensorFlow's semi-hard triplet loss).
        semi = negative_rows & (row < positive_sim[:, None])
        semi_sim = row.masked_fill(~semi, very_low).amax(1)
        easiest = row.masked_fill(~negative_rows, torch.finfo(similarities.dtype).max).amin(1)
        negative_sim = torch.where(semi.any(1), semi_sim, easiest)
    return F.relu(margin - positive_sim + negative_sim).mean()


class BidirectionalTripletLoss(CrossModalLoss):
    """The cross-modal triplet loss in both directions (the "Deep Metric Learning" lecture's two-tower
    objective; Wang, Li & Lazebnik, CVPR 2016; Faghri et al., VSE++, BMVC 2018).

    With cosine similarities ``s`` and margin ``m``, over anchors ``a`` and their positives ``p``:

        L1 = mean_{(a,p)} [m - s(x_a, y_p) + s(x_a, y_n)]_+     (image anchor, text positive/negative)
        L2 = mean_{(a,p)} [m - s(y_a, x_p) + s(y_a, x_n)]_+     (text anchor, image positive/negative)
        L  = L1 + L2

    The negative ``n`` is mined per (anchor, positive): ``"hardest"`` takes the most similar negative (VSE++'s
    max violation); ``"semi_hard"`` the most similar negative still less similar than the positive (FaceNet,
    Schroff et al. 2015), or the least similar negative when there is none; ``"all"`` averages the hinge over
    every negative.

    Args:
        margin: ``m`` in cosine units.
        mining: ``"semi_hard"``, ``"hardest"`` or ``"all"``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(BidirectionalTripletLoss(margin=0.2, mining="hardest")(x, y, torch.tensor([0, 1]),
        ...                                                              torch.tensor([0, 1])))
        0.0
    """

    def __init__(self, *, margin: float = 0.2, mining: str = "semi_hard") -> None:
        super().__init__()
        self.margin = check_positive_float("margin", margin)
        self.mining = check_choice("mining", mining, MINING)

    def compute(self, similarities: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        image_to_text = _directional_triplet(similarities, positives, self.margin, self.mining)
        text_to_image = _directional_triplet(similarities.T, positives.T, self.margin, self.mining)
        return image_to_text + text_to_image


class InfoNCELoss(CrossModalLoss):
    """Symmetric InfoNCE with a learnable temperature (CLIP, Radford et al. 2021), with several positives
    per row (the targets spread evenly over them, as SupCon's L_out, Khosla et al. 2020).

    Logits ``z = t S`` with ``t = min(exp(w), max_scale)`` (``w`` learnt, starting at ``log(1/temperature)``).
    With ``P(i)`` the positive texts of image ``i`` and ``P(t)`` the positive images of text ``t``:

        L_i2t = mean_i  -1/|P(i)| sum_{p in P(i)} log softmax_j(z_ij)[p]
        L_t2i = mean_t  -1/|P(t)| sum_{p in P(t)} log softmax_i(z_it)[p]
        L = (L_i2t + L_t2i) / 2

    With one positive per row (the diagonal) this is CLIP's ``(CE(z, arange) + CE(z^T, arange)) / 2``.

    Args:
        temperature: the starting temperature (CLIP: 0.07).
        max_scale: the clamp of the logit scale ``t`` (CLIP: 100).
        learn_temperature: whether ``w`` is trained.

    Example:
        >>> x = torch.eye(3); loss = InfoNCELoss(temperature=1.0)
        >>> round(loss(x, x, torch.arange(3), torch.arange(3)).item(), 4)  # -log(e / (e + 2))
        0.5514
    """

    def __init__(self, *, temperature: float = 0.07, max_scale: float = 100.0, learn_temperature: bool = True) -> None:
        super().__init__()
        temperature = check_positive_float("temperature", temperature)
        self.max_scale = check_positive_float("max_scale", max_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def compute(self, similarities: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        logits = similarities * self.scale
        parts = []
        for direction_logits, direction_positives in ((logits, positives), (logits.T, positives.T)):
            rows = direction_positives.any(1)
            if not rows.any():
                continue
            log_probs = direction_logits[rows].log_softmax(1)
            targets = direction_positives[rows].float()
            targets = targets / targets.sum(1, keepdim=True)
            parts.append(-(targets * log_probs).sum(1).mean())
        return torch.stack(parts).mean() if parts else similarities.sum() * 0.0


class SigLIPLoss(CrossModalLoss):
    """The pairwise sigmoid loss (SigLIP, Zhai et al., ICCV 2023): every (image, text) pair is a binary
    classification, positive for the same class.

    With ``z_it = +1`` for a positive pair and ``-1`` otherwise, logits ``t s_it + b`` (``t = exp(w)``, ``w``
    and ``b`` learnt; the paper starts at ``t = 10``, ``b = -10``):

        L = -1/B sum_i sum_t log sigmoid(z_it (t s_it + b))

    Args:
        scale: the starting ``t``.
        bias: the starting ``b``.

    Example:
        >>> x = torch.eye(2); loss = SigLIPLoss(scale=1.0, bias=0.0)
        >>> round(loss(x, x, torch.arange(2), torch.arange(2)).item(), 4)  # (2 log(1 + e^-1) + 2 log 2) / 2
        1.0064
    """

    def __init__(self, *, scale: float = 10.0, bias: float = -10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(check_positive_float("scale", scale))))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def compute(self, similarities: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        signs = positives.to(similarities.dtype) * 2 - 1
        logits = similarities * self.log_scale.exp() + self.bias
        return -F.logsigmoid(signs * logits).sum() / similarities.shape[0]


LOSSES = {"triplet": BidirectionalTripletLoss, "infonce": InfoNCELoss, "siglip": SigLIPLoss}


def build_crossmodal_loss(name: str, args: dict | None = None) -> CrossModalLoss:
    """``"triplet"``, ``"infonce"`` or ``"siglip"`` with keyword ``args``."""
    name = check_choice("crossmodal loss", name, tuple(LOSSES))
    try:
        return LOSSES[name](**(args or {}))
    except TypeError as error:
        raise ValueError(f"crossmodal loss {name!r}: {error}") from error
