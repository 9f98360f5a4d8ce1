"""Activations of coordinate networks, as small parameter-free modules.

Every nonlinearity here is built from smooth torch ops, so autograd can differentiate it twice: Hessian-vector
products (ESGD, AdaHessian) go through them. ReLU (``torch.nn.ReLU``) is only piecewise linear; its second
derivative is zero almost everywhere, which is the point paper 2 makes about ReLU networks.

Conventions (paper 2, supplementary Sec. 4 "Architecture", which is what its experiments ran):
- sine: ``sin(ω0 x)`` (SIREN). Paper 1 writes ``sin(2πωx)``; its ω = 30 experiments follow SIREN's ``sin(30 x)``.
- Gaussian: ``exp(-x² / (2σ²))`` with σ = 0.05 (images), 0.09 (occupancy), 0.1 (NeRF), as in GaussNeRF. Paper 2's
  supplementary Sec. 1.1 writes ``exp(-σ²x²/2)`` (σ as an inverse width) and paper 1 drops the minus sign; both are
  typos for the same bump, and only ``exp(-x²/(2σ²))`` makes "smaller σ → higher frequency" (paper 1) true.
- wavelet: real part of WIRE's Gabor wavelet, ``cos(ω0 x) · exp(-(s0 x)²)``, ω0 = s0 = 10.
- positional encoding: ``[cos(2^k π x), sin(2^k π x)]`` for k = 0..L-1, L = 8, without the raw input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nf_precond.checks import require_positive

ACTIVATIONS = ("sine", "gauss", "wavelet", "relu", "relu-pe")
"""Names accepted by ``FieldConfig(activation=...)``."""


class Sine(nn.Module):
    """``sin(ω0 x)``; ω0 sets the frequency band the layer can represent."""

    def __init__(self, omega0: float = 30.0) -> None:
        super().__init__()
        self.omega0 = require_positive("omega0", omega0, finite=True, hint="SIREN uses 30 (3000 on the first layers for audio)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega0 * x)

    def extra_repr(self) -> str:
        return f"omega0={self.omega0:g}"


class Gaussian(nn.Module):
    """``exp(-x² / (2σ²))``; a smaller σ gives a narrower bump and a higher-frequency network."""

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        self.sigma = require_positive("sigma", sigma, finite=True, hint="paper 2 uses 0.05 for images, 0.09 occupancy, 0.1 NeRF")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * (x / self.sigma) ** 2)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


class GaborWavelet(nn.Module):
    """Real Gabor wavelet ``cos(ω0 x) · exp(-(s0 x)²)`` (WIRE): ω0 the frequency, s0 the inverse width."""

    def __init__(self, omega0: float = 10.0, s0: float = 10.0) -> None:
        super().__init__()
        self.omega0 = require_positive("wavelet_omega0", omega0, finite=True, hint="WIRE and paper 2 use 10")
        self.s0 = require_positive("wavelet_s0", s0, finite=True, hint="WIRE and paper 2 use 10")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.omega0 * x) * torch.exp(-((self.s0 * x) ** 2))

    def extra_repr(self) -> str:
        return f"omega0={self.omega0:g}, s0={self.s0:g}"


class FourierFeatures(nn.Module):
    """Positional encoding ``x[..., d] -> [cos(2^k π x), sin(2^k π x)]_{k<L}`` of shape ``[..., 2·L·d]``.

    The output is ordered frequency-major: for each k, the d cosines then the d sines.
    """

    octaves: torch.Tensor

    def __init__(self, in_features: int, num_frequencies: int = 8) -> None:
        super().__init__()
        if not (isinstance(num_frequencies, int) and num_frequencies >= 1):
            raise ValueError(f"pe_frequencies must be an integer >= 1, got {num_frequencies!r}; paper 2 uses 8")
        self.in_features = in_features
        self.num_frequencies = num_frequencies
        # 2^k is exact in every float dtype; π is applied in the input's dtype so float64 stays float64-accurate.
        # A buffer, not a parameter: it follows .to(device) but is never trained.
        self.register_buffer("octaves", 2.0 ** torch.arange(num_frequencies), persistent=False)

    @property
    def out_features(self) -> int:
        return 2 * self.num_frequencies * self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = math.pi * x.unsqueeze(-2) * self.octaves.to(x.dtype).unsqueeze(-1)  # [..., L, d]
        encoded = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [..., L, 2d]
        return encoded.flatten(-2)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_frequencies={self.num_frequencies}"
