"""LBFGS against ground truth: dense BFGS algebra, torch.optim.LBFGS (the reference twin), quadratics, Rosenbrock."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.lbfgs import _cubic_interpolate, _strong_wolfe

from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.optim.batched_lbfgs import CurvatureHistory, cubic_minimizer, strong_wolfe_search
from nf_precond.optim.lbfgs import LBFGS

F64 = torch.float64


# -- pure functions against their twins ------------------------------------------------------------------------------


Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def two_loop_reference(grad: torch.Tensor, pairs: Pairs, gamma: float) -> torch.Tensor:
    """The textbook two-loop recursion (Nocedal & Wright, Alg. 7.4) for one net, pairs oldest first."""
    q = -grad.clone()
    alphas = []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (y @ s)
        q -= alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        beta = (y @ r) / (y @ s)
        r += (alpha - beta) * s
    return r


def dense_bfgs_direction(grad: torch.Tensor, pairs: Pairs, gamma: float) -> torch.Tensor:
    """-H g with H from the BFGS inverse update applied to γI, as dense matrices."""
    eye = torch.eye(len(grad), dtype=grad.dtype)
    inverse_hessian = gamma * eye
    for s, y in pairs:
        rho = 1 / (y @ s)
        v = eye - rho * torch.outer(y, s)
        inverse_hessian = v.T @ inverse_hessian @ v + rho * torch.outer(s, s)
    return -inverse_hessian @ grad


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_history_direction_matches_two_loop_and_dense_bfgs(slots):
    """Per net: skipped pairs (yᵀs <= 0), ring wrap-around, and a different number of pairs per net."""
    num_nets, width, rounds = 3, 6, 11
    generator = torch.Generator().manual_seed(slots)
    curvatures = [torch.randn(width, width, dtype=F64, generator=generator) for _ in range(num_nets)]
    curvatures = [a @ a.T + width * torch.eye(width, dtype=F64) for a in curvatures]
    history = CurvatureHistory.empty(num_nets, slots, torch.zeros(num_nets, width, dtype=F64))
    kept: list[Pairs] = [[] for _ in range(num_nets)]
    for round_ in range(rounds):
        steps = torch.randn(num_nets, width, dtype=F64, generator=generator)
        diffs = torch.stack([curvatures[n] @ steps[n] for n in range(num_nets)])
        # Net 1 gets a negative-curvature pair every third round, net 2 every other round: both must be skipped.
        for net, period in ((1, 3), (2, 2)):
            if round_ % period == 0:
                diffs[net] = -diffs[net]
        grad = torch.randn(num_nets, width, dtype=F64, generator=generator)
        projections = history.add(steps, diffs, grad)
        for n in range(num_nets):
            if diffs[n] @ steps[n] > 0:
                kept[n] = (kept[n] + [(steps[n], diffs[n])])[-slots:]
        fused = history.direction(grad, projections)
        fresh = history.direction(grad)
        for n in range(num_nets):
            s, y = kept[n][-1] if kept[n] else (None, None)
            gamma = float((s @ y) / (y @ y)) if kept[n] else 1.0
            expected = two_loop_reference(grad[n], kept[n], gamma)
            torch.testing.assert_close(fused[n], expected)
            torch.testing.assert_close(fresh[n], expected)
            torch.testing.assert_close(expected, dense_bfgs_direction(grad[n], kept[n], gamma))


def test_cubic_minimizer_matches_torch_twin():
    generator = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(200, dtype=F64, generator=generator), 1 + 3 * torch.rand(200, dtype=F64, generator=generator)
    f1, f2, g1, g2 = torch.randn(4, 200, dtype=F64, generator=generator)
    lower, upper = x1 - 0.5, x2 + 2.0
    for swap in (False, True):
        a, b = ((x2, f2, g2), (x1, f1, g1)) if swap else ((x1, f1, g1), (x2, f2, g2))
        ours = cubic_minimizer(*a, *b, lower, upper)
        theirs = torch.stack(
            [_cubic_interpolate(*(v[i] for v in (*a, *b)), bounds=(lower[i], upper[i])) for i in range(200)]
        )
        torch.testing.assert_close(ours, theirs)


def test_cubic_minimizer_finds_the_minimum_of_a_cubic():
    # p(x) = (x - 1)² (x + 2) has a local minimum at x = 1.
    def p(x):
        return (x - 1) ** 2 * (x + 2)

    def dp(x):
        return 2 * (x - 1) * (x + 2) + (x - 1) ** 2

    x1, x2 = torch.tensor([0.0], dtype=F64), torch.tensor([1.7], dtype=F64)
    got = cubic_minimizer(x1, p(x1), dp(x1), x2, p(x2), dp(x2), x1, x2)
    torch.testing.assert_close(got, torch.tensor([1.0], dtype=F64))


def test_cubic_minimizer_bisects_on_non_finite_input():
    one = torch.ones(1, dtype=F64)
    got = cubic_minimizer(0 * one, one, -one, 2 * one, torch.inf * one, torch.inf * one, 0 * one, 2 * one)
    torch.testing.assert_close(got, one)


def _wiggly(scale: float):
    """A smooth non-convex test function on R^4 and its gradient."""
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64) * scale

    def value_and_grad(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = (torch.sin(a * x) + 0.5 * (x - 1) ** 2).sum() + 0.1 * (x**2).sum() ** 2
            (g,) = torch.autograd.grad(f, x)
        return f.detach(), g

    return value_and_grad


@pytest.mark.parametrize("initial_step", [1e-3, 0.3, 1.0, 30.0])
@pytest.mark.parametrize("max_evals", [2, 4, 25])
def test_batched_line_search_matches_torch_strong_wolfe_per_net(initial_step, max_evals):
    """Nets need different numbers of trials (extend, zoom, run out); each must match torch's search alone."""
    functions = [_wiggly(scale) for scale in (0.5, 1.0, 2.0, 4.0)]
    x0 = torch.tensor([[0.3, -0.2, 0.1, 0.4]], dtype=F64).repeat(len(functions), 1)
    start = [f(x) for f, x in zip(functions, x0)]
    loss0 = torch.stack([f for f, _ in start])
    grad0 = torch.stack([g for _, g in start])
    direction = -grad0

    def evaluate(step, pending):
        values = [f(x + t * d) for f, x, t, d in zip(functions, x0, step, direction)]
        losses, grads = torch.stack([v for v, _ in values]), torch.stack([g for _, g in values])
        # A net that has finished may be skipped: whatever its row holds must not matter.
        return losses.masked_fill(~pending, torch.nan), grads.masked_fill(~pending[:, None], torch.nan)

    steps = torch.full((len(functions),), initial_step, dtype=F64)
    searching = torch.ones(len(functions), dtype=torch.bool)
    ours = strong_wolfe_search(evaluate, direction, loss0, grad0, steps, searching, max_evals)
    for n, f in enumerate(functions):

        def obj_func(x, t, d, f=f):
            value, grad = f(x + t * d)
            return float(value), grad

        loss, grad, step, _ = _strong_wolfe(
            obj_func, x0[n], initial_step, direction[n], float(loss0[n]), grad0[n], grad0[n] @ direction[n],
            max_ls=max_evals - 1,
        )  # fmt: skip
        torch.testing.assert_close(ours.step[n], torch.as_tensor(step, dtype=F64))
        torch.testing.assert_close(ours.loss[n], torch.as_tensor(loss, dtype=F64))
        torch.testing.assert_close(ours.grad[n], grad)


