"""The equilibrated-L-BFGS experiment: the rescaled optimizer against plain L-BFGS and a badly scaled quadratic,
bad flags, and a tiny race end to end."""

from __future__ import annotations

import pytest
import torch

from benchmarks import equilibrated_lbfgs
from benchmarks.equilibrated_lbfgs import EquilibratedLBFGS
from benchmarks.leaderboard import RACE_PHOTOS
from nf_precond.optim import make_closure
from nf_precond.optim.lbfgs import LBFGS


def quadratic(curvatures: torch.Tensor) -> tuple[torch.Tensor, callable]:
    x = torch.ones_like(curvatures, requires_grad=True)
    return x, lambda: 0.5 * (curvatures * x.square()).sum()


def run(optimizer: torch.optim.Optimizer, loss_fn: callable, steps: int) -> list[float]:
    closure = make_closure(optimizer, loss_fn)
    return [float(optimizer.step(closure)) for _ in range(steps)]


def test_equal_curvatures_rescale_nothing_so_the_steps_are_plain_lbfgs() -> None:
    """Every Dᵢ equal: the normalized scales are 1 and φ = θ, so each step equals plain L-BFGS's (reference twin)."""
    torch.manual_seed(0)
    field = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    twin = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    twin.load_state_dict(field.state_dict())
    coords, targets = torch.rand(32, 2, dtype=torch.float64), torch.rand(32, 1, dtype=torch.float64)

    def loss_of(net: torch.nn.Module) -> callable:
        return lambda: (net(coords) - targets).square().mean()

    rescaled = EquilibratedLBFGS(field.parameters(), loss_of(field), damping=1e6)  # λ swamps D: scales ≈ 1
    losses = run(rescaled, loss_of(field), 8)
    assert all(torch.allclose(scale, torch.ones_like(scale), atol=1e-5) for scale in rescaled._scales)
    plain_losses = run(LBFGS(twin.parameters()), loss_of(twin), 8)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-4, atol=1e-12)
    for ours, theirs in zip(field.parameters(), twin.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-6)


def test_a_badly_scaled_quadratic_is_solved_in_fewer_iterations_than_plain_lbfgs() -> None:
    """For H = diag(h) the equilibration diagonal is |h|: in φ the Hessian is nearly the identity."""
    curvatures = torch.logspace(-3, 3, 200, dtype=torch.float64)
    x, loss_fn = quadratic(curvatures)
    equilibrated = run(EquilibratedLBFGS([x], loss_fn, samples=4, damping=1e-6), loss_fn, 6)
    y, plain_fn = quadratic(curvatures)
    plain = run(LBFGS([y]), plain_fn, 6)
    with torch.no_grad():
        final, plain_final = float(loss_fn()), float(plain_fn())
    assert final < 1e-8 * equilibrated[0]
    assert final < 1e-3 * plain_final, (equilibrated, plain)


@pytest.mark.parametrize(("flags", "problem"), [(["--refresh", "60"], "--refresh"), (["--samples", "0"], "--samples")])
def test_bad_flags_name_the_flag(flags: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        equilibrated_lbfgs.main(flags)
    assert problem in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_race_scores_every_variant_on_every_photo() -> None:
    report = equilibrated_lbfgs.main(["--smoke"])
    labels = [variant["label"] for variant in report["variants"]]
    assert labels == ["adam", "lbfgs", "equilibrated", "equilibrated, D every 1 s"]
    assert [phase["seconds"] for phase in report["variants"][3]["phases"]] == [1.0, None]
    for variant in report["variants"]:
        assert [run["photo"] for run in variant["runs"]] == list(RACE_PHOTOS)
        assert all(run["final_psnr"] > 0 for run in variant["runs"])
    assert report["verdict"].startswith(("keep", "not kept"))
