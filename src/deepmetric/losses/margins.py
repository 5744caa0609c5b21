r"""Angular and cosine margins: pure transforms of the target class's cosine ``cos(theta_{i,y_i})``.

Every function maps the cosines of the true classes (any shape) to the margin-penalised value that
replaces them in the logits. They hold no state and see no class centres, so a full, sampled or sharded
head (``deepmetric.losses.heads``) applies any of them to the one target column per sample.
"""

from __future__ import annotations

import math

import torch

from deepmetric.validation import check_int, check_non_negative_float


def _check_cosine(cosine: torch.Tensor) -> torch.Tensor:
    if not isinstance(cosine, torch.Tensor) or not cosine.is_floating_point():
        raise TypeError(f"cosine must be a floating-point torch.Tensor, got {type(cosine).__name__}"
                        f"{'' if not isinstance(cosine, torch.Tensor) else ' of dtype ' + str(cosine.dtype)}")
    # Normalised vectors can give |cos| a rounding error above 1, where acos and sqrt(1 - c^2) break.
    return cosine.clamp(-1.0, 1.0)


def _as_margin(margin: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(margin, dtype=like.dtype, device=like.device)


def _sine(cosine: torch.Tensor) -> torch.Tensor:
    # sqrt(1 - c^2) has an infinite slope at |c| = 1; the floor eps only touches c = +-1 exactly, so the
    # derivative is exact at every other representable cosine.
    return torch.sqrt(torch.clamp(1.0 - cosine * cosine, min=torch.finfo(cosine.dtype).eps))


def cosine_margin(cosine: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    r"""Additive cosine margin of CosFace / LMCL (Wang et al., CVPR 2018): ``cos(theta) - m``.

    Args:
        cosine: target cosines, any shape.
        margin: ``m``, a float or a tensor broadcastable to ``cosine`` (per-sample margins).
    """
    return cosine - margin


def arc_margin(cosine: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    r"""Additive angular margin of ArcFace (Deng et al., CVPR 2019), monotonic in ``theta``.

    .. math::
        \psi(\theta) = \begin{cases} \cos(\theta + m) & \theta + m \le \pi \\
                                     \cos\theta - m \sin m & \theta + m > \pi \end{cases}

    ``cos(theta + m)`` is written ``c cos m - sqrt(1 - c^2) sin m`` so its derivative is the exact
    ``d/dc cos(arccos(c) + m) = cos m + sin m * c / sqrt(1 - c^2)`` (no straight-through estimate).
    Past ``theta = pi - m``, ``cos(theta + m)`` would rise again and reward pushing a sample away from
    its class; the fallback ``cos(theta) - m sin(m)`` (insightface's non-"easy-margin" branch, also used
    by pytorch-metric-learning) keeps the target logit decreasing in ``theta``: it is decreasing, and at
    the switch it lies below ``cos(pi) = -1`` since ``cos(pi - m) - m sin m = -(cos m + m sin m) <= -1``.

    Args:
        cosine: target cosines, any shape.
        margin: ``m`` in radians (float, or tensor broadcastable to ``cosine`` for per-class margins).
    """
    cosine = _check_cosine(cosine)
    margin = _as_margin(margin, cosine)
    shifted = cosine * torch.cos(margin) - _sine(cosine) * torch.sin(margin)
    fallback = cosine - margin * torch.sin(margin)
    return torch.where(cosine >= -torch.cos(margin), shifted, fallback)


def chebyshev_cos_multiple(cosine: torch.Tensor, multiple: int) -> torch.Tensor:
    r"""``cos(k theta)`` as the Chebyshev polynomial ``T_k(cos theta)``: ``T_0 = 1``, ``T_1 = c``,
    ``T_{n+1} = 2 c T_n - T_{n-1}``. A polynomial in ``c``, so its gradient is finite at ``c = +-1``
    (unlike going through ``arccos``)."""
    previous, current = torch.ones_like(cosine), cosine
    if multiple == 0:
        return previous
    for _ in range(multiple - 1):
        previous, current = current, 2.0 * cosine * current - previous
    return current


def sphere_psi(cosine: torch.Tensor, margin: int) -> torch.Tensor:
    r"""Multiplicative angular margin of SphereFace / A-Softmax (Liu et al., CVPR 2017).

    .. math::
        \psi(\theta) = (-1)^k \cos(m\theta) - 2k, \quad \theta \in [k\pi/m, (k+1)\pi/m], \; k \in [0, m-1]

    ``psi`` is continuous and monotonically decreasing on ``[0, pi]`` (from 1 to ``1 - 2m``), unlike
    ``cos(m theta)``. ``k`` is piecewise constant, so only ``cos(m theta) = T_m(cos theta)`` carries
    gradient.

    Args:
        cosine: target cosines, any shape.
        margin: the integer ``m >= 1``.
    """
    margin = check_int("margin", margin, low=1)
    cosine = _check_cosine(cosine)
    with torch.no_grad():
        k = torch.floor(torch.acos(cosine) * (margin / math.pi)).clamp_(0, margin - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * chebyshev_cos_multiple(cosine, margin) - 2.0 * k


def combined_margin(cosine: torch.Tensor, angular_multiplier: float, angular_margin: float,
                    cosine_margin: float) -> torch.Tensor:
    r"""The combined margin of insightface: ``cos(m1 theta + m2) - m3``.

    ``(m1, m2, m3) = (m, 0, 0)`` is SphereFace's ``psi`` (without its lambda annealing),
    ``(1, m, 0)`` ArcFace, ``(1, 0, m)`` CosFace. Where ``m1 theta + m2`` passes ``pi`` the value is
    continued so that it keeps decreasing in ``theta``:

    - ``m1 = 1``: ArcFace's fallback ``cos(theta) - m2 sin(m2) - m3`` (see ``arc_margin``);
    - otherwise SphereFace's continuation ``(-1)^k cos(m1 theta + m2) - 2k - m3`` with
      ``k = floor((m1 theta + m2) / pi)``, which is continuous.

    Args:
        cosine: target cosines, any shape.
        angular_multiplier: ``m1 > 0``; angular_margin: ``m2`` (radians); cosine_margin: ``m3``.
    """
    if angular_multiplier == 1:
        return arc_margin(cosine, angular_margin) - cosine_margin
    if angular_margin == 0 and float(angular_multiplier).is_integer():
        return sphere_psi(cosine, int(angular_multiplier)) - cosine_margin
    cosine = _check_cosine(cosine)
    # d/dc arccos(c) is infinite at +-1; keep theta a hair inside so the gradient stays finite.
    eps = torch.finfo(cosine.dtype).eps
    angle = angular_multiplier * torch.acos(cosine.clamp(-1.0 + eps, 1.0 - eps)) + angular_margin
    with torch.no_grad():
        k = torch.floor(angle / math.pi).clamp_(min=0)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * torch.cos(angle) - 2.0 * k - cosine_margin


def annealed_sphere_psi(cosine: torch.Tensor, margin: int, annealing: float) -> torch.Tensor:
    r"""SphereFace's training-time target value ``(lambda cos(theta) + psi(theta)) / (1 + lambda)``.

    Large ``lambda`` (start of training) is close to the plain softmax, which lets the network converge
    before the full margin ``psi`` takes over (Liu et al. 2017, Sec. 3.4 / their released code).
    """
    check_non_negative_float("annealing", annealing)
    return (annealing * _check_cosine(cosine) + sphere_psi(cosine, margin)) / (1.0 + annealing)