def test_line_search_leaves_non_searching_nets_at_the_start():
    f = _wiggly(1.0)
    x0 = torch.zeros(2, 4, dtype=F64)
    loss0, grad0 = (torch.stack(v) for v in zip(*(f(x) for x in x0)))

    def evaluate(step, pending):
        assert not pending[1]  # the net that does not search is never asked for
        values = [f(x + t * -g) for x, t, g in zip(x0, step, grad0)]
        return torch.stack([v for v, _ in values]), torch.stack([g for _, g in values])

    result = strong_wolfe_search(evaluate, -grad0, loss0, grad0, torch.ones(2, dtype=F64), torch.tensor([True, False]))
    assert result.step[1] == 0 and result.loss[1] == loss0[1]
    assert result.step[0] > 0 and result.loss[0] < loss0[0]


# -- the optimizer ---------------------------------------------------------------------------------------------------


def _quadratic(n: int = 16, condition: float = 1e3):
    generator = torch.Generator().manual_seed(n)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=generator))
    hessian = q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(condition)), n, dtype=F64)) @ q.T
    b = torch.randn(n, dtype=F64, generator=generator)
    return hessian, b, torch.linalg.solve(hessian, b)


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _run_ours(params, loss_fn, steps: int, **kwargs) -> LBFGS:
    optimizer = LBFGS(params, **kwargs)
    closure = make_closure(optimizer, loss_fn)
    for _ in range(steps):
        optimizer.step(closure)
    return optimizer


def _run_torch(params, loss_fn, iterations: int, **kwargs) -> torch.optim.LBFGS:
    """torch.optim.LBFGS doing all iterations in one call, with an evaluation budget that never binds."""
    optimizer = torch.optim.LBFGS(
        params, lr=1, max_iter=iterations, max_eval=25 * iterations, line_search_fn="strong_wolfe", **kwargs
    )
    optimizer.step(make_closure(optimizer, loss_fn))
    return optimizer


