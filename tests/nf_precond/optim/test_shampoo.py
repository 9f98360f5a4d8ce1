"""Shampoo against dense math: the inverse 4th root against scipy, steps replayed with L^{-1/4} G R^{-1/4} computed
directly, the diagonal rule, root refresh schedule, convergence on least squares and Rosenbrock, and refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.optim.shampoo import Shampoo, matrix_inverse_root


def _inverse_root_scipy(matrix: np.ndarray, root: int) -> np.ndarray:
    return np.real(scipy.linalg.fractional_matrix_power(matrix, -1.0 / root))


def _spd(size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(size, size + 2, generator=generator, dtype=torch.float64)
    return factor @ factor.T / size + 1e-3 * torch.eye(size, dtype=torch.float64)


@pytest.mark.parametrize("size", [1, 3, 8])
@pytest.mark.parametrize("root", [2, 4])
def test_matrix_inverse_root_matches_scipy(size, root):
    matrix = _spd(size, seed=size)
    expected = torch.from_numpy(_inverse_root_scipy(matrix.numpy(), root))
    torch.testing.assert_close(matrix_inverse_root(matrix, root, floor=1e-12), expected)


def test_matrix_inverse_root_clamps_eigenvalues_at_the_floor():
    matrix = torch.diag(torch.tensor([4.0, 1e-9, -1e-7], dtype=torch.float64))
    expected = torch.diag(torch.tensor([4.0, 1e-4, 1e-4], dtype=torch.float64) ** -0.25)
    torch.testing.assert_close(matrix_inverse_root(matrix, 4, floor=1e-4), expected)


def _batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    return [(draw(6, 3), draw(6, 4)) for _ in range(count)]


def _loss(weight: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((inputs @ weight.T - targets) ** 2).sum() + (weight**4).sum()


def _replay(weight0, batches, lr, eps, update_every, momentum=0.0, weight_decay=0.0):
    """Algorithm 1 step by step in numpy/scipy, roots refreshed on steps t <= k and t % k == 0."""
    weight = weight0.detach().clone().numpy()
    rows, cols = weight.shape
    left, right = eps * np.eye(rows), eps * np.eye(cols)
    left_root, right_root = np.eye(rows), np.eye(cols)
    buffer = np.zeros_like(weight)
    for t, (inputs, targets) in enumerate(batches, start=1):
        w = torch.tensor(weight, requires_grad=True)
        (grad,) = torch.autograd.grad(_loss(w, inputs, targets), w)
        grad = grad.numpy() + weight_decay * weight
        left += grad @ grad.T
        right += grad.T @ grad
        if t <= update_every or t % update_every == 0:
            left_root, right_root = _inverse_root_scipy(left, 4), _inverse_root_scipy(right, 4)
        buffer = momentum * buffer + left_root @ grad @ right_root
        weight = weight - lr * buffer
    return torch.from_numpy(weight)


def _run_shampoo(weight0, batches, **kwargs):
    weight = nn.Parameter(weight0.clone())
    optimizer = Shampoo([weight], **kwargs)
    for inputs, targets in batches:
        optimizer.step(make_closure(optimizer, lambda: _loss(weight, inputs, targets)))
    return weight.detach()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"update_every": 1},
        {"update_every": 2},
        {"update_every": 3, "momentum": 0.7},
        {"update_every": 1, "weight_decay": 0.3},
    ],
    ids=["every-step", "refresh-2", "refresh-3-momentum", "weight-decay"],
)
def test_matrix_steps_equal_direct_left_right_inverse_roots(kwargs):
    weight0 = 0.5 * torch.randn(4, 3, dtype=torch.float64)
    batches = _batches(7)
    expected = _replay(weight0, batches, lr=0.2, eps=1e-3, **kwargs)
    actual = _run_shampoo(weight0, batches, lr=0.2, eps=1e-3, **kwargs)
    torch.testing.assert_close(actual, expected)


def test_stale_roots_differ_from_fresh_roots():
    """The refresh schedule matters (so the replay test above can tell schedules apart)."""
    weight0 = 0.5 * torch.randn(4, 3, dtype=torch.float64)
    batches = _batches(7)
    fresh = _run_shampoo(weight0, batches, lr=0.2, eps=1e-3, update_every=1)
    stale = _run_shampoo(weight0, batches, lr=0.2, eps=1e-3, update_every=3)
    assert not torch.allclose(fresh, stale)


@pytest.mark.parametrize("shape", [(5,), ()], ids=["vector", "scalar"])
def test_vectors_and_scalars_get_diagonal_adagrad(shape):
    param = nn.Parameter(torch.randn(shape, dtype=torch.float64))
    target = torch.randn(shape, dtype=torch.float64)
    lr, eps = 0.1, 1e-3
    optimizer = Shampoo([param], lr=lr, eps=eps)
    closure = make_closure(optimizer, lambda: ((param - target) ** 4).sum())
    value, accumulator = param.detach().clone(), torch.full(shape, eps, dtype=torch.float64)
    for _ in range(4):
        grad = 4 * (value - target) ** 3
        accumulator += grad**2
        value = value - lr * grad / accumulator.sqrt()
        optimizer.step(closure)
    torch.testing.assert_close(param.detach(), value)


def test_matrices_wider_than_max_preconditioner_dim_fall_back_to_diagonal():
    weight0 = torch.randn(2, 6, dtype=torch.float64)
    batches = [(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))]
    narrow = nn.Parameter(weight0.clone())
    optimizer = Shampoo([narrow], lr=0.1, eps=1e-3, max_preconditioner_dim=5)
    inputs, targets = batches[0]
    optimizer.step(make_closure(optimizer, lambda: _loss(narrow, inputs, targets)))
    assert "diagonal" in optimizer.state[narrow] and "left" not in optimizer.state[narrow]
    w = weight0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_loss(w, inputs, targets), w)
    torch.testing.assert_close(narrow.detach(), weight0 - 0.1 * grad / (1e-3 + grad**2).sqrt())


def test_converges_on_least_squares():
    inputs = torch.randn(64, 5)
    targets = inputs @ torch.randn(5, 2) + 0.05 * torch.randn(64, 2)
    layer = nn.Linear(5, 2)
    design = torch.cat([inputs, torch.ones(64, 1)], 1)
    best_loss = float(nn.functional.mse_loss(design @ torch.linalg.lstsq(design, targets).solution, targets))
    optimizer = Shampoo(layer.parameters(), lr=0.1, momentum=0.9)
    closure = make_closure(optimizer, lambda: nn.functional.mse_loss(layer(inputs), targets))
    for _ in range(500):
        optimizer.step(closure)
    with torch.no_grad():
        final_loss = float(nn.functional.mse_loss(layer(inputs), targets))
    assert final_loss < 1.01 * best_loss, (final_loss, best_loss)


def _rosenbrock(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


@pytest.mark.slow
@pytest.mark.parametrize("as_matrix", [True, False], ids=["1x2-matrix", "two-scalars"])
def test_converges_on_rosenbrock(as_matrix):
    if as_matrix:
        params = [nn.Parameter(torch.tensor([[-1.5, 2.0]], dtype=torch.float64))]
        loss = lambda: _rosenbrock(params[0][0, 0], params[0][0, 1])  # noqa: E731
    else:
        params = [nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (-1.5, 2.0)]
        loss = lambda: _rosenbrock(*params)  # noqa: E731
    optimizer = Shampoo(params, lr=0.3, momentum=0.9)
    closure = make_closure(optimizer, loss)
    for _ in range(5000):
        optimizer.step(closure)
    point = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(point, torch.ones(2, dtype=torch.float64), atol=1e-2, rtol=0)


def test_state_dict_round_trip_mid_refresh_interval():
    def build():
        torch.manual_seed(2)
        return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    inputs, targets = torch.randn(32, 2), torch.randn(32, 1)

    def run(model, optimizer, steps):
        closure = make_closure(optimizer, lambda: nn.functional.mse_loss(model(inputs), targets))
        return torch.tensor([float(optimizer.step(closure)) for _ in range(steps)])

    model = build()
    optimizer = Shampoo(model.parameters(), lr=0.05, update_every=3, momentum=0.5)
    run(model, optimizer, 4)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    expected = run(model, optimizer, 5)

    resumed = build()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = Shampoo(resumed.parameters(), lr=0.05, update_every=3, momentum=0.5)
    resumed_optimizer.load_state_dict(saved_optimizer)
    torch.testing.assert_close(run(resumed, resumed_optimizer, 5), expected)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1.0}, "lr"),
        ({"eps": 0.0}, "eps"),
        ({"update_every": 0}, "update_every"),
        ({"update_every": 2.5}, "update_every"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"max_preconditioner_dim": 0}, "max_preconditioner_dim"),
    ],
)
def test_bad_hyperparameters_are_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Shampoo(nn.Linear(2, 1).parameters(), **kwargs)


def test_step_without_closure_is_a_clear_value_error():
    with pytest.raises(ValueError, match="closure"):
        Shampoo(nn.Linear(2, 1).parameters()).step(None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_leaves_parameters_and_statistics_untouched(bad):
    layer = nn.Linear(3, 2)
    inputs, targets = torch.randn(8, 3), torch.randn(8, 2)
    optimizer = Shampoo(layer.parameters(), lr=0.1, momentum=0.9)
    optimizer.step(make_closure(optimizer, lambda: nn.functional.mse_loss(layer(inputs), targets)))
    before = copy.deepcopy((list(layer.parameters()), optimizer.state_dict()))
    with pytest.raises(NonFiniteLossError, match="not finite"):
        optimizer.step(make_closure(optimizer, lambda: nn.functional.mse_loss(layer(inputs), targets) * bad))
    for p, q in zip(layer.parameters(), before[0]):
        assert torch.equal(p.detach(), q.detach())
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(before[1]["state"][index][key])), key
