"""K-FAC against dense math: factors by hand, the step as a dense Kronecker solve, the exact minimizer of one-output
least squares in one step, convergence, hooks, state_dict and refusals."""

from __future__ import annotations

import copy
import gc
import math
import weakref

import pytest
import torch
from torch import nn

from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.optim.kfac import KFAC


def _mse_closure(optimizer, model, inputs, targets):
    return make_closure(optimizer, lambda: nn.functional.mse_loss(model(inputs), targets))


def _by_hand_factors(layer: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor):
    """E[ããᵀ] and E[ggᵀ] with g = rows x dloss/doutput, from autograd on a copy of the layer."""
    layer = copy.deepcopy(layer)
    rows = inputs.reshape(-1, inputs.shape[-1])
    n = rows.shape[0]
    augmented = torch.cat([rows, torch.ones(n, 1, dtype=rows.dtype)], dim=1)
    expected_a = sum(torch.outer(a, a) for a in augmented) / n
    output = layer(inputs)
    (grad_output,) = torch.autograd.grad(nn.functional.mse_loss(output, targets), output)
    per_row = grad_output.reshape(n, -1) * n
    expected_g = sum(torch.outer(g, g) for g in per_row) / n
    return expected_a, expected_g


@pytest.mark.parametrize("input_shape", [(7, 3), (2, 5, 3)], ids=["rows", "leading-dims"])
def test_factors_equal_hand_computed_expectations(input_shape):
    layer = nn.Linear(3, 2).double()
    inputs = torch.randn(*input_shape, dtype=torch.float64)
    targets = torch.randn(*input_shape[:-1], 2, dtype=torch.float64)
    expected_a, expected_g = _by_hand_factors(layer, inputs, targets)

    optimizer = KFAC(layer, lr=0.1)
    optimizer.step(_mse_closure(optimizer, layer, inputs, targets))

    state = optimizer.state[layer.weight]
    torch.testing.assert_close(state["input_factor"], expected_a)
    torch.testing.assert_close(state["output_grad_factor"], expected_g)


def test_factors_are_an_exponential_moving_average_starting_at_the_first_batch():
    layer = nn.Linear(3, 2).double()
    batches = [(torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)) for _ in range(3)]
    decay = 0.8
    optimizer = KFAC(layer, lr=1e-3, factor_decay=decay)
    expected_a = expected_g = None
    for k, (inputs, targets) in enumerate(batches, start=1):
        batch_a, batch_g = _by_hand_factors(layer, inputs, targets)
        weight = min(decay, 1 - 1 / k)
        expected_a = batch_a if expected_a is None else weight * expected_a + (1 - weight) * batch_a
        expected_g = batch_g if expected_g is None else weight * expected_g + (1 - weight) * batch_g
        optimizer.step(_mse_closure(optimizer, layer, inputs, targets))
    torch.testing.assert_close(optimizer.state[layer.weight]["input_factor"], expected_a)
    torch.testing.assert_close(optimizer.state[layer.weight]["output_grad_factor"], expected_g)


@pytest.mark.parametrize("bias", [True, False])
def test_step_equals_dense_damped_kronecker_solve(bias):
    layer = nn.Linear(4, 3, bias=bias).double()
    inputs, targets = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    lr, damping = 0.3, 0.05
    before = torch.cat([layer.weight, layer.bias[:, None]], 1) if bias else layer.weight.clone()
    before = before.detach().clone()

    layer_copy = copy.deepcopy(layer)
    nn.functional.mse_loss(layer_copy(inputs), targets).backward()
    grad = torch.cat([layer_copy.weight.grad, layer_copy.bias.grad[:, None]], 1) if bias else layer_copy.weight.grad
    n = inputs.shape[0]
    augmented = torch.cat([inputs, torch.ones(n, 1, dtype=inputs.dtype)], 1) if bias else inputs
    a = augmented.T @ augmented / n
    output = layer_copy(inputs)
    (grad_output,) = torch.autograd.grad(nn.functional.mse_loss(output, targets), output)
    g = (grad_output * n).T @ (grad_output * n) / n
    damped_a = a + math.sqrt(damping) * torch.eye(a.shape[0], dtype=a.dtype)
    damped_g = g + math.sqrt(damping) * torch.eye(g.shape[0], dtype=g.dtype)
    # Column-stacked vec: vec(G⁻¹ ∇ A⁻¹) = (A ⊗ G)⁻¹ vec(∇) for symmetric A, G.
    vec_grad = grad.T.reshape(-1)
    vec_step = torch.linalg.solve(torch.kron(damped_a, damped_g), vec_grad)
    expected = before - lr * vec_step.reshape(grad.shape[1], grad.shape[0]).T

    optimizer = KFAC(layer, lr=lr, damping=damping, kl_clip=math.inf)
    optimizer.step(_mse_closure(optimizer, layer, inputs, targets))
    after = torch.cat([layer.weight, layer.bias[:, None]], 1) if bias else layer.weight
    torch.testing.assert_close(after.detach(), expected)