@pytest.mark.slow
def test_ill_conditioned_quadratic_is_solved_within_a_few_n_iterations():
    """Finite termination in n iterations needs exact line searches; a strong-Wolfe search (c2 = 0.9) converges
    superlinearly instead. Gradient descent would need ~κ·ln(1e6) ≈ 14000 iterations at κ = 1e3; we allow 3n."""
    n = 16
    hessian, b, solution = _quadratic(n)
    x = torch.zeros(n, dtype=F64, requires_grad=True)
    optimizer = LBFGS([x], tolerance_grad=0, tolerance_change=0)
    closure = make_closure(optimizer, lambda: 0.5 * x @ hessian @ x - b @ x)
    for iteration in range(1, 3 * n + 1):
        optimizer.step(closure)
        if torch.linalg.norm(x.detach() - solution) <= 1e-6 * torch.linalg.norm(solution):
            break
    torch.testing.assert_close(x.detach(), solution, rtol=1e-6, atol=1e-6)
    assert iteration <= 3 * n


def test_quadratic_trajectory_and_evaluation_count_match_torch():
    """max_iter=1 per step over K steps = torch's K iterations in one call: the same point and the same number of
    closure calls (the cached start of every step is never re-evaluated)."""
    hessian, b, _ = _quadratic()
    steps = 25
    x, y = (torch.zeros(len(b), dtype=F64, requires_grad=True) for _ in range(2))
    ours = _run_ours([x], lambda: 0.5 * x @ hessian @ x - b @ x, steps)
    theirs = _run_torch([y], lambda: 0.5 * y @ hessian @ y - b @ y, steps)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-9, atol=1e-12)
    assert ours.closure_evals == theirs.state[y]["func_evals"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rosenbrock_reaches_the_minimum_like_torch(dtype):
    x = torch.tensor([-1.5, 2.0], dtype=dtype, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    _run_ours([x], lambda: _rosenbrock(x), 100)
    _run_torch([y], lambda: _rosenbrock(y), 100)
    tolerance = 1e-5 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=dtype), rtol=0, atol=tolerance)
    assert float(_rosenbrock(x.detach())) <= max(float(_rosenbrock(y.detach())), 1e-9)


def _sine_field(dtype: torch.dtype) -> CoordinateMLP:
    torch.manual_seed(0)
    return CoordinateMLP(2, 1, FieldConfig(hidden=32, layers=2), dtype=dtype)


def _mse(model, coords, targets):
    return lambda: torch.nn.functional.mse_loss(model(coords), targets)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-8), (torch.float32, 2e-2)])
def test_sine_mlp_on_a_photo_matches_torch(camera_crop, dtype, rtol):
    """Float64 follows torch's trajectory to rounding; float32 rounding drifts, so only the final loss is compared."""
    coords, targets = (t.to(dtype) for t in camera_crop)
    ours_model, torch_model = _sine_field(dtype), _sine_field(dtype)
    steps = 20
    _run_ours(ours_model.parameters(), _mse(ours_model, coords, targets), steps)
    _run_torch(torch_model.parameters(), _mse(torch_model, coords, targets), steps)
    with torch.no_grad():
        ours, theirs = _mse(ours_model, coords, targets)(), _mse(torch_model, coords, targets)()
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=0)
    if dtype == torch.float64:
        for p, q in zip(ours_model.parameters(), torch_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)


def test_one_iteration_per_step_equals_many_iterations_in_one_step(camera_crop):
    """No stall: K calls with max_iter=1 land where one call with max_iter=K does, with the same evaluations."""
    coords, targets = (t.to(F64) for t in camera_crop)
    single, batch = _sine_field(F64), _sine_field(F64)
    stepped = _run_ours(single.parameters(), _mse(single, coords, targets), 12)
    at_once = _run_ours(batch.parameters(), _mse(batch, coords, targets), 1, max_iter=12)
    for p, q in zip(single.parameters(), batch.parameters()):
        torch.testing.assert_close(p, q)
    assert stepped.closure_evals == at_once.closure_evals


def test_start_of_step_is_re_evaluated_when_parameters_or_closure_change():
    x = torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)
    calls = []

    def loss():
        calls.append(1)
        return _rosenbrock(x)

    optimizer = LBFGS([x])
    closure = make_closure(optimizer, loss)
    optimizer.step(closure)
    before = len(calls)
    optimizer.step(closure)
    cached_step = len(calls) - before  # only line-search trials
    with torch.no_grad():
        x.add_(0.01)
    before = len(calls)
    loss_after_edit = optimizer.step(closure)
    assert len(calls) - before >= 2  # a fresh start evaluation, then the line search
    before = len(calls)
    optimizer.step(make_closure(optimizer, loss))  # same objective, new closure object: re-evaluated
    assert len(calls) - before >= 2
    assert cached_step >= 1


