"""Each activation against its formula written with ``math`` (values, first and second derivatives)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from nf_precond.nn import FourierFeatures, GaborWavelet, Gaussian, Sine

POINTS = [-0.37, -0.05, 0.0, 0.013, 0.08, 0.5, 1.7]


def _derivatives(module: torch.nn.Module, x: float) -> tuple[float, float, float]:
    """Value, first and second derivative of an elementwise module at ``x`` by autograd (double backward)."""
    point = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    value = module(point)
    (first,) = torch.autograd.grad(value, point, create_graph=True)
    (second,) = torch.autograd.grad(first, point)
    return value.item(), first.item(), second.item()


# (module, φ, φ', φ'') with the derivatives written out by hand (paper 2, supplementary Sec. 2).
OMEGA, SIGMA, W0, S0 = 30.0, 0.05, 10.0, 10.0
Scalar = Callable[[float], float]
CASES: dict[str, tuple[torch.nn.Module, Scalar, Scalar, Scalar]] = {
    "sine": (
        Sine(OMEGA),
        lambda x: math.sin(OMEGA * x),
        lambda x: OMEGA * math.cos(OMEGA * x),
        lambda x: -(OMEGA**2) * math.sin(OMEGA * x),
    ),
    "gauss": (
        Gaussian(SIGMA),
        lambda x: math.exp(-(x**2) / (2 * SIGMA**2)),
        lambda x: -x / SIGMA**2 * math.exp(-(x**2) / (2 * SIGMA**2)),
        lambda x: (x**2 / SIGMA**4 - 1 / SIGMA**2) * math.exp(-(x**2) / (2 * SIGMA**2)),
    ),
    "wavelet": (
        GaborWavelet(W0, S0),
        lambda x: math.cos(W0 * x) * math.exp(-((S0 * x) ** 2)),
        lambda x: (-W0 * math.sin(W0 * x) - 2 * S0**2 * x * math.cos(W0 * x)) * math.exp(-((S0 * x) ** 2)),
        lambda x: (
            -(W0**2) * math.cos(W0 * x)
            + 4 * W0 * S0**2 * x * math.sin(W0 * x)
            + (4 * S0**4 * x**2 - 2 * S0**2) * math.cos(W0 * x)
        )
        * math.exp(-((S0 * x) ** 2)),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("x", POINTS)
def test_activation_value_and_derivatives_match_formula(name: str, x: float) -> None:
    module, phi, dphi, d2phi = CASES[name]
    value, first, second = _derivatives(module, x)
    expected = (phi(x), dphi(x), d2phi(x))
    scale = [1.0, 1.0 / SIGMA if name == "gauss" else OMEGA, 1.0 / SIGMA**2 if name == "gauss" else OMEGA**2]
    for got, want, size in zip((value, first, second), expected, scale):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * size)


def test_gaussian_width_is_sigma() -> None:
    """σ is a standard deviation: the bump falls to exp(-1/2) one σ from the center."""
    gauss = Gaussian(0.2)
    values = gauss(torch.tensor([0.0, 0.2, -0.2], dtype=torch.float64))
    torch.testing.assert_close(values, torch.tensor([1.0, math.exp(-0.5), math.exp(-0.5)], dtype=torch.float64))


def test_fourier_features_match_formula() -> None:
    coords = torch.tensor([[0.1, -0.7], [0.33, 0.9]], dtype=torch.float64)
    encoded = FourierFeatures(in_features=2, num_frequencies=3)(coords)
    assert encoded.shape == (2, 12)
    for row, point in zip(encoded.tolist(), coords.tolist()):
        expected = []
        for k in range(3):
            expected += [math.cos(2**k * math.pi * v) for v in point]
            expected += [math.sin(2**k * math.pi * v) for v in point]
        assert row == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_fourier_features_keep_leading_dimensions_and_have_no_parameters() -> None:
    encoding = FourierFeatures(in_features=3, num_frequencies=8)
    assert encoding(torch.rand(4, 5, 3)).shape == (4, 5, 48) == (4, 5, encoding.out_features)
    assert list(encoding.parameters()) == []


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Sine(0.0), "omega0"),
        (lambda: Sine(float("nan")), "omega0"),
        (lambda: Gaussian(-0.1), "sigma"),
        (lambda: Gaussian(0), "sigma"),
        (lambda: GaborWavelet(10.0, -1.0), "wavelet_s0"),
        (lambda: GaborWavelet(float("inf"), 10.0), "wavelet_omega0"),
        (lambda: FourierFeatures(2, 0), "pe_frequencies"),
    ],
)
def test_bad_activation_arguments_raise(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
