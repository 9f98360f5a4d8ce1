"""``FieldConfig``, the architecture of a coordinate network, and ``CoordinateMLP``, the network of both papers.

``layers`` counts activated hidden layers: ``layers=4, hidden=64`` is Linear(in, 64)+act, 3 x [Linear(64, 64)+act],
Linear(64, out) — the "4x64" network of paper 1 and the "5-layer" network of paper 2. The layers are real
``torch.nn.Linear`` modules in ``model.net`` so K-FAC can hook them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from nf_precond.nn.activations import ACTIVATIONS, FourierFeatures, GaborWavelet, Gaussian, Sine

INITS = ("auto", "siren", "kaiming", "xavier", "default")
"""Weight initializations: "auto" is SIREN for sine and PyTorch's default otherwise (paper 2, supp. Sec. 4)."""

ActivationName = Literal[ACTIVATIONS]  # type: ignore[valid-type]
"""The activation names as a type, so command lines offer exactly ``ACTIVATIONS``."""
InitName = Literal[INITS]  # type: ignore[valid-type]


@dataclass(frozen=True, kw_only=True)
class FieldConfig:
    """The architecture of a coordinate MLP, whatever signal it fits (the signal supplies in/out features).

    The one description of a field: ``CoordinateMLP``, ``BatchedMLP``, the fitters' command lines, Kilo tiles and the
    nerfstudio fields all take it. Validated on construction, so a bad value fails early with its own message.
    """

    hidden: int = 64
    """Width of every hidden layer (paper 1 images: 64; paper 2: 256)."""
    layers: int = 4
    """Number of activated hidden layers; a final plain Linear follows them."""
    activation: ActivationName = "sine"
    """One of ``ACTIVATIONS``."""
    omega0: tuple[float, ...] = (30.0,)
    """Sine frequency ω0: one value for every hidden layer or one per hidden layer (audio SIREN: 3000 3000 30 30)."""
    sigma: float = 0.05
    """Gaussian width σ in ``exp(-x²/(2σ²))``."""
    wavelet_omega0: float = 10.0
    """Gabor wavelet frequency ω0 in ``cos(ω0 x) exp(-(s0 x)²)``."""
    wavelet_s0: float = 10.0
    """Gabor wavelet inverse width s0."""
    pe_frequencies: int = 8
    """relu-pe: number L of octaves in the Fourier positional encoding."""
    init: InitName = "auto"
    """Weight initialization, one of ``INITS``; auto = SIREN for sine, PyTorch's default otherwise."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        omegas = (self.omega0,) if isinstance(self.omega0, (int, float)) else tuple(self.omega0)
        if len(omegas) not in (1, self.layers):
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
        self.encoding(1)

    def omega(self, index: int) -> float:
        """The ω0 of the sine after hidden Linear ``index``."""
        return self.omega0[0] if len(self.omega0) == 1 else self.omega0[index]

    @property
    def resolved_init(self) -> str:
        if self.init != "auto":
            return self.init
        return "siren" if self.activation == "sine" else "default"

    def encoding(self, in_features: int) -> FourierFeatures | None:
        """The parameter-free input encoding placed before the first Linear (relu-pe only)."""
        if self.activation != "relu-pe":
            return None
        return FourierFeatures(in_features, self.pe_frequencies)

    def activation_module(self, index: int) -> nn.Module:
        """The activation that follows hidden Linear number ``index`` (0-based)."""
        if self.activation == "sine":
            return Sine(self.omega(index))
        if self.activation == "gauss":
            return Gaussian(self.sigma)
        if self.activation == "wavelet":
            return GaborWavelet(self.wavelet_omega0, self.wavelet_s0)
        return nn.ReLU()

    def layer_sizes(self, in_features: int, out_features: int) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of every Linear, first to last (``layers + 1`` of them)."""
        encoding = self.encoding(in_features)
        first_in = encoding.out_features if encoding is not None else in_features
        widths = [first_in] + [self.hidden] * self.layers + [out_features]
        return list(zip(widths[:-1], widths[1:]))

    def num_parameters(self, in_features: int, out_features: int) -> int:
        """Weights and biases of one net."""
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.layer_sizes(in_features, out_features))

    def init_bounds(self, index: int, fan_in: int, fan_out: int) -> tuple[float, float]:
        """(weight bound, bias bound) of Linear ``index`` with ``fan_in``/``fan_out``: both drawn from U(-b, b).

        siren: first layer U(±1/fan_in), later layers U(±sqrt(6/fan_in)/ω0) with the ω0 of the sine that follows
        the layer (the last hidden ω0 for the final Linear); biases keep PyTorch's default, as SIREN's code does.
        kaiming / xavier: uniform He (ReLU gain) / Glorot bounds with zero biases. default: ``nn.Linear``'s own.
        """
        default_bound = 1.0 / math.sqrt(fan_in)
        scheme = self.resolved_init
        if scheme == "siren":
            if index == 0:
                return 1.0 / fan_in, default_bound
            return math.sqrt(6.0 / fan_in) / self.omega(min(index, self.layers - 1)), default_bound
        if scheme == "kaiming":
            return math.sqrt(6.0 / fan_in), 0.0
        if scheme == "xavier":
            return math.sqrt(6.0 / (fan_in + fan_out)), 0.0
        return default_bound, default_bound


def check_features(in_features: int, out_features: int) -> None:
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@torch.no_grad()
def init_uniform_(weight: torch.Tensor, bias: torch.Tensor, bounds: tuple[float, float]) -> None:
    """Fill ``weight`` and ``bias`` in place from U(-bound, bound); a zero bound means zeros."""
    for tensor, bound in zip((weight, bias), bounds):
        if bound > 0:
            tensor.uniform_(-bound, bound)
        else:
            tensor.zero_()


class CoordinateMLP(nn.Module):
    """A coordinate network ``coords[..., in_features] -> [..., out_features]`` with the architecture ``config``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: FieldConfig | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_features(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.config = config if config is not None else FieldConfig()
        modules: list[nn.Module] = []
        encoding = self.config.encoding(in_features)
        if encoding is not None:
            modules.append(encoding.to(device=device))
        for index, (fan_in, fan_out) in enumerate(self.config.layer_sizes(in_features, out_features)):
            linear = nn.Linear(fan_in, fan_out, device=device, dtype=dtype)
            init_uniform_(linear.weight, linear.bias, self.config.init_bounds(index, fan_in, fan_out))
            modules.append(linear)
            if index < self.config.layers:
                modules.append(self.config.activation_module(index))
        self.net = nn.Sequential(*modules)

    @property
    def linears(self) -> list[nn.Linear]:
        """The Linear layers, first to last."""
        return [module for module in self.net if isinstance(module, nn.Linear)]

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != self.in_features:
            raise ValueError(
                f"coords have {coords.shape[-1]} features in their last dimension but the MLP expects "
                f"{self.in_features}; pass coordinates shaped [..., {self.in_features}]"
            )
        return self.net(coords)
