"""BatchedLBFGS: N nets trained together must follow exactly the paths of N separate LBFGS runs."""

from __future__ import annotations

import copy

import pytest
import torch

from nf_precond.nn import BatchedMLP, FieldConfig
from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.optim.batched_lbfgs import BatchedLBFGS
from nf_precond.optim.lbfgs import LBFGS

F64 = torch.float64
SHIFTS = (1.0, 1.5, -0.5)
"""Net n minimizes a Rosenbrock valley with its minimum at (a, a²), a = SHIFTS[n]: different paths, different
line-search lengths, different convergence times."""


def _rosenbrock(x: torch.Tensor, shift: float, nan_beyond: float = 1.55) -> torch.Tensor:
    """Rosenbrock in the last axis, NaN where x₀ > ``nan_beyond`` (the default lets one trial of net 1 land there)."""
    value = (shift - x[..., 0]) ** 2 + 100 * (x[..., 1] - x[..., 0] ** 2) ** 2
    return torch.where(x[..., 0].detach() > nan_beyond, torch.nan, 1.0) * value


def _batched_rosenbrock(x: torch.Tensor, nan_beyond: float = 1.55) -> torch.Tensor:
    return torch.stack([_rosenbrock(x[n], shift, nan_beyond) for n, shift in enumerate(SHIFTS)])


START = torch.tensor([[-1.5, 2.0], [0.0, 0.0], [1.2, -1.0]], dtype=F64)


@pytest.mark.slow
def test_batched_rosenbrock_follows_separate_runs():
    steps = 40
    x = START.clone().requires_grad_(True)
    batched = BatchedLBFGS([x], num_nets=len(SHIFTS), history_size=5)
    trial_losses = []

    def losses():
        trial_losses.append(_batched_rosenbrock(x))
        return trial_losses[-1]

    closure = make_closure(batched, losses)
    batched_losses = torch.stack([batched.step(closure) for _ in range(steps)])
    assert not torch.isfinite(torch.stack(trial_losses)).all()  # the NaN region was hit, and handled per net

    for n, shift in enumerate(SHIFTS):
        y = START[n].clone().requires_grad_(True)
        single = LBFGS([y], history_size=5)
        closure = make_closure(single, lambda y=y, shift=shift: _rosenbrock(y, shift))
        losses = torch.stack([single.step(closure) for _ in range(steps)])
        torch.testing.assert_close(batched_losses[:, n], losses)
        torch.testing.assert_close(x.detach()[n], y.detach())
    torch.testing.assert_close(x.detach(), torch.tensor([[a, a * a] for a in SHIFTS], dtype=F64), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_batched_sine_mlps_on_different_photo_crops_follow_separate_runs(camera_crop):
    """BatchedMLP weights are [N, in, out], CoordinateMLP's [out, in]: L-BFGS must not care about the layout."""
    coords, targets = (t.to(F64) for t in camera_crop)
    crops = torch.stack([targets[offset : offset + 96] for offset in (0, 400, 800)])
    points = coords[:96].expand(3, -1, -1)
    torch.manual_seed(0)
    model = BatchedMLP(3, 2, 1, FieldConfig(hidden=16, layers=2), dtype=F64)
    singles = [model.net(n) for n in range(3)]
    steps = 10

    optimizer = BatchedLBFGS(model.parameters(), num_nets=3)
    closure = make_closure(optimizer, lambda: ((model(points) - crops) ** 2).mean(dim=(1, 2)))
    batched_losses = torch.stack([optimizer.step(closure) for _ in range(steps)])

    for n, net in enumerate(singles):
        single = LBFGS(net.parameters())
        closure = make_closure(single, lambda net=net, n=n: ((net(points[n]) - crops[n]) ** 2).mean())
        losses = torch.stack([single.step(closure) for _ in range(steps)])
        torch.testing.assert_close(batched_losses[:, n], losses)
        for p, q in zip(model.net(n).parameters(), net.parameters()):
            torch.testing.assert_close(p, q)
    assert (batched_losses[-1] < 0.5 * batched_losses[0]).all()


def test_non_finite_trials_never_reach_the_parameters_of_any_net():
    """Net 1's minimum (x₀ = 1.5) lies in the NaN region x₀ > 1.3: it must stop at the edge, the others converge."""
    x = START.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], num_nets=3)
    closure = make_closure(optimizer, lambda: _batched_rosenbrock(x, nan_beyond=1.3))
    for _ in range(40):
        optimizer.step(closure)
        assert torch.isfinite(x).all() and (x.detach()[:, 0] <= 1.3).all()
    minima = torch.tensor([[1.0, 1.0], [-0.5, 0.25]], dtype=F64)
    torch.testing.assert_close(x.detach()[[0, 2]], minima, atol=1e-4, rtol=0)


