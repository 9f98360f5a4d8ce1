"""The optimizer contract every registered optimizer honors (ARCHITECTURE.md, Contracts): step(closure) lowers the
loss of a real fitting problem, state_dict round trips reproduce the trajectory, bad hyperparameters and NaN losses
are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import OPTIMIZERS, NonFiniteLossError, build_optimizer, make_closure

OURS = [name for name, spec in OPTIMIZERS.items() if spec.module.startswith("nf_precond")]


def _field(activation: str) -> CoordinateMLP:
    kwargs = {"sigma": 0.1} if activation == "gauss" else {}
    return CoordinateMLP(2, 1, FieldConfig(hidden=32, layers=2, activation=activation, **kwargs))


def _closure(optimizer, model, coords, targets, scale: float = 1.0):
    """The closure every optimizer gets: the mean squared error, and its residuals for those that want them (LM)."""
    return make_closure(
        optimizer,
        lambda: torch.nn.functional.mse_loss(model(coords), targets) * scale,
        compute_residuals=lambda: (model(coords) - targets) * scale,
    )


def _run(model, optimizer, coords, targets, steps: int) -> list[float]:
    closure = _closure(optimizer, model, coords, targets)
    return [float(optimizer.step(closure)) for _ in range(steps)]


@pytest.mark.parametrize("activation", ["sine", "gauss"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_lowers_loss_on_real_photo(name, activation, camera_crop):
    coords, targets = camera_crop
    model = _field(activation)
    optimizer = build_optimizer(name, model)
    closure = _closure(optimizer, model, coords, targets)
    with torch.no_grad():
        initial = float(torch.nn.functional.mse_loss(model(coords), targets))
    steps = 20 if OPTIMIZERS[name].full_batch else 200
    for _ in range(steps):
        optimizer.step(closure)
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(model(coords), targets))
    assert final < 0.7 * initial, f"{name}/{activation}: loss {initial:.4g} -> {final:.4g}"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_same_trajectory(name, camera_crop):
    coords, targets = camera_crop
    model = _field("sine")
    optimizer = build_optimizer(name, model)
    _run(model, optimizer, coords, targets, steps=7)
    saved_model, saved_optim = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())

    torch.manual_seed(123)
    expected = _run(model, optimizer, coords, targets, steps=5)

    resumed = _field("sine")
    resumed.load_state_dict(saved_model)
    resumed_optimizer = build_optimizer(name, resumed)
    resumed_optimizer.load_state_dict(saved_optim)
    torch.manual_seed(123)
    actual = _run(resumed, resumed_optimizer, coords, targets, steps=5)

    torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected))
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", OURS)
def test_negative_lr_is_a_clear_value_error(name):
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(name, _field("sine"), lr=-1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", OURS)
def test_non_finite_loss_is_refused_and_parameters_untouched(name, bad, camera_crop):
    coords, targets = camera_crop
    model = _field("sine")
    optimizer = build_optimizer(name, model)
    _run(model, optimizer, coords, targets, steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    closure = _closure(optimizer, model, coords, targets, scale=bad)
    with pytest.raises(NonFiniteLossError, match="not finite"):
        optimizer.step(closure)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)
