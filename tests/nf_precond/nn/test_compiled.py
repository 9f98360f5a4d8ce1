"""CompiledField: the compiled twin of a field gives the eager field's outputs and gradients, runs eager on curvature
steps, and keeps the field's own state dict."""

from __future__ import annotations

import pytest
import torch

from nf_precond.nn import CompiledField, CoordinateMLP, FieldConfig
from nf_precond.optim import build_optimizer, make_closure

pytestmark = pytest.mark.slow  # each test compiles (seconds on a CPU)


def tiny_field(seed: int = 0) -> CoordinateMLP:
    torch.manual_seed(seed)
    return CoordinateMLP(2, 3, FieldConfig(hidden=16, layers=2))


def test_compiled_outputs_and_gradients_equal_eager() -> None:
    eager, twin = tiny_field(), tiny_field()
    compiled = CompiledField(twin)
    coords, targets = torch.rand(64, 2) * 2 - 1, torch.rand(64, 3)
    for model in (eager, compiled):
        torch.nn.functional.mse_loss(model(coords), targets).backward()
    torch.testing.assert_close(compiled(coords), eager(coords), rtol=1e-5, atol=1e-6)
    for mine, reference in zip(twin.parameters(), eager.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-4, atol=1e-6)
    assert compiled.state_dict().keys() == eager.state_dict().keys()


@pytest.mark.parametrize("name", ["esgd", "esgd-max", "adahessian-e"])
def test_curvature_optimizer_through_compiled_steps_matches_eager(name: str) -> None:
    """Warm-up 2, then one curvature step in 3: steps 2, 3, 5, 6 run the compiled graph, 0, 1, 4, 7 the eager one
    (double backward); the trajectory equals an all-eager run."""
    coords, targets = torch.rand(128, 2) * 2 - 1, torch.rand(128, 3)
    finals = []
    for compiled in (False, True):
        field = tiny_field()
        optimizer = build_optimizer(name, field, lr=0.01, warmup=2, update_every=3)
        model = CompiledField(field, eager_when=lambda: optimizer.needs_graph) if compiled else field
        closure = make_closure(optimizer, lambda: torch.nn.functional.mse_loss(model(coords), targets))
        graphs = []
        for _ in range(8):
            graphs.append(optimizer.needs_graph)
            optimizer.step(closure)
        assert graphs == [True, True, False, False, True, False, False, True]
        finals.append([p.detach().clone() for p in field.parameters()])
    for compiled, eager in zip(*reversed(finals)):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
