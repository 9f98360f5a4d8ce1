"""EquilibratedLBFGS against dense math and its reference twin: plain L-BFGS on the rescaled parameters φ = θ / s."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from nf_precond.curvature import equilibration_diagonal
from nf_precond.optim import build_optimizer, make_closure
from nf_precond.optim.equilibrated_lbfgs import EquilibratedLBFGS
from nf_precond.optim.lbfgs import LBFGS


def _problem(seed: int = 0) -> tuple[torch.nn.Module, callable, tuple[torch.Tensor, torch.Tensor]]:
    """A tiny tanh net, its mean squared error on random data, and the data, in float64."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    coords, targets = torch.rand(32, 2, dtype=torch.float64), torch.rand(32, 1, dtype=torch.float64)
    return net, lambda: (net(coords) - targets).square().mean(), (coords, targets)


def _run(optimizer: torch.optim.Optimizer, loss_fn: callable, steps: int) -> list[float]:
    closure = make_closure(optimizer, loss_fn)
    return [float(optimizer.step(closure)) for _ in range(steps)]


def _scales(optimizer: EquilibratedLBFGS) -> torch.Tensor:
    return optimizer.state_dict()["state"][0]["scales"]


def test_scales_are_the_damped_normalized_equilibration_diagonal_of_the_first_step() -> None:
    net, loss_fn, _ = _problem()
    twin, twin_loss, _ = _problem()
    optimizer = EquilibratedLBFGS(net.parameters(), samples=6, damping=0.1)
    assert optimizer.needs_graph
    torch.manual_seed(7)
    _run(optimizer, loss_fn, 1)
    torch.manual_seed(7)  # the same Rademacher vectors, in the same order
    diagonal = torch.cat([d.flatten() for d in equilibration_diagonal(twin_loss, list(twin.parameters()), 6)])
    inverse = 1 / (diagonal + 0.1 * diagonal.mean())
    torch.testing.assert_close(_scales(optimizer), (inverse / inverse.mean()).sqrt()[None])
    assert not optimizer.needs_graph


def test_steps_are_plain_lbfgs_on_the_rescaled_parameters() -> None:
    """The reference twin: L-BFGS on one flat φ, the net evaluated at θ = φ ⊙ s."""
    net, loss_fn, _ = _problem()
    twin, _, (coords, targets) = _problem()
    optimizer = EquilibratedLBFGS(net.parameters(), samples=4, damping=0.01)
    losses = _run(optimizer, loss_fn, 10)
    scales = _scales(optimizer)[0]  # fixed after the first step

    names, shapes = [name for name, _ in twin.named_parameters()], [p.shape for p in twin.parameters()]
    phi = (torch.cat([p.detach().flatten() for p in twin.parameters()]) / scales).requires_grad_()

    def twin_loss() -> torch.Tensor:
        theta = (phi * scales).split([shape.numel() for shape in shapes])
        params = {name: t.view(shape) for name, t, shape in zip(names, theta, shapes)}
        return (functional_call(twin, params, (coords,)) - targets).square().mean()

    plain = LBFGS([phi], lr=1.0)
    twin_losses = _run(plain, twin_loss, 10)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(twin_losses), rtol=1e-7, atol=1e-12)
    theta = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.testing.assert_close(theta, phi.detach() * scales, rtol=1e-6, atol=1e-9)
    assert optimizer.closure_evals == plain.closure_evals  # D comes from the first step's own evaluation


def test_a_badly_scaled_quadratic_is_solved_in_far_fewer_iterations_than_plain_lbfgs() -> None:
    """For H = diag(h) the equilibration diagonal is |h| exactly: in φ the Hessian is nearly the identity."""
    curvatures = torch.logspace(-3, 3, 200, dtype=torch.float64)
    x, y = torch.ones_like(curvatures, requires_grad=True), torch.ones_like(curvatures, requires_grad=True)
    equilibrated = _run(EquilibratedLBFGS([x], samples=2, damping=1e-6), lambda: 0.5 * (curvatures * x.square()).sum(), 6)
    _run(LBFGS([y]), lambda: 0.5 * (curvatures * y.square()).sum(), 6)
    with torch.no_grad():
        final, plain_final = float(0.5 * (curvatures * x.square()).sum()), float(0.5 * (curvatures * y.square()).sum())
    assert final < 1e-8 * equilibrated[0]
    assert final < 1e-3 * plain_final


def test_reset_forgets_the_diagonal_and_the_next_step_estimates_it_at_the_current_weights() -> None:
    net, loss_fn, _ = _problem()
    optimizer = EquilibratedLBFGS(net.parameters(), samples=3)
    _run(optimizer, loss_fn, 5)
    first = _scales(optimizer).clone()
    optimizer.reset()
    assert optimizer.needs_graph
    _run(optimizer, loss_fn, 1)
    assert not optimizer.needs_graph
    assert not torch.allclose(_scales(optimizer), first)


def test_a_closure_without_the_graph_is_one_clear_error_and_changes_nothing() -> None:
    net, loss_fn, _ = _problem()
    optimizer = EquilibratedLBFGS(net.parameters())
    before = [p.detach().clone() for p in net.parameters()]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()  # no create_graph: make_closure would have asked for it
        return loss.detach()

    with pytest.raises(ValueError, match="create_graph"):
        optimizer.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


@pytest.mark.parametrize(("option", "value"), [("samples", 0), ("damping", 0.0), ("damping", float("inf"))])
def test_bad_options_name_the_option(option: str, value: float) -> None:
    net, _, _ = _problem()
    with pytest.raises(ValueError, match=option):
        build_optimizer("lbfgs-eq", net, **{option: value})


def test_the_registry_builds_it_with_the_measured_settings() -> None:
    net, _, _ = _problem()
    optimizer = build_optimizer("lbfgs-eq", net)
    assert isinstance(optimizer, EquilibratedLBFGS)
    assert (optimizer._samples, optimizer._damping) == (10, 1e-2)
