"""ESGD and ESGD-max against hand computations on quadratics with known Hessians, the curvature schedule, and
convergence on a convex quadratic and on Rosenbrock."""

from __future__ import annotations

import math

import pytest
import torch

from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.optim.adahessian import AdaHessian
from nf_precond.optim.esgd import ESGD
from nf_precond.optim.esgd_max import ESGDMax

BETAS = (0.9, 0.999)
EPS = 1e-4


def _curvature_steps(optimizer, closure, steps: int) -> list[int]:
    """The steps (from 0) on which ``needs_graph`` was True."""
    flagged = []
    for t in range(steps):
        if optimizer.needs_graph:
            flagged.append(t)
        optimizer.step(closure)
    return flagged


def _diagonal_quadratic():
    """0.5 Σ h_i x_i²: H = diag(h) (one negative entry), so v ⊙ Hv = h and (Hv)² = h² for every Rademacher v."""
    h = torch.tensor([4.0, 1.0, -0.25, 9.0], dtype=torch.float64)
    x = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    return h, x, lambda: 0.5 * (h * x**2).sum()




# ---------------------------------------------------------------------------------------------------------------
# Schedule


def test_needs_graph_every_step_in_warmup_then_every_update_every():
    x = torch.randn(3, requires_grad=True)
    optimizer = ESGD([x], lr=0.01, warmup=3, update_every=4)
    flagged = _curvature_steps(optimizer, make_closure(optimizer, lambda: (x**2).sum()), 20)
    assert flagged == [0, 1, 2, 6, 10, 14, 18]  # warm-up 0..2, then 4 steps after the last warm-up estimate
    assert optimizer.param_groups[0]["curvature_updates"] == len(flagged)


def test_paper_schedule_is_50_warmup_steps_then_every_100():
    x = torch.randn(2, requires_grad=True)
    optimizer = ESGD([x], lr=1e-3)
    flagged = _curvature_steps(optimizer, make_closure(optimizer, lambda: (x**2).sum()), 260)
    assert flagged == list(range(50)) + [149, 249]


@pytest.mark.parametrize("cls", [ESGD, ESGDMax])
def test_curvature_state_changes_only_on_curvature_steps(cls):
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    optimizer = cls([x], lr=0.01, warmup=2, update_every=3)
    closure = make_closure(optimizer, lambda: (x**4).sum())  # H = diag(12 x²) moves with x
    key = "exp_avg_hv_sq" if cls is ESGD else "max_abs_hv"
    changed = []
    previous = None
    for t in range(9):
        optimizer.step(closure)
        current = optimizer.state[x][key].clone()
        if previous is None or not torch.equal(current, previous):
            changed.append(t)
        previous = current
    assert changed == [0, 1, 4, 7]


def test_curvature_step_without_graph_is_a_clear_error_and_leaves_params():
    x = torch.randn(3, requires_grad=True)
    before = x.detach().clone()
    optimizer = ESGD([x])

    def closure_without_graph():
        optimizer.zero_grad()
        loss = (x**2).sum()
        loss.backward()  # forgot create_graph
        return loss

    with pytest.raises(ValueError, match="create_graph=True"):
        optimizer.step(closure_without_graph)
    assert torch.equal(x.detach(), before)


def test_step_without_closure_names_make_closure():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="make_closure"):
        ESGD([x]).step()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": 0.0}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9, -0.1)}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"warmup": 0}, "warmup"),
        ({"update_every": 0}, "update_every"),
        ({"update_every": 2.5}, "update_every"),
        ({"preconditioner_power": 0.0}, "preconditioner_power"),
        ({"preconditioner_power": 1.5}, "preconditioner_power"),
    ],
)
@pytest.mark.parametrize("cls", [ESGD, ESGDMax])
def test_bad_hyperparameters_are_value_errors_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_bias_correction_is_a_value_error():
    with pytest.raises(ValueError, match="bias_correction"):
        ESGD([torch.zeros(2, requires_grad=True)], bias_correction="epochs")


@pytest.mark.parametrize("cls", [ESGD, ESGDMax])
def test_nan_loss_is_refused_before_any_state(cls):
    x = torch.randn(3, requires_grad=True)
    optimizer = cls([x])
    with pytest.raises(NonFiniteLossError):
        optimizer.step(make_closure(optimizer, lambda: (x**2).sum() * math.nan))
    assert not optimizer.state and optimizer.param_groups[0]["step"] == 0


