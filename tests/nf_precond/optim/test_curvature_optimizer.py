"""CurvatureOptimizer (ESGD, ESGD-max, AdaHessian): parameters whose first gradient arrives late."""

from __future__ import annotations

import pytest
import torch

from nf_precond.optim import build_optimizer, make_closure

CURVATURE_OPTIMIZERS = ["esgd", "esgd-max", "adahessian-j", "adahessian-e"]


@pytest.mark.parametrize("name", CURVATURE_OPTIMIZERS)
def test_parameter_first_seen_on_a_non_curvature_step_waits_for_its_estimate(name: str) -> None:
    """Step 0 estimates curvature but ``late`` has no gradient yet; step 1 (no estimate) is its first gradient.
    A zero statistic there would be a step of lr·m̂/eps (1000 here); instead it waits, and the next step estimates
    curvature for it and moves it by an ordinary amount."""
    torch.manual_seed(0)
    early, late = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(6))
    optimizer = build_optimizer(name, [early, late], lr=0.1, warmup=1, update_every=100)
    use_late = [False]

    def loss() -> torch.Tensor:
        value = early.sin().square().sum()
        return value + (late.square().sum() if use_late[0] else 0.0)

    closure = make_closure(optimizer, loss)
    assert optimizer.needs_graph
    optimizer.step(closure)  # step 0: curvature for `early` only
    assert not optimizer.needs_graph
    use_late[0] = True
    before = late.detach().clone()
    optimizer.step(closure)  # step 1: `late` gets its first gradient, no estimate on this step
    torch.testing.assert_close(late.detach(), before)
    assert optimizer.needs_graph  # its estimate is due now

    state = optimizer.state_dict()
    twin = build_optimizer(name, [torch.nn.Parameter(early.detach().clone()), torch.nn.Parameter(before.clone())],
                           lr=0.1, warmup=1, update_every=100)  # fmt: skip
    twin.load_state_dict(state)
    assert twin.needs_graph

    optimizer.step(closure)  # step 2: estimate for `late`, then an ordinary step
    assert not optimizer.needs_graph
    moved = (late.detach() - before).abs().max().item()
    assert 0 < moved < 1.0
    assert optimizer.state[late]["curvature_updates"] == 1 and optimizer.state[late]["step"] == 2