def test_step_returns_the_loss_at_the_start_of_the_step():
    x = torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)
    optimizer = LBFGS([x])
    closure = make_closure(optimizer, lambda: _rosenbrock(x))
    for _ in range(5):
        expected = _rosenbrock(x.detach())
        torch.testing.assert_close(optimizer.step(closure), expected)


def test_reset_forgets_history_and_restarts_like_a_fresh_optimizer():
    x = torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)
    optimizer = _run_ours([x], lambda: _rosenbrock(x), 6)
    optimizer.reset()
    start = x.detach().clone()
    optimizer.step(make_closure(optimizer, lambda: _rosenbrock(x)))
    fresh = start.clone().requires_grad_(True)
    _run_ours([fresh], lambda: _rosenbrock(fresh), 1)
    torch.testing.assert_close(x.detach(), fresh.detach())


def test_non_finite_trial_shrinks_the_step_and_never_reaches_the_parameters():
    """f = (x - 3)² is NaN beyond x = 1; the first trial (lr = 10) lands there and must be pulled back."""
    x = torch.zeros(1, dtype=F64, requires_grad=True)
    seen = []

    def loss():
        seen.append(float(x.detach()))
        value = ((x - 3) ** 2).sum()
        return torch.where(x.detach() > 1, torch.nan, 1.0).sum() * value

    optimizer = LBFGS([x], lr=10.0)
    closure = make_closure(optimizer, loss)
    for _ in range(3):
        optimizer.step(closure)
        assert torch.isfinite(x).all() and float(x.detach()) <= 1
    assert max(seen) > 1  # the line search did try the NaN region
    assert float(loss()) < 9.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_start_raises_and_leaves_parameters(bad):
    x = torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)
    optimizer = LBFGS([x])
    with pytest.raises(NonFiniteLossError, match="not finite"):
        optimizer.step(make_closure(optimizer, lambda: _rosenbrock(x) * bad))
    torch.testing.assert_close(x.detach(), torch.tensor([-1.5, 2.0], dtype=F64))


def test_state_dict_round_trip_after_the_history_wraps():
    """history_size=3 and 8 steps: the ring buffer has wrapped; the resumed run must follow the same path."""

    def make():
        return torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)

    x = make()
    optimizer = _run_ours([x], lambda: _rosenbrock(x), 8, history_size=3)
    saved_x, saved_state = x.detach().clone(), copy.deepcopy(optimizer.state_dict())
    closure = make_closure(optimizer, lambda: _rosenbrock(x))
    expected = [optimizer.step(closure) for _ in range(6)]

    y = saved_x.clone().requires_grad_(True)
    resumed = LBFGS([y], history_size=3)
    resumed.load_state_dict(saved_state)
    closure = make_closure(resumed, lambda: _rosenbrock(y))
    actual = [resumed.step(closure) for _ in range(6)]
    torch.testing.assert_close(torch.stack(actual), torch.stack(expected))
    torch.testing.assert_close(y.detach(), x.detach())
    assert resumed.state[y]["count"].dtype == torch.long


def test_fixed_step_mode_matches_torch_without_line_search():
    hessian, b, _ = _quadratic(8, condition=10.0)
    x, y = (torch.zeros(8, dtype=F64, requires_grad=True) for _ in range(2))
    _run_ours([x], lambda: 0.5 * x @ hessian @ x - b @ x, 10, lr=0.5, line_search=None)
    theirs = torch.optim.LBFGS([y], lr=0.5, max_iter=10, max_eval=100)
    theirs.step(make_closure(theirs, lambda: 0.5 * y @ hessian @ y - b @ y))
    torch.testing.assert_close(x.detach(), y.detach())


def test_max_eval_caps_closure_calls_per_step():
    x = torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)
    optimizer = LBFGS([x], max_eval=2, max_iter=5)
    closure = make_closure(optimizer, lambda: _rosenbrock(x))
    for _ in range(5):
        before = optimizer.closure_evals
        optimizer.step(closure)
        assert optimizer.closure_evals - before <= 2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"history_size": 0}, "history_size"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_eval": 0}, "max_eval"),
        ({"line_search": "backtracking"}, "line_search"),
        ({"tolerance_grad": -1.0}, "tolerance_grad"),
    ],
)
def test_bad_hyperparameters_are_clear_value_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LBFGS([torch.zeros(2, requires_grad=True)], **kwargs)


def test_closure_with_a_vector_loss_is_a_clear_error():
    x = torch.zeros(3, requires_grad=True)
    optimizer = LBFGS([x])
    with pytest.raises(ValueError, match="one loss per net"):
        optimizer.step(make_closure(optimizer, lambda: (x - 1) ** 2))