# ---------------------------------------------------------------------------------------------------------------
# The preconditioner against hand computations


@pytest.mark.parametrize("power", [0.5, 0.25])
@pytest.mark.parametrize("bias_correction", ["updates", "steps"])
def test_esgd_two_steps_on_a_diagonal_hessian_match_hand_computation(power, bias_correction):
    h, x, loss = _diagonal_quadratic()
    x0 = x.detach().clone()
    lr, (beta1, beta2) = 0.1, BETAS
    optimizer = ESGD([x], lr=lr, betas=BETAS, eps=EPS, warmup=1, update_every=10, preconditioner_power=power,
                     bias_correction=bias_correction)  # fmt: skip
    closure = make_closure(optimizer, loss)

    # Step 1 (curvature): d = (1-β2) h², corrected by 1-β2 (k = t = 1) -> h²; m̂ = g.
    optimizer.step(closure)
    d = (1 - beta2) * h**2
    x1 = x0 - lr * (h * x0) / ((h**2) ** power + EPS)
    torch.testing.assert_close(optimizer.state[x]["exp_avg_hv_sq"], d)
    torch.testing.assert_close(x.detach(), x1)

    # Step 2 (no curvature): d unchanged; corrected by 1-β2^k (k = 1) or 1-β2^t (t = 2).
    optimizer.step(closure)
    count = 1 if bias_correction == "updates" else 2
    m = beta1 * (1 - beta1) * (h * x0) + (1 - beta1) * (h * x1)
    x2 = x1 - lr * (m / (1 - beta1**2)) / ((d / (1 - beta2**count)) ** power + EPS)
    torch.testing.assert_close(x.detach(), x2)


@pytest.mark.parametrize("power", [0.5, 0.25])
def test_esgd_max_keeps_a_decayed_running_max_of_abs_hv(power):
    h, x, loss = _diagonal_quadratic()
    x0 = x.detach().clone()
    lr, beta2 = 0.1, 0.5  # a small β2 so the decay is visible
    optimizer = ESGDMax([x], lr=lr, betas=(0.9, beta2), eps=EPS, warmup=2, update_every=10, preconditioner_power=power)
    closure = make_closure(optimizer, loss)
    optimizer.step(closure)
    torch.testing.assert_close(optimizer.state[x]["max_abs_hv"], h.abs())  # max(0, |h|)
    torch.testing.assert_close(x.detach(), x0 - lr * (h * x0) / (h.abs() ** (2 * power) + EPS))
    optimizer.step(closure)  # max(β2 |h|, |h|) = |h|: the fresh estimate wins
    torch.testing.assert_close(optimizer.state[x]["max_abs_hv"], h.abs())


def test_esgd_max_decays_when_curvature_shrinks():
    scale = torch.tensor(1.0, dtype=torch.float64)
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    optimizer = ESGDMax([x], lr=1e-3, betas=(0.9, 0.5), warmup=3)
    closure = make_closure(optimizer, lambda: 0.5 * scale * (x**2).sum())  # H = scale·I
    for new_scale, expected in [(4.0, 4.0), (1.0, 2.0), (1.0, 1.0)]:  # max(0.5·previous, current)
        scale.fill_(new_scale)
        optimizer.step(closure)
        torch.testing.assert_close(optimizer.state[x]["max_abs_hv"], torch.full((2,), expected, dtype=torch.float64))


def test_esgd_curvature_average_converges_to_row_norms_of_a_dense_hessian(spd_quadratic):
    """On a quadratic, H is constant: after K curvature steps, d̂ is a β2-weighted mean of K samples of (Hv)², whose
    expectation is the squared row norm of A (so D^E = sqrt(d̂) → ‖A_i,·‖)."""
    a, _, x, loss = spd_quadratic()
    steps, beta2 = 1500, BETAS[1]
    optimizer = ESGD([x], lr=1e-3, warmup=steps, preconditioner_power=0.5)
    closure = make_closure(optimizer, loss)
    for _ in range(steps):
        optimizer.step(closure)
    estimate = optimizer.state[x]["exp_avg_hv_sq"] / (1 - beta2**steps)
    row_sq = (a**2).sum(1)
    weights = beta2 ** torch.arange(steps, dtype=torch.float64)
    effective_samples = weights.sum() ** 2 / (weights**2).sum()
    sample_variance = 2 * (row_sq**2 - (a**4).sum(1))  # Var[(Hv)_i²] for Rademacher v
    assert torch.all((estimate - row_sq).abs() <= 6 * (sample_variance / effective_samples).sqrt())
    # and the preconditioner the step uses is its square root (p = 0.5), i.e. D^E
    torch.testing.assert_close(optimizer._preconditioner(optimizer.state[x], optimizer.param_groups[0]),
                               estimate.sqrt())  # fmt: skip