def test_one_output_least_squares_reaches_exact_minimizer_in_one_step():
    """With one output, G is the scalar 4·loss, so the empirical-Fisher K-FAC step is the Newton step scaled by
    1/(2·loss): lr = 2·loss makes it exactly Newton, which solves least squares in one step."""
    inputs = torch.randn(40, 3, dtype=torch.float64)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3
    targets += 0.1 * torch.randn_like(targets)
    layer = nn.Linear(3, 1).double()
    with torch.no_grad():
        initial_loss = float(nn.functional.mse_loss(layer(inputs), targets))
    design = torch.cat([inputs, torch.ones(40, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, targets).solution.squeeze(1)

    optimizer = KFAC(layer, lr=2 * initial_loss, damping=1e-20, kl_clip=math.inf)
    optimizer.step(_mse_closure(optimizer, layer, inputs, targets))

    torch.testing.assert_close(torch.cat([layer.weight[0], layer.bias]).detach(), solution)


@pytest.mark.parametrize("kl_clip", [1e-4, 1e-1])
def test_kl_clip_scales_the_step_to_the_cap_only_when_it_exceeds_it(kl_clip):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    inputs, targets = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    lr = 0.5
    unclipped_model = copy.deepcopy(model)
    unclipped = KFAC(unclipped_model, lr=lr, kl_clip=math.inf)
    unclipped.step(_mse_closure(unclipped, unclipped_model, inputs, targets))
    grads = [p.grad.clone() for p in unclipped_model.parameters()]
    directions = [(p0 - p1).detach() / lr for p0, p1 in zip(model.parameters(), unclipped_model.parameters())]
    fisher_norm = lr**2 * sum(float((g * d).sum()) for g, d in zip(grads, directions))
    scale = min(1.0, math.sqrt(kl_clip / fisher_norm))
    expected = [p.detach() - lr * scale * d for p, d in zip(model.parameters(), directions)]

    clipped = KFAC(model, lr=lr, kl_clip=kl_clip)
    clipped.step(_mse_closure(clipped, model, inputs, targets))
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q)


def test_converges_on_least_squares():
    inputs = torch.randn(64, 5)
    true_weight = torch.randn(2, 5)
    targets = inputs @ true_weight.T + 0.05 * torch.randn(64, 2)
    layer = nn.Linear(5, 2)
    design = torch.cat([inputs, torch.ones(64, 1)], 1)
    solution = torch.linalg.lstsq(design, targets).solution
    best_loss = float(nn.functional.mse_loss(design @ solution, targets))

    optimizer = KFAC(layer, lr=0.1, update_every=10)
    closure = _mse_closure(optimizer, layer, inputs, targets)
    for _ in range(300):
        optimizer.step(closure)
    with torch.no_grad():
        final_loss = float(nn.functional.mse_loss(layer(inputs), targets))
    assert final_loss < 1.01 * best_loss, (final_loss, best_loss)


def test_converges_on_small_nonlinear_regression():
    inputs = torch.linspace(-2, 2, 128).unsqueeze(1)
    targets = torch.sin(2 * inputs) + 0.5 * inputs
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = KFAC(model, lr=0.1, update_every=10)
    closure = _mse_closure(optimizer, model, inputs, targets)
    initial = float(closure())
    for _ in range(300):
        optimizer.step(closure)
    final = float(closure())
    assert final < 1e-2 * initial, (initial, final)


def test_parameters_outside_linear_layers_get_sgd_steps():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 1)
            self.scale = nn.Parameter(torch.tensor(1.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * self.linear(x)

    model = Scaled()
    inputs, targets = torch.randn(8, 2), torch.randn(8, 1)
    loss = nn.functional.mse_loss(model(inputs), targets)
    (expected_grad,) = torch.autograd.grad(loss, model.scale)
    expected = model.scale.detach() - 0.1 * expected_grad

    optimizer = KFAC(model, lr=0.1, kl_clip=math.inf)
    optimizer.step(_mse_closure(optimizer, model, inputs, targets))
    torch.testing.assert_close(model.scale.detach(), expected)


def _trajectory(model, optimizer, inputs, targets, steps):
    closure = _mse_closure(optimizer, model, inputs, targets)
    return torch.tensor([float(optimizer.step(closure)) for _ in range(steps)])


def test_state_dict_round_trip_includes_factors_and_inverses():
    def build():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    inputs, targets = torch.randn(32, 2), torch.randn(32, 1)
    model = build()
    optimizer = KFAC(model, lr=0.05, update_every=3, momentum=0.5)
    _trajectory(model, optimizer, inputs, targets, 4)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert {"input_factor", "output_grad_factor", "input_inverse", "output_grad_inverse"} <= set(
        saved_optimizer["state"][0]
    )
    expected = _trajectory(model, optimizer, inputs, targets, 5)

    resumed = build()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = KFAC(resumed, lr=0.05, update_every=3, momentum=0.5)
    resumed_optimizer.load_state_dict(saved_optimizer)
    torch.testing.assert_close(_trajectory(resumed, resumed_optimizer, inputs, targets, 5), expected)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)


def test_forward_passes_outside_step_are_not_recorded_and_hold_no_memory():
    layer = nn.Linear(3, 2).double()
    inputs, targets = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    optimizer = KFAC(layer, lr=0.1)
    # An evaluation pass with a backward outside step must not leak into the next step's factors.
    nn.functional.mse_loss(layer(torch.randn(50, 3, dtype=torch.float64) * 10), targets[:1]).backward()
    assert optimizer._batch == {}
    expected_a, expected_g = _by_hand_factors(layer, inputs, targets)
    optimizer.step(_mse_closure(optimizer, layer, inputs, targets))
    torch.testing.assert_close(optimizer.state[layer.weight]["input_factor"], expected_a)
    torch.testing.assert_close(optimizer.state[layer.weight]["output_grad_factor"], expected_g)
    assert optimizer._batch == {}


def test_hooks_keep_no_activation_alive_after_the_step():
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    inputs, targets = torch.randn(16, 2), torch.randn(16, 1)
    hidden: list[weakref.ref] = []  # to the activations' storage: a detached view would keep it alive
    model[2].register_forward_pre_hook(lambda module, args: hidden.append(weakref.ref(args[0].untyped_storage())))
    optimizer = KFAC(model, lr=0.1)
    closure = _mse_closure(optimizer, model, inputs, targets)
    for _ in range(3):
        optimizer.step(closure)
    gc.collect()
    assert len(hidden) == 3 and all(ref() is None for ref in hidden)


def test_remove_hooks_and_context_manager_detach_from_the_model():
    layer = nn.Linear(2, 1)
    with KFAC(layer, lr=0.1) as optimizer:
        assert len(layer._forward_hooks) == 1
    assert len(layer._forward_hooks) == 0
    assert optimizer.hooks_removed
    with pytest.raises(ValueError, match="remove_hooks"):
        optimizer.step(_mse_closure(optimizer, layer, torch.randn(4, 2), torch.randn(4, 1)))


def test_garbage_collected_optimizer_removes_its_hooks():
    layer = nn.Linear(2, 1)
    optimizer = KFAC(layer, lr=0.1)
    optimizer.step(_mse_closure(optimizer, layer, torch.randn(4, 2), torch.randn(4, 1)))
    reference = weakref.ref(optimizer)
    del optimizer
    gc.collect()
    assert reference() is None
    assert len(layer._forward_hooks) == 0


def test_model_called_outside_the_closure_is_a_clear_error():
    layer = nn.Linear(2, 1)
    inputs, targets = torch.randn(4, 2), torch.randn(4, 1)
    optimizer = KFAC(layer, lr=0.1)
    nn.functional.mse_loss(layer(inputs), targets).backward()
    with pytest.raises(ValueError, match="inside the closure"):
        optimizer.step(lambda: torch.tensor(1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"damping": -1.0}, "damping"),
        ({"update_every": 0}, "update_every"),
        ({"factor_decay": 1.0}, "factor_decay"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_are_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KFAC(nn.Linear(2, 1), **kwargs)


def test_parameters_instead_of_model_is_a_clear_value_error():
    with pytest.raises(ValueError, match="takes the model"):
        KFAC(nn.Linear(2, 1).parameters())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_leaves_parameters_and_factors_untouched(bad):
    layer = nn.Linear(3, 2)
    inputs, targets = torch.randn(8, 3), torch.randn(8, 2)
    optimizer = KFAC(layer, lr=0.1, momentum=0.9)
    optimizer.step(_mse_closure(optimizer, layer, inputs, targets))
    before = copy.deepcopy((list(layer.parameters()), optimizer.state_dict()))
    bad_closure = make_closure(optimizer, lambda: nn.functional.mse_loss(layer(inputs), targets) * bad)
    with pytest.raises(NonFiniteLossError, match="not finite"):
        optimizer.step(bad_closure)
    for p, q in zip(layer.parameters(), before[0]):
        assert torch.equal(p.detach(), q.detach())
    for key, value in optimizer.state_dict()["state"][0].items():
        expected = before[1]["state"][0][key]
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected)), key