def test_one_closure_call_per_trial_for_all_nets():
    x = START.clone().requires_grad_(True)
    calls = []

    def losses():
        calls.append(1)
        return _batched_rosenbrock(x)

    optimizer = BatchedLBFGS([x], num_nets=3)
    closure = make_closure(optimizer, losses)
    for _ in range(10):
        optimizer.step(closure)
    assert optimizer.closure_evals == len(calls)


def _rosenbrock_run(per_net: bool, steps: int = 40) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(losses per step, final x, nets evaluated over all closure calls, closure calls)."""
    x = START.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], num_nets=len(SHIFTS), history_size=5)
    evaluated = []

    def all_losses() -> torch.Tensor:
        evaluated.append(len(SHIFTS))
        return _batched_rosenbrock(x)

    def some_losses(nets: torch.Tensor) -> torch.Tensor:
        evaluated.append(len(nets))
        return torch.stack([_rosenbrock(x[n], SHIFTS[n]) for n in nets.tolist()])

    closure = make_closure(optimizer, all_losses, compute_net_losses=some_losses if per_net else None)
    losses = torch.stack([optimizer.step(closure) for _ in range(steps)])
    return losses, x.detach(), sum(evaluated), optimizer.closure_evals


def test_trials_evaluate_only_the_nets_still_searching():
    """With per-net losses, a trial that only a few nets still need evaluates just those: the same path for every
    net, fewer net evaluations, the same number of closure calls."""
    losses, x, evaluated, calls = _rosenbrock_run(per_net=False)
    subset_losses, subset_x, subset_evaluated, subset_calls = _rosenbrock_run(per_net=True)
    torch.testing.assert_close(subset_losses, losses)
    torch.testing.assert_close(subset_x, x)
    assert subset_calls == calls
    assert subset_evaluated < evaluated


def test_a_per_net_closure_must_return_one_loss_per_net_evaluated():
    x = START.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], num_nets=3)
    closure = make_closure(optimizer, lambda: _batched_rosenbrock(x),
                           compute_net_losses=lambda nets: _batched_rosenbrock(x)[:2])  # fmt: skip
    with pytest.raises(ValueError, match=r"one loss per net evaluated \(1\)"):
        for _ in range(40):  # until a trial has a single net left searching
            optimizer.step(closure)


def test_a_converged_net_stops_while_the_others_go_on():
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.2, -1.0]], dtype=F64, requires_grad=True)  # net 0 sits at its minimum
    optimizer = BatchedLBFGS([x], num_nets=3)
    closure = make_closure(optimizer, lambda: _batched_rosenbrock(x))
    for _ in range(5):
        optimizer.step(closure)
    assert torch.equal(x.detach()[0], torch.tensor([1.0, 1.0], dtype=F64))
    assert optimizer.state[x]["count"][0] == 0 and (optimizer.state[x]["count"][1:] > 0).all()
    assert not torch.equal(x.detach()[1:], START[1:].to(F64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_of_one_net_at_the_start_raises_and_leaves_all_parameters(bad):
    x = START.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], num_nets=3)
    scale = torch.tensor([1.0, bad, 1.0], dtype=F64)
    with pytest.raises(NonFiniteLossError, match="not finite"):
        optimizer.step(make_closure(optimizer, lambda: _batched_rosenbrock(x) * scale))
    assert torch.equal(x.detach(), START)


def test_state_dict_round_trip_reproduces_the_trajectory():
    x = START.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], num_nets=3, history_size=3)
    closure = make_closure(optimizer, lambda: _batched_rosenbrock(x))
    for _ in range(7):
        optimizer.step(closure)
    saved_x, saved_state = x.detach().clone(), copy.deepcopy(optimizer.state_dict())
    expected = torch.stack([optimizer.step(closure) for _ in range(5)])

    y = saved_x.clone().requires_grad_(True)
    resumed = BatchedLBFGS([y], num_nets=3, history_size=3)
    resumed.load_state_dict(saved_state)
    closure = make_closure(resumed, lambda: _batched_rosenbrock(y))
    actual = torch.stack([resumed.step(closure) for _ in range(5)])
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(y.detach(), x.detach())


def test_parameters_without_the_net_axis_are_a_clear_error():
    with pytest.raises(ValueError, match="leading net axis"):
        BatchedLBFGS([torch.zeros(4, 2, requires_grad=True)], num_nets=3)


def test_closure_must_return_one_loss_per_net():
    x = START.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], num_nets=3)
    with pytest.raises(ValueError, match="one loss per net"):
        optimizer.step(make_closure(optimizer, lambda: _batched_rosenbrock(x).sum()))


@pytest.mark.parametrize(
    "kwargs, name", [({"num_nets": 0}, "num_nets"), ({"lr": -1.0}, "lr"), ({"history_size": 0}, "history_size")]
)
def test_bad_hyperparameters_are_clear_value_errors(kwargs, name):
    arguments = {"num_nets": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        BatchedLBFGS([START.clone().requires_grad_(True)], **arguments)
