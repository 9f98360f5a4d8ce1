"""BatchedMLP against its plain twin: a Python loop over ``.net(i)`` (outputs, gradients, HVPs, init)."""

from __future__ import annotations

import math

import pytest
import torch

from nf_precond.nn import ACTIVATIONS, BatchedMLP, CoordinateMLP, FieldConfig

NUM_NETS = 5
KWARGS = {"hidden": 8, "layers": 3, "omega0": [30.0, 10.0, 3.0], "sigma": 0.3, "pe_frequencies": 3}


def _batched(activation: str) -> BatchedMLP:
    return BatchedMLP(NUM_NETS, 2, 3, FieldConfig(activation=activation, **KWARGS), dtype=torch.float64)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.rand(NUM_NETS, 11, 2, dtype=torch.float64) * 2 - 1
    return coords, torch.rand(NUM_NETS, 11, 3, dtype=torch.float64)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_outputs_and_gradients_match_loop_over_nets(activation: str) -> None:
    batched = _batched(activation)
    nets = [batched.net(i) for i in range(NUM_NETS)]
    coords, targets = _data()

    out = batched(coords)
    assert out.shape == (NUM_NETS, 11, 3)
    ((out - targets) ** 2).sum().backward()
    for i, net in enumerate(nets):
        single = net(coords[i])
        torch.testing.assert_close(out[i], single)
        ((single - targets[i]) ** 2).sum().backward()
        for layer, linear in enumerate(net.linears):
            torch.testing.assert_close(batched.weights[layer].grad[i], linear.weight.grad.t())
            torch.testing.assert_close(batched.biases[layer].grad[i, 0], linear.bias.grad)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hessian_vector_products_match_loop_over_nets(activation: str) -> None:
    """Double backward through baddbmm and every activation equals each net's own HVP (the nets are independent)."""
    batched = _batched(activation)
    nets = [batched.net(i) for i in range(NUM_NETS)]
    coords, targets = _data()
    params = list(batched.parameters())
    vector = [torch.randn_like(p) for p in params]

    grads = torch.autograd.grad(((batched(coords) - targets) ** 2).sum(), params, create_graph=True)
    hvp = dict(zip(map(id, params), torch.autograd.grad(grads, params, grad_outputs=vector)))
    vector_of = dict(zip(map(id, params), vector))
    for i, net in enumerate(nets):
        single_params, single_vector, expected = [], [], []
        for weight, bias, linear in zip(batched.weights, batched.biases, net.linears):
            single_params += [linear.weight, linear.bias]
            single_vector += [vector_of[id(weight)][i].t(), vector_of[id(bias)][i, 0]]
            expected += [hvp[id(weight)][i].t(), hvp[id(bias)][i, 0]]
        single_grads = torch.autograd.grad(((net(coords[i]) - targets[i]) ** 2).sum(), single_params, create_graph=True)
        single_hvp = torch.autograd.grad(single_grads, single_params, grad_outputs=single_vector)
        for got, want in zip(expected, single_hvp):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_from_nets_round_trips(activation: str) -> None:
    nets = [CoordinateMLP(2, 3, FieldConfig(activation=activation, **KWARGS)).double() for _ in range(3)]
    batched = BatchedMLP.from_nets(nets)
    assert batched.num_nets == 3 and batched.config == nets[0].config
    assert batched.weights[0].dtype == torch.float64
    for i, net in enumerate(nets):
        for copied, original in zip(batched.net(i).parameters(), net.parameters()):
            torch.testing.assert_close(copied, original, rtol=0, atol=0)
    # Copies, not views: training the batch leaves the source nets alone.
    with torch.no_grad():
        batched.weights[0].add_(1.0)
    assert not torch.equal(batched.net(0).linears[0].weight, nets[0].linears[0].weight)


def test_from_nets_rejects_different_architectures() -> None:
    nets = [CoordinateMLP(2, 3, FieldConfig(hidden=8, layers=2)), CoordinateMLP(2, 3, FieldConfig(hidden=16, layers=2))]
    with pytest.raises(ValueError, match="net 1 has config"):
        BatchedMLP.from_nets(nets)
    with pytest.raises(ValueError, match="at least one"):
        BatchedMLP.from_nets([])


