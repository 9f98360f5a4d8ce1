"""AdaHessian (J) and (E) against hand computations and the dense Hessian, its schedule, and convergence."""

from __future__ import annotations

import math

import pytest
import torch

from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.optim.adahessian import DEFAULT_HESSIAN_POWER, AdaHessian

BETAS = (0.9, 0.999)
EPS = 1e-4




@pytest.mark.parametrize("variant", ["jacobi", "equilibration"])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_first_step_on_a_diagonal_hessian_matches_hand_computation(variant, power):
    """H = diag(h): v ⊙ Hv = h and (Hv)² = h² exactly, so both variants give D = |h| after one estimate."""
    h = torch.tensor([4.0, 1.0, -0.25, 9.0], dtype=torch.float64)
    x = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    optimizer = AdaHessian([x], lr=0.1, betas=BETAS, eps=EPS, hessian_power=power, variant=variant)
    optimizer.step(make_closure(optimizer, lambda: 0.5 * (h * x**2).sum()))
    statistic = h if variant == "jacobi" else h**2  # what the EMA accumulates
    torch.testing.assert_close(optimizer.state[x]["exp_avg_curvature"], (1 - BETAS[1]) * statistic)
    torch.testing.assert_close(x.detach(), x0 - 0.1 * (h * x0) / (h.abs() ** power + EPS))


@pytest.mark.parametrize("variant", ["jacobi", "equilibration"])
def test_preconditioner_converges_to_abs_diagonal_or_row_norms_of_a_dense_hessian(variant, spd_quadratic):
    """On a quadratic H = A is constant: after K estimates the bias-corrected EMA is a β2-weighted mean of K
    Rademacher samples, so D → |diag A| (Jacobi) or the row norms of A (equilibration)."""
    a, _, x, loss = spd_quadratic()
    steps, beta2 = 1500, BETAS[1]
    optimizer = AdaHessian([x], lr=1e-3, variant=variant, hessian_power=1.0)
    closure = make_closure(optimizer, loss)
    for _ in range(steps):
        optimizer.step(closure)
    mean = optimizer.state[x]["exp_avg_curvature"] / (1 - beta2**steps)
    weights = beta2 ** torch.arange(steps, dtype=torch.float64)
    effective_samples = weights.sum() ** 2 / (weights**2).sum()
    diag, row_sq = a.diagonal(), (a**2).sum(1)
    if variant == "jacobi":
        expected, sample_variance = diag, row_sq - diag**2  # Var[(v ⊙ Av)_i] = Σ_{j≠i} A_ij²
        expected_preconditioner = diag.abs()
    else:
        expected, sample_variance = row_sq, 2 * (row_sq**2 - (a**4).sum(1))  # Var[(Av)_i²]
        expected_preconditioner = row_sq.sqrt()
    assert torch.all((mean - expected).abs() <= 6 * (sample_variance / effective_samples).sqrt())
    preconditioner = optimizer._preconditioner(optimizer.state[x], optimizer.param_groups[0])
    torch.testing.assert_close(preconditioner, mean.abs() if variant == "jacobi" else mean.sqrt())
    # the two variants estimate different things on a dense Hessian: |diag A| < ‖A_i,·‖ here
    assert torch.all(diag.abs() < row_sq.sqrt() - 0.05)
    assert torch.all((preconditioner - expected_preconditioner).abs() < 0.5 * (row_sq.sqrt() - diag.abs()))


def test_default_schedule_estimates_every_step_and_update_every_thins_it():
    x = torch.randn(3, requires_grad=True)
    for update_every, expected in [(1, list(range(10))), (4, [0, 4, 8])]:
        optimizer = AdaHessian([x], lr=1e-3, update_every=update_every)
        closure = make_closure(optimizer, lambda: (x**2).sum())
        flagged = []
        for t in range(10):
            if optimizer.needs_graph:
                flagged.append(t)
            optimizer.step(closure)
        assert flagged == expected
        assert optimizer.param_groups[0]["curvature_updates"] == len(expected)


def test_hessian_power_default_depends_on_the_variant():
    x = torch.zeros(2, requires_grad=True)
    for variant, power in DEFAULT_HESSIAN_POWER.items():
        assert AdaHessian([x], variant=variant).param_groups[0]["hessian_power"] == power
    assert DEFAULT_HESSIAN_POWER == {"jacobi": 0.5, "equilibration": 1.0}
    assert AdaHessian([x], variant="jacobi", hessian_power=1.0).param_groups[0]["hessian_power"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"variant": "diagonal"}, "variant"),
        ({"hessian_power": 0.0}, "hessian_power"),
        ({"hessian_power": 2.0}, "hessian_power"),
        ({"update_every": 0}, "update_every"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": -1e-4}, "eps"),
    ],
)
def test_bad_hyperparameters_are_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaHessian([torch.zeros(2, requires_grad=True)], **kwargs)


def test_nan_loss_is_refused_before_any_state():
    x = torch.randn(3, requires_grad=True)
    optimizer = AdaHessian([x])
    with pytest.raises(NonFiniteLossError):
        optimizer.step(make_closure(optimizer, lambda: (x**2).sum() * math.inf))
    assert not optimizer.state and optimizer.param_groups[0]["step"] == 0


def test_weight_decay_is_decoupled():
    """With a zero loss gradient, a step only shrinks θ by (1 − lr·wd)."""
    x = torch.tensor([2.0, -4.0], dtype=torch.float64, requires_grad=True)
    optimizer = AdaHessian([x], lr=0.1, weight_decay=0.5, variant="equilibration")
    optimizer.step(make_closure(optimizer, lambda: (x * 0).sum() + 0 * (x**2).sum()))
    torch.testing.assert_close(x.detach(), torch.tensor([2.0, -4.0], dtype=torch.float64) * (1 - 0.1 * 0.5))


# Convergence; lrs from the same coarse sweep over {0.03, 0.1, 0.3, 1, 2} as test_esgd.py.
CONFIGS = [
    pytest.param({"variant": "jacobi", "lr": 0.1}, id="jacobi-power-half"),
    pytest.param({"variant": "jacobi", "hessian_power": 1.0, "lr": 2.0}, id="jacobi-power-one"),
    pytest.param({"variant": "equilibration", "lr": 2.0}, id="equilibration"),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_converges_on_a_convex_quadratic_to_its_known_minimiser(kwargs, spd_quadratic):
    _, minimiser, x, loss = spd_quadratic()
    optimizer = AdaHessian([x], **kwargs)
    closure = make_closure(optimizer, loss)
    for _ in range(1500):
        optimizer.step(closure)
    assert (x.detach() - minimiser).norm() <= 1e-3 * minimiser.norm()


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_reaches_the_rosenbrock_minimum_from_the_classic_start(kwargs, rosenbrock):
    x = torch.tensor([-1.5, 2.0], requires_grad=True)
    optimizer = AdaHessian([x], **kwargs)
    closure = make_closure(optimizer, lambda: rosenbrock(x))
    for _ in range(3000):
        optimizer.step(closure)
    assert (x.detach() - 1.0).norm() < 0.05, x.detach()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["jacobi", "equilibration"])
def test_runs_on_cuda(variant):
    x = torch.ones(4, device="cuda", requires_grad=True)
    optimizer = AdaHessian([x], lr=0.1, variant=variant)
    closure = make_closure(optimizer, lambda: (x**4).sum())
    for _ in range(5):
        optimizer.step(closure)
    assert optimizer.state[x]["exp_avg_curvature"].device.type == "cuda"
