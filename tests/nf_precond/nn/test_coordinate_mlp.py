"""CoordinateMLP: architecture, initialization bounds, per-layer ω0, shapes, argument errors, HVPs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from nf_precond.nn import ACTIVATIONS, CoordinateMLP, FieldConfig, FourierFeatures, GaborWavelet, Gaussian, Sine

ACTIVATION_TYPES = {"sine": Sine, "gauss": Gaussian, "wavelet": GaborWavelet, "relu": nn.ReLU, "relu-pe": nn.ReLU}


def _manual_forward(model: CoordinateMLP, coords: torch.Tensor) -> torch.Tensor:
    """The network written out from its weights and the activation formulas, without calling its modules."""
    config = model.config
    h = coords
    if config.activation == "relu-pe":
        octaves = [2.0**k * math.pi for k in range(config.pe_frequencies)]
        h = torch.cat([f(w * coords) for w in octaves for f in (torch.cos, torch.sin)], dim=-1)
    linears = model.linears
    for index, linear in enumerate(linears):
        h = h @ linear.weight.T + linear.bias
        if index == len(linears) - 1:
            break
        if config.activation == "sine":
            h = torch.sin(config.omega0[index] * h)
        elif config.activation == "gauss":
            h = torch.exp(-(h**2) / (2 * config.sigma**2))
        elif config.activation == "wavelet":
            h = torch.cos(config.wavelet_omega0 * h) * torch.exp(-((config.wavelet_s0 * h) ** 2))
        else:
            h = torch.clamp(h, min=0)
    return h


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_architecture_counts_activated_hidden_layers(activation: str) -> None:
    model = CoordinateMLP(2, 3, FieldConfig(hidden=16, layers=4, activation=activation, pe_frequencies=5))
    linears = model.linears
    first_in = 2 * 5 * 2 if activation == "relu-pe" else 2
    assert [(l.in_features, l.out_features) for l in linears] == [(first_in, 16), (16, 16), (16, 16), (16, 16), (16, 3)]
    assert isinstance(model.net[-1], nn.Linear), "the final layer is linear"
    acts = [m for m in model.net if isinstance(m, ACTIVATION_TYPES[activation])]
    assert len(acts) == 4
    encodings = [m for m in model.net if isinstance(m, FourierFeatures)]
    assert len(encodings) == (1 if activation == "relu-pe" else 0)
    if encodings:
        assert model.net[0] is encodings[0] and list(encodings[0].parameters()) == []


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("leading", [(7,), (2, 5), ()])
def test_forward_matches_formula_and_keeps_leading_shape(activation: str, leading: tuple[int, ...]) -> None:
    model = CoordinateMLP(3, 2, FieldConfig(hidden=8, layers=3, activation=activation, omega0=[20.0, 5.0, 1.0], sigma=0.3, pe_frequencies=3)).double()
    coords = torch.rand(*leading, 3, dtype=torch.float64) * 2 - 1
    out = model(coords)
    assert out.shape == (*leading, 2)
    torch.testing.assert_close(out, _manual_forward(model, coords))


def test_per_layer_omega0_is_honoured() -> None:
    omegas = [3000.0, 3000.0, 30.0, 30.0]
    model = CoordinateMLP(1, 1, FieldConfig(hidden=8, layers=4, omega0=omegas))
    assert [m.omega0 for m in model.net if isinstance(m, Sine)] == omegas
    assert model.config.omega0 == tuple(omegas)
    single = CoordinateMLP(1, 1, FieldConfig(hidden=8, layers=3, omega0=12.0))
    assert [m.omega0 for m in single.net if isinstance(m, Sine)] == [12.0, 12.0, 12.0]


def _assert_uniform_bound(tensor: torch.Tensor, bound: float) -> None:
    """All values inside ±bound and, with enough samples, the extremes near it (so the bound is the right one)."""
    assert tensor.abs().max().item() <= bound * (1 + 1e-6)
    assert tensor.abs().max().item() >= 0.9 * bound
    assert abs(tensor.mean().item()) < 0.1 * bound


def test_siren_init_bounds_use_each_layers_omega0() -> None:
    omegas = [3000.0, 300.0, 30.0]
    model = CoordinateMLP(2, 3, FieldConfig(hidden=128, layers=3, activation="sine", omega0=omegas))
    first, *hidden, last = model.linears
    _assert_uniform_bound(first.weight, 1.0 / 2)
    for linear, omega in zip(hidden, omegas[1:]):
        _assert_uniform_bound(linear.weight, math.sqrt(6.0 / 128) / omega)
    _assert_uniform_bound(last.weight, math.sqrt(6.0 / 128) / omegas[-1])
    for linear in model.linears[:-1]:  # SIREN keeps nn.Linear's default bias (the 3-wide last one is too small)
        _assert_uniform_bound(linear.bias, 1.0 / math.sqrt(linear.in_features))


@pytest.mark.parametrize(
    ("activation", "init", "weight_bound", "bias_zero"),
    [
        ("gauss", "auto", lambda fi, fo: 1 / math.sqrt(fi), False),
        ("relu-pe", "auto", lambda fi, fo: 1 / math.sqrt(fi), False),
        ("wavelet", "default", lambda fi, fo: 1 / math.sqrt(fi), False),
        ("relu", "kaiming", lambda fi, fo: math.sqrt(6 / fi), True),
        ("gauss", "xavier", lambda fi, fo: math.sqrt(6 / (fi + fo)), True),
    ],
)
def test_other_init_bounds(activation: str, init: str, weight_bound: Any, bias_zero: bool) -> None:
    model = CoordinateMLP(2, 64, FieldConfig(hidden=128, layers=2, activation=activation, init=init))
    for linear in model.linears:
        _assert_uniform_bound(linear.weight, weight_bound(linear.in_features, linear.out_features))
        if bias_zero:
            assert torch.count_nonzero(linear.bias) == 0
        else:
            _assert_uniform_bound(linear.bias, 1 / math.sqrt(linear.in_features))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "tanh"}, "unknown activation 'tanh'"),
        ({"omega0": [30.0, 30.0]}, "omega0 has 2 values but the network has 4 hidden layers"),
        ({"omega0": [30.0, 30.0, -1.0, 30.0]}, "omega0 values must be positive"),
        ({"activation": "gauss", "sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"activation": "gauss", "sigma": -0.05}, "sigma must be a finite number > 0"),
        ({"activation": "wavelet", "wavelet_s0": 0.0}, "wavelet_s0"),
        ({"activation": "relu-pe", "pe_frequencies": 0}, "pe_frequencies"),
        ({"init": "orthogonal"}, "unknown init 'orthogonal'"),
        ({"layers": 0}, "layers must be an integer >= 1"),
        ({"hidden": 0}, "hidden must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CoordinateMLP(2, 3, FieldConfig(**{"hidden": 8, "layers": 4, **kwargs}))


def test_wrong_coordinate_dimension_raises() -> None:
    model = CoordinateMLP(2, 3, FieldConfig(hidden=8, layers=2))
    with pytest.raises(ValueError, match=r"expects 2"):
        model(torch.rand(10, 3))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hessian_vector_product_matches_finite_differences(activation: str) -> None:
    """Double backward through every activation agrees with central differences of the gradient."""
    model = CoordinateMLP(2, 1, FieldConfig(hidden=6, layers=2, activation=activation, sigma=0.5, omega0=3.0, pe_frequencies=2)).double()
    coords = torch.rand(16, 2, dtype=torch.float64) * 2 - 1
    targets = torch.rand(16, 1, dtype=torch.float64)
    params = list(model.parameters())
    vector = [torch.randn_like(p) for p in params]

    loss = ((model(coords) - targets) ** 2).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvp = torch.autograd.grad(grads, params, grad_outputs=vector)

    def gradient_at(shift: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.add_(shift * v)
        shifted = torch.autograd.grad(((model(coords) - targets) ** 2).mean(), params)
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.sub_(shift * v)
        return list(shifted)

    eps = 1e-5
    plus, minus = gradient_at(eps), gradient_at(-eps)
    for got, up, down in zip(hvp, plus, minus):
        torch.testing.assert_close(got, (up - down) / (2 * eps), rtol=1e-5, atol=1e-7)
    if activation in ("sine", "gauss", "wavelet"):
        # Paper 2, Thm. 4.2: smooth activations give a dense Hessian-vector product.
        assert all(torch.count_nonzero(h) == h.numel() for h in hvp)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_builds_and_runs_on_cuda(activation: str) -> None:
    model = CoordinateMLP(2, 3, FieldConfig(hidden=8, layers=2, activation=activation), device="cuda")
    assert model(torch.rand(5, 2, device="cuda")).device.type == "cuda"