@pytest.mark.parametrize(("activation", "init"), [("sine", "auto"), ("gauss", "auto"), ("relu", "kaiming")])
def test_each_net_has_coordinate_mlp_init_distribution(activation: str, init: str) -> None:
    """Every net's layer fills the same ±bound as a CoordinateMLP's, and the nets differ from each other."""
    batched = BatchedMLP(200, 2, 3, FieldConfig(hidden=32, layers=2, activation=activation, init=init))
    reference = CoordinateMLP(2, 3, FieldConfig(hidden=32, layers=2, activation=activation, init=init))
    for layer, linear in enumerate(reference.linears):
        weight_bound, bias_bound = reference.config.init_bounds(layer, linear.in_features, linear.out_features)
        weights, biases = batched.weights[layer].detach(), batched.biases[layer].detach()
        assert weights.shape == (200, linear.in_features, linear.out_features)
        assert biases.shape == (200, 1, linear.out_features)
        assert linear.weight.abs().max() <= weight_bound
        assert weights.abs().max() <= weight_bound and weights.abs().max() >= 0.99 * weight_bound
        assert abs(weights.mean().item()) < 0.02 * weight_bound
        # U(-b, b) has standard deviation b/sqrt(3).
        assert weights.std().item() == pytest.approx(weight_bound / math.sqrt(3), rel=0.05)
        if bias_bound == 0:
            assert torch.count_nonzero(biases) == 0
        else:
            assert biases.abs().max() <= bias_bound and biases.abs().max() >= 0.9 * bias_bound
        assert not torch.equal(weights[0], weights[1])


def test_selected_nets_alone_match_all_nets_and_leave_the_others_without_gradient() -> None:
    torch.manual_seed(0)
    model = BatchedMLP(5, 2, 3, FieldConfig(hidden=8, layers=2), dtype=torch.float64)
    points = torch.rand(5, 7, 2, dtype=torch.float64)
    nets = torch.tensor([3, 0])
    full = model(points)
    full[nets].square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    subset = model(points[nets], nets=nets)
    torch.testing.assert_close(subset, full[nets].detach())
    subset.square().sum().backward()
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, want)
        assert p.grad[[1, 2, 4]].abs().max() == 0
    with pytest.raises(ValueError, match=r"\[2, P, 2\] \(one row of points per selected net\)"):
        model(points, nets=nets)


def test_forward_flattens_middle_dimensions() -> None:
    batched = BatchedMLP(4, 3, 2, FieldConfig(hidden=8, layers=2, activation="gauss"))
    coords = torch.rand(4, 5, 6, 3)
    out = batched(coords)
    assert out.shape == (4, 5, 6, 2)
    torch.testing.assert_close(out, batched(coords.reshape(4, 30, 3)).reshape(4, 5, 6, 2))


@pytest.mark.parametrize("shape", [(3, 10, 2), (4, 10, 3), (4,)])
def test_bad_point_shapes_raise(shape: tuple[int, ...]) -> None:
    batched = BatchedMLP(4, 2, 1, FieldConfig(hidden=8, layers=2))
    with pytest.raises(ValueError, match=r"expects points shaped \[4, P, 2\]"):
        batched(torch.rand(*shape))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_nets"):
        BatchedMLP(0, 2, 1)
    with pytest.raises(ValueError, match="omega0 has 3 values"):
        BatchedMLP(4, 2, 1, FieldConfig(layers=2, omega0=[30.0, 30.0, 30.0]))
    with pytest.raises(ValueError, match="in_features"):
        BatchedMLP(4, 0, 1)
    with pytest.raises(IndexError):
        BatchedMLP(4, 2, 1, FieldConfig(hidden=8, layers=2)).net(4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_matches_cpu_twin(activation: str) -> None:
    batched = BatchedMLP(3, 2, 3, FieldConfig(hidden=8, layers=2, activation=activation), device="cuda")
    coords = torch.rand(3, 7, 2, device="cuda")
    out = batched(coords)
    assert out.device.type == "cuda" and batched.net(1).linears[0].weight.device.type == "cuda"
    torch.testing.assert_close(out[1], batched.net(1)(coords[1]), rtol=1e-4, atol=1e-5)
