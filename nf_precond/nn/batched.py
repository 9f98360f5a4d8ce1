"""``BatchedMLP``: N independent coordinate MLPs evaluated together, one ``torch.baddbmm`` per layer.

KiloImage and KiloNeRF (paper 1) split a signal into thousands of tiles, each fitted by its own 2-4 layer, 32-64 wide
MLP. A Python loop over thousands of tiny modules is dominated by per-call overhead; stacking the weights as
``[N, fan_in, fan_out]`` turns every layer of every net into one batched matmul. ``.net(i)`` returns net ``i`` as a
plain ``CoordinateMLP``: the reference twin the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from torch import nn

from nf_precond.nn.mlp import CoordinateMLP, FieldConfig, check_features, init_uniform_


class BatchedMLP(nn.Module):
    """``x[N, P, in_features] -> [N, P, out_features]``: net ``n`` maps its own points ``x[n]``.

    ``weights[l]`` has shape ``[N, fan_in, fan_out]`` and ``biases[l]`` ``[N, 1, fan_out]``; every net is drawn from
    the same initial distribution as a ``CoordinateMLP`` with the same ``FieldConfig``.
    """

    def __init__(
        self,
        num_nets: int,
        in_features: int,
        out_features: int,
        config: FieldConfig | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(num_nets, int) and num_nets >= 1):
            raise ValueError(f"num_nets must be an integer >= 1, got {num_nets!r}")
        check_features(in_features, out_features)
        self.num_nets, self.in_features, self.out_features = num_nets, in_features, out_features
        self.config = config if config is not None else FieldConfig()
        encoding = self.config.encoding(in_features)
        self.encoding = encoding.to(device=device) if encoding is not None else None
        self.activations = nn.ModuleList(self.config.activation_module(index) for index in range(self.config.layers))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for index, (fan_in, fan_out) in enumerate(self.config.layer_sizes(in_features, out_features)):
            weight = torch.empty(num_nets, fan_in, fan_out, device=device, dtype=dtype)
            bias = torch.empty(num_nets, 1, fan_out, device=device, dtype=dtype)
            init_uniform_(weight, bias, self.config.init_bounds(index, fan_in, fan_out))
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))

    @classmethod
    def from_nets(cls, nets: Sequence[CoordinateMLP]) -> BatchedMLP:
        """Stack copies of ``nets`` (same architecture) into one ``BatchedMLP``, on the first net's device/dtype."""
        if len(nets) == 0:
            raise ValueError("from_nets needs at least one CoordinateMLP")
        first = nets[0]
        for index, net in enumerate(nets):
            if (net.config, net.in_features, net.out_features) != (first.config, first.in_features, first.out_features):
                raise ValueError(
                    f"net {index} has config {net.config} ({net.in_features} -> {net.out_features}) but net 0 has "
                    f"{first.config} ({first.in_features} -> {first.out_features}); stack equal nets only"
                )
        first_weight = first.linears[0].weight
        batched = cls(len(nets), first.in_features, first.out_features, first.config, device=first_weight.device,
                      dtype=first_weight.dtype)  # fmt: skip
        with torch.no_grad():
            for layer, (weight, bias) in enumerate(zip(batched.weights, batched.biases)):
                weight.copy_(torch.stack([net.linears[layer].weight.t() for net in nets]))
                bias.copy_(torch.stack([net.linears[layer].bias.unsqueeze(0) for net in nets]))
        return batched

    def net(self, index: int) -> CoordinateMLP:
        """A copy of net ``index`` as an independent ``CoordinateMLP`` (same device and dtype)."""
        if not -self.num_nets <= index < self.num_nets:
            raise IndexError(f"net index {index} out of range for {self.num_nets} nets")
        single = CoordinateMLP(self.in_features, self.out_features, self.config, device=self.weights[0].device,
                               dtype=self.weights[0].dtype)  # fmt: skip
        with torch.no_grad():
            for linear, weight, bias in zip(single.linears, self.weights, self.biases):
                linear.weight.copy_(weight[index].t())
                linear.bias.copy_(bias[index, 0])
        return single

    def select(self, ids: torch.Tensor, device: torch.device | str | None = None) -> BatchedMLP:
        """Nets ``ids`` as a ``BatchedMLP`` of their own (copies, on ``device``; default: this model's)."""
        device = self.weights[0].device if device is None else device
        subset = BatchedMLP(len(ids), self.in_features, self.out_features, self.config, device=device,
                            dtype=self.weights[0].dtype)  # fmt: skip
        with torch.no_grad():
            for mine, theirs in zip(subset.parameters(), self.parameters()):
                mine.copy_(theirs[ids.to(theirs.device)])
        return subset

    def forward(self, x: torch.Tensor, nets: torch.Tensor | None = None) -> torch.Tensor:
        """``x[N, ..., in_features] -> [N, ..., out_features]`` (the middle dimensions are flattened to P).

        ``nets``: a long tensor of K net indices; then ``x`` is ``[K, ..., in_features]``, row k is evaluated by net
        ``nets[k]`` alone, and only those nets' parameters receive gradients (what a batched line search needs for the
        nets still searching).
        """
        count = self.num_nets if nets is None else len(nets)
        if x.dim() < 2 or x.shape[0] != count or x.shape[-1] != self.in_features:
            raise ValueError(
                f"BatchedMLP expects points shaped [{count}, P, {self.in_features}] "
                f"(one row of points per {'net' if nets is None else 'selected net'}), got {list(x.shape)}"
            )
        hidden = x.reshape(count, -1, self.in_features)
        if self.encoding is not None:
            hidden = self.encoding(hidden)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if nets is not None:
                weight, bias = weight.index_select(0, nets), bias.index_select(0, nets)
            hidden = torch.baddbmm(bias, hidden, weight)
            if index < self.config.layers:
                hidden = self.activations[index](hidden)
        return hidden.reshape(*x.shape[:-1], self.out_features)