def test_esgd_every_step_equals_adahessian_equilibration_power_one(rosenbrock):
    """Two implementations of one update: ESGD with p = ½ estimating curvature every step is AdaHessian(E)."""
    trajectories = []
    for make in (
        lambda p: ESGD([p], warmup=1, update_every=1, preconditioner_power=0.5, bias_correction="updates"),
        lambda p: AdaHessian([p], variant="equilibration", hessian_power=1.0),
    ):
        torch.manual_seed(7)
        x = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
        optimizer = make(x)
        closure = make_closure(optimizer, lambda: rosenbrock(x))
        trajectories.append(torch.stack([optimizer.step(closure) for _ in range(30)]))
    torch.testing.assert_close(trajectories[0], trajectories[1])


def test_same_seed_same_trajectory_and_seed_matters(spd_quadratic):
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        _, _, x, loss = spd_quadratic()
        optimizer = ESGD([x], lr=0.05, warmup=5, update_every=2)
        closure = make_closure(optimizer, loss)
        for _ in range(12):
            optimizer.step(closure)
        return x.detach()

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# ---------------------------------------------------------------------------------------------------------------
# Convergence. The lrs come from one coarse sweep over {0.03, 0.1, 0.3, 1, 2}: p = ½ divides by a curvature (a
# Newton-like scale, lr ~1-2), p = ¼ by its square root (lr ~0.1).

CONFIGS = [
    pytest.param(ESGD, {"preconditioner_power": 0.25, "lr": 0.1, "bias_correction": "steps"}, id="esgd-eq6-t"),
    pytest.param(ESGD, {"preconditioner_power": 0.25, "lr": 0.1, "bias_correction": "updates"}, id="esgd-eq6-k"),
    pytest.param(ESGD, {"preconditioner_power": 0.5, "lr": 2.0, "bias_correction": "steps"}, id="esgd-released-t"),
    pytest.param(ESGD, {"preconditioner_power": 0.5, "lr": 2.0, "bias_correction": "updates"}, id="esgd-released-k"),
    pytest.param(ESGDMax, {"preconditioner_power": 0.25, "lr": 0.3}, id="esgd-max-eq6"),
    pytest.param(ESGDMax, {"preconditioner_power": 0.5, "lr": 2.0}, id="esgd-max-released"),
]


@pytest.mark.parametrize(("cls", "kwargs"), CONFIGS)
def test_converges_on_a_convex_quadratic_to_its_known_minimiser(cls, kwargs, spd_quadratic):
    _, minimiser, x, loss = spd_quadratic()
    optimizer = cls([x], warmup=20, update_every=50, **kwargs)
    closure = make_closure(optimizer, loss)
    for _ in range(1500):
        optimizer.step(closure)
    assert (x.detach() - minimiser).norm() <= 1e-3 * minimiser.norm()


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "kwargs"), [c for c in CONFIGS if c.id != "esgd-max-released"])
def test_reaches_the_rosenbrock_minimum_from_the_classic_start(cls, kwargs, rosenbrock):
    x = torch.tensor([-1.5, 2.0], requires_grad=True)
    optimizer = cls([x], **kwargs)  # paper schedule: warm-up 50, then every 100
    closure = make_closure(optimizer, lambda: rosenbrock(x))
    for _ in range(4000):
        optimizer.step(closure)
    assert (x.detach() - 1.0).norm() < 0.05, x.detach()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [ESGD, ESGDMax])
def test_runs_on_cuda(cls):
    h, _, _ = _diagonal_quadratic()
    x = torch.ones(4, dtype=torch.float64, device="cuda", requires_grad=True)
    h = h.cuda()
    optimizer = cls([x], lr=0.1)
    closure = make_closure(optimizer, lambda: 0.5 * (h * x**2).sum())
    for _ in range(5):
        optimizer.step(closure)
    assert optimizer.state[x]["exp_avg"].device.type == "cuda"
