"""``BatchedMLP``: N independent coordinate MLPs evaluated together, one ``torch.baddbmm`` per layer.

KiloImage and KiloNeRF (paper 1) split a signal into thousands of tiles, each fitted by its own 2-4 layer, 32-64 wide
MLP. A Python loop over thousands of tiny modules is dominated by per-call overhead; stacking the weights as
``[N, fan_in, fan_out]`` turns every layer of every net into one batched matmul. ``.net(i)`` returns net ``i`` as a
plain ``CoordinateMLP``: the reference twin the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from nf_precond.nn.mlp import CoordinateMLP, MLPConfig, init_uniform_


class BatchedMLP(nn.Module):
    """``x[N, P, in_features] -> [N, P, out_features]``: net ``n`` maps its own points ``x[n]``.

    ``weights[l]`` has shape ``[N, fan_in, fan_out]`` and ``biases[l]`` ``[N, 1, fan_out]``; every net is drawn from
    the same initial distribution as a ``CoordinateMLP`` with the same keywords (see ``MLPConfig``).
    """

    def __init__(
        self,
        num_nets: int,
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
        if not (isinstance(num_nets, int) and num_nets >= 1):
            raise ValueError(f"num_nets must be an integer >= 1, got {num_nets!r}")
        self.num_nets = num_nets
        self.config = MLPConfig(
            in_features, out_features, hidden, layers, activation, omega0, sigma, wavelet_omega0, wavelet_s0,
            pe_frequencies, init,
        )  # fmt: skip
        encoding = self.config.encoding()
        self.encoding = encoding.to(device=device) if encoding is not None else None
        self.activations = nn.ModuleList(self.config.activation_module(index) for index in range(layers))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for index, (fan_in, fan_out) in enumerate(self.config.layer_sizes()):
            weight = torch.empty(num_nets, fan_in, fan_out, device=device, dtype=dtype)
            bias = torch.empty(num_nets, 1, fan_out, device=device, dtype=dtype)
            init_uniform_(weight, bias, self.config.init_bounds(index))
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))

    @classmethod
    def from_nets(cls, nets: Sequence[CoordinateMLP]) -> BatchedMLP:
        """Stack copies of ``nets`` (same architecture) into one ``BatchedMLP``, on the first net's device/dtype."""
        if len(nets) == 0:
            raise ValueError("from_nets needs at least one CoordinateMLP")
        config = nets[0].config
        for index, net in enumerate(nets):
            if net.config != config:
                raise ValueError(f"net {index} has config {net.config} but net 0 has {config}; stack equal nets only")
        first_weight = nets[0].linears[0].weight
        batched = cls(len(nets), **asdict(config), device=first_weight.device, dtype=first_weight.dtype)
        with torch.no_grad():
            for layer, (weight, bias) in enumerate(zip(batched.weights, batched.biases)):
                weight.copy_(torch.stack([net.linears[layer].weight.t() for net in nets]))
                bias.copy_(torch.stack([net.linears[layer].bias.unsqueeze(0) for net in nets]))
        return batched

    def net(self, index: int) -> CoordinateMLP:
        """A copy of net ``index`` as an independent ``CoordinateMLP`` (same device and dtype)."""
        if not -self.num_nets <= index < self.num_nets:
            raise IndexError(f"net index {index} out of range for {self.num_nets} nets")
        single = CoordinateMLP.from_config(self.config, device=self.weights[0].device, dtype=self.weights[0].dtype)
        with torch.no_grad():
            for linear, weight, bias in zip(single.linears, self.weights, self.biases):
                linear.weight.copy_(weight[index].t())
                linear.bias.copy_(bias[index, 0])
        return single

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[N, ..., in_features] -> [N, ..., out_features]`` (the middle dimensions are flattened to P)."""
        if x.dim() < 2 or x.shape[0] != self.num_nets or x.shape[-1] != self.config.in_features:
            raise ValueError(
                f"BatchedMLP expects points shaped [{self.num_nets}, P, {self.config.in_features}] "
                f"(one row of points per net), got {list(x.shape)}"
            )
        hidden = x.reshape(self.num_nets, -1, self.config.in_features)
        if self.encoding is not None:
            hidden = self.encoding(hidden)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            hidden = torch.baddbmm(bias, hidden, weight)
            if index < self.config.layers:
                hidden = self.activations[index](hidden)
        return hidden.reshape(*x.shape[:-1], self.config.out_features)
