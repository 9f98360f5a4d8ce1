"""Test problems with known minimizers, shared by the optimizer tests."""

from __future__ import annotations

import pytest
import torch


def _spd_quadratic(n: int = 6):
    """0.5 (x − x*)ᵀ A (x − x*) with A SPD, eigenvalues 0.1..10 (condition number 100), a dense (non-diagonal) A and
    a known minimizer x*. Returns (A, x*, x starting at 0, loss closure)."""
    generator = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(-1, 1, n, dtype=torch.float64)) @ q.T
    minimiser = torch.randn(n, generator=generator, dtype=torch.float64)
    x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    return a, minimiser, x, lambda: 0.5 * (x - minimiser) @ a @ (x - minimiser)


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


@pytest.fixture
def spd_quadratic():
    """Factory of the SPD quadratic problem (see ``_spd_quadratic``)."""
    return _spd_quadratic


@pytest.fixture
def rosenbrock():
    """The 2-D Rosenbrock function of a tensor x = (x0, x1); minimum 0 at (1, 1)."""
    return _rosenbrock
