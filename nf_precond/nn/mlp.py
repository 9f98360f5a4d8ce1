"""``CoordinateMLP``: the coordinate network of both papers, and the ``MLPConfig`` it shares with ``BatchedMLP``.

``layers`` counts activated hidden layers: ``layers=4, hidden=64`` is Linear(in, 64)+act, 3 x [Linear(64, 64)+act],
Linear(64, out) — the "4x64" network of paper 1 and the "5-layer" network of paper 2. The layers are real
``torch.nn.Linear`` modules in ``model.net`` so K-FAC can hook them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nf_precond.nn.activations import ACTIVATIONS, FourierFeatures, GaborWavelet, Gaussian, Sine

INITS = ("auto", "siren", "kaiming", "xavier", "default")
"""Weight initialisations: "auto" is SIREN for sine and PyTorch's default otherwise (paper 2, supp. Sec. 4)."""


@dataclass(frozen=True)
class MLPConfig:
    """The architecture of one coordinate MLP; validated on construction, so a bad value fails early and clearly."""

    in_features: int
    """Coordinate dimension (2 for images, 1 audio, 3 video/occupancy/NeRF)."""
    out_features: int
    """Signal channels (3 for RGB, 1 for audio or occupancy logits, 4 for NeRF density + colour)."""
    hidden: int = 256
    """Width of every hidden layer."""
    layers: int = 4
    """Number of activated hidden layers; a final plain Linear follows them."""
    activation: str = "sine"
    """One of ``ACTIVATIONS``."""
    omega0: float | Sequence[float] = 30.0
    """Sine frequency ω0: one value for every hidden layer or one per hidden layer (stored as a tuple of length
    ``layers``). Audio SIREN uses e.g. (3000, 3000, 30, 30)."""
    sigma: float = 0.05
    """Gaussian width σ in ``exp(-x²/(2σ²))``."""
    wavelet_omega0: float = 10.0
    """Gabor wavelet frequency ω0 in ``cos(ω0 x) exp(-(s0 x)²)``."""
    wavelet_s0: float = 10.0
    """Gabor wavelet inverse width s0."""
    pe_frequencies: int = 8
    """relu-pe: number L of octaves in the Fourier positional encoding."""
    init: str = "auto"
    """One of ``INITS``."""

    def __post_init__(self) -> None:
        for name in ("in_features", "out_features", "hidden", "layers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        omegas = (self.omega0,) * self.layers if isinstance(self.omega0, (int, float)) else tuple(self.omega0)
        if len(omegas) != self.layers:
            raise ValueError(
                f"omega0 has {len(omegas)} values but the network has {self.layers} hidden layers; "
                "give one value per hidden layer or a single number"
            )
        for omega in omegas:
            if not (isinstance(omega, (int, float)) and math.isfinite(omega) and omega > 0):
                raise ValueError(f"omega0 values must be positive numbers, got {omega!r}")
        object.__setattr__(self, "omega0", tuple(float(omega) for omega in omegas))
        # Build each activation once so bad σ / wavelet / PE values fail here with their own message.
        for index in range(self.layers):
            self.activation_module(index)
        self.encoding()

    @property
    def resolved_init(self) -> str:
        if self.init != "auto":
            return self.init
        return "siren" if self.activation == "sine" else "default"

    def encoding(self) -> FourierFeatures | None:
        """The parameter-free input encoding placed before the first Linear (relu-pe only)."""
        if self.activation != "relu-pe":
            return None
        return FourierFeatures(self.in_features, self.pe_frequencies)

    def activation_module(self, index: int) -> nn.Module:
        """The activation that follows hidden Linear number ``index`` (0-based)."""
        if self.activation == "sine":
            return Sine(self.omega0[index])
        if self.activation == "gauss":
            return Gaussian(self.sigma)
        if self.activation == "wavelet":
            return GaborWavelet(self.wavelet_omega0, self.wavelet_s0)
        return nn.ReLU()

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of every Linear, first to last (``layers + 1`` of them)."""
        encoding = self.encoding()
        first_in = encoding.out_features if encoding is not None else self.in_features
        widths = [first_in] + [self.hidden] * self.layers + [self.out_features]
        return list(zip(widths[:-1], widths[1:]))

    def init_bounds(self, index: int) -> tuple[float, float]:
        """(weight bound, bias bound) of Linear ``index``: both are drawn from U(-bound, bound).

        siren: first layer U(±1/fan_in), later layers U(±sqrt(6/fan_in)/ω0) with the ω0 of the sine that follows
        the layer (the last hidden ω0 for the final Linear); biases keep PyTorch's default, as SIREN's code does.
        kaiming / xavier: uniform He (ReLU gain) / Glorot bounds with zero biases. default: ``nn.Linear``'s own.
        """
        fan_in, fan_out = self.layer_sizes()[index]
        default_bound = 1.0 / math.sqrt(fan_in)
        scheme = self.resolved_init
        if scheme == "siren":
            if index == 0:
                return 1.0 / fan_in, default_bound
            omega = self.omega0[min(index, self.layers - 1)]
            return math.sqrt(6.0 / fan_in) / omega, default_bound
        if scheme == "kaiming":
            return math.sqrt(6.0 / fan_in), 0.0
        if scheme == "xavier":
            return math.sqrt(6.0 / (fan_in + fan_out)), 0.0
        return default_bound, default_bound


@torch.no_grad()
def init_uniform_(weight: torch.Tensor, bias: torch.Tensor, bounds: tuple[float, float]) -> None:
    """Fill ``weight`` and ``bias`` in place from U(-bound, bound); a zero bound means zeros."""
    for tensor, bound in zip((weight, bias), bounds):
        if bound > 0:
            tensor.uniform_(-bound, bound)
        else:
            tensor.zero_()


class CoordinateMLP(nn.Module):
    """A coordinate network ``coords[..., in_features] -> [..., out_features]``; see ``MLPConfig`` for the keywords."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 256,
        layers: int = 4,
        activation: str = "sine",
        omega0: float | Sequence[float] = 30.0,
        sigma: float = 0.05,
        wavelet_omega0: float = 10.0,
        wavelet_s0: float = 10.0,
        pe_frequencies: int = 8,
        init: str = "auto",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = MLPConfig(
            in_features, out_features, hidden, layers, activation, omega0, sigma, wavelet_omega0, wavelet_s0,
            pe_frequencies, init,
        )  # fmt: skip
        modules: list[nn.Module] = []
        encoding = self.config.encoding()
        if encoding is not None:
            modules.append(encoding.to(device=device))
        for index, (fan_in, fan_out) in enumerate(self.config.layer_sizes()):
            linear = nn.Linear(fan_in, fan_out, device=device, dtype=dtype)
            init_uniform_(linear.weight, linear.bias, self.config.init_bounds(index))
            modules.append(linear)
            if index < layers:
                modules.append(self.config.activation_module(index))
        self.net = nn.Sequential(*modules)

    @classmethod
    def from_config(
        cls, config: MLPConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> CoordinateMLP:
        return cls(**asdict(config), device=device, dtype=dtype)

    @property
    def in_features(self) -> int:
        return self.config.in_features

    @property
    def out_features(self) -> int:
        return self.config.out_features

    @property
    def linears(self) -> list[nn.Linear]:
        """The Linear layers, first to last."""
        return [module for module in self.net if isinstance(module, nn.Linear)]

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != self.config.in_features:
            raise ValueError(
                f"coords have {coords.shape[-1]} features in their last dimension but the MLP expects "
                f"{self.config.in_features}; pass coordinates shaped [..., {self.config.in_features}]"
            )
        return self.net(coords)
