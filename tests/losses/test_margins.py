"""Margin transforms against numpy formulas, their exact gradients, gradcheck and monotonicity."""

import math

import numpy as np
import pytest
import torch

from deepmetric.losses.margins import (
    annealed_sphere_psi,
    arc_margin,
    chebyshev_cos_multiple,
    combined_margin,
    cosine_margin,
    sphere_psi,
)

ANGLES = np.linspace(0.0, math.pi, 2001)


def cosines(angles=ANGLES):
    return torch.tensor(np.cos(angles), dtype=torch.float64)


def non_increasing(values):
    return bool(np.all(np.diff(values) <= 1e-12))


def test_cosine_margin():
    c = cosines()
    assert torch.equal(cosine_margin(c, 0.35), c - 0.35)


@pytest.mark.parametrize("margin", [0.2, 0.5, 1.0])
def test_arc_margin_matches_numpy_and_is_monotonic(margin):
    values = arc_margin(cosines(), margin).numpy()
    expected = np.where(ANGLES + margin <= math.pi, np.cos(ANGLES + margin),
                        np.cos(ANGLES) - margin * math.sin(margin))
    np.testing.assert_allclose(values, expected, atol=1e-7)
    assert non_increasing(values)


def test_arc_margin_past_pi_uses_the_fallback():
    margin = 0.5
    theta = torch.tensor([math.pi - 0.2, math.pi - 0.01], dtype=torch.float64)
    values = arc_margin(torch.cos(theta), margin)
    expected = torch.cos(theta) - margin * math.sin(margin)
    torch.testing.assert_close(values, expected)
    # cos(theta + m) would have risen back towards 1 here; the fallback stays below cos(pi) = -1
    assert (values < -1).all() and (torch.cos(theta + margin) > values).all()


def test_arc_margin_gradient_is_the_exact_derivative():
    margin = 0.5
    c = torch.tensor([-0.85, -0.5, 0.0, 0.3, 0.9, 0.999, 0.999999], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(arc_margin(c, margin).sum(), c)
    c = c.detach()
    exact = math.cos(margin) + math.sin(margin) * c / torch.sqrt(1 - c * c)  # d/dc cos(arccos(c) + m)
    torch.testing.assert_close(grad, exact, rtol=1e-10, atol=1e-10)
    # past theta = pi - m, d/dc (c - m sin m) = 1
    below = torch.tensor([-0.95, -0.99], dtype=torch.float64, requires_grad=True)
    (grad_below,) = torch.autograd.grad(arc_margin(below, margin).sum(), below)
    torch.testing.assert_close(grad_below, torch.ones_like(grad_below))


def test_arc_margin_gradient_is_finite_at_the_poles():
    c = torch.tensor([1.0, -1.0, 1.0 + 1e-7], dtype=torch.float32, requires_grad=True)
    arc_margin(c, 0.5).sum().backward()
    assert torch.isfinite(c.grad).all()


def test_arc_margin_per_sample_margins():
    c = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    margins = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64)
    expected = torch.cos(torch.acos(c) + margins)
    torch.testing.assert_close(arc_margin(c, margins), expected)


@pytest.mark.parametrize("multiple", [0, 1, 2, 3, 4, 5])
def test_chebyshev(multiple):
    np.testing.assert_allclose(chebyshev_cos_multiple(cosines(), multiple).numpy(), np.cos(multiple * ANGLES),
                               atol=1e-9)


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
def test_sphere_psi_matches_numpy_and_is_monotonic_and_continuous(margin):
    values = sphere_psi(cosines(), margin).numpy()
    k = np.clip(np.floor(ANGLES * margin / math.pi), 0, margin - 1)
    expected = (-1.0) ** k * np.cos(margin * ANGLES) - 2 * k
    np.testing.assert_allclose(values, expected, atol=1e-9)
    assert non_increasing(values)
    assert np.max(np.abs(np.diff(values))) < 0.05  # no jumps on a fine grid
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(1 - 2 * margin)


def test_sphere_psi_rejects_non_integer_margin():
    with pytest.raises(TypeError, match=r"^margin must be an integer >= 1, got float: 1\.5$"):
        sphere_psi(cosines(), 1.5)
    with pytest.raises(ValueError, match=r"^margin must be an integer >= 1, got 0$"):
        sphere_psi(cosines(), 0)


def test_annealed_sphere_psi():
    c = cosines()
    torch.testing.assert_close(annealed_sphere_psi(c, 4, 3.0), (3.0 * c + sphere_psi(c, 4)) / 4.0)
    torch.testing.assert_close(annealed_sphere_psi(c, 4, 0.0), sphere_psi(c, 4))
    with pytest.raises(ValueError, match=r"^annealing must be a finite number >= 0, got -1\.0$"):
        annealed_sphere_psi(c, 4, -1.0)


def test_combined_margin_covers_arcface_cosface_and_sphereface():
    c = cosines()
    torch.testing.assert_close(combined_margin(c, 1.0, 0.5, 0.0), arc_margin(c, 0.5))
    torch.testing.assert_close(combined_margin(c, 1.0, 0.0, 0.35), cosine_margin(c, 0.35))
    torch.testing.assert_close(combined_margin(c, 4.0, 0.0, 0.0), sphere_psi(c, 4))
    torch.testing.assert_close(combined_margin(c, 1.0, 0.3, 0.2), arc_margin(c, 0.3) - 0.2)


def test_combined_margin_general_form():
    m1, m2, m3 = 1.5, 0.2, 0.1
    values = combined_margin(cosines(), m1, m2, m3).numpy()
    inside = m1 * ANGLES + m2 <= math.pi
    np.testing.assert_allclose(values[inside], np.cos(m1 * ANGLES[inside] + m2) - m3, atol=1e-6)
    assert non_increasing(values)
    assert np.max(np.abs(np.diff(values))) < 0.05


@pytest.mark.parametrize("transform", [
    lambda c: arc_margin(c, 0.5),
    lambda c: sphere_psi(c, 4),
    lambda c: annealed_sphere_psi(c, 3, 2.0),
    lambda c: combined_margin(c, 1.5, 0.2, 0.1),
    lambda c: combined_margin(c, 1.0, 0.3, 0.2),
])
def test_gradcheck(transform):
    # Points away from the piecewise switches, where the function is smooth.
    c = torch.tensor([-0.7, -0.2, 0.1, 0.45, 0.8, 0.95], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(transform, (c,))


def test_bad_cosine_type():
    with pytest.raises(TypeError, match="cosine must be a floating-point"):
        arc_margin(torch.tensor([1, 0]), 0.5)
