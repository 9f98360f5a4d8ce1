"""The peer optimizers (muon, soap, psgd, torch-lbfgs, lm) through the registry and the closure contract, against
reference twins: torch's Muon and AdamW for the Muon split, lstsq and a dense-Jacobian Gauss–Newton step for LM."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.func import functional_call

from nf_precond.nn import BatchedMLP, CoordinateMLP, FieldConfig
from nf_precond.optim import OPTIMIZERS, NonFiniteLossError, build_optimizer, make_closure
from nf_precond.optim.closure import wants_residuals
from nf_precond.optim.lm import LevenbergMarquardt
from nf_precond.optim.muon import MuonWithAdamW, hidden_weights

PEERS = ["muon", "soap", "psgd", "torch-lbfgs", "lm"]
F64 = torch.float64


def _field(layers: int = 2, hidden: int = 16, dtype: torch.dtype | None = None) -> CoordinateMLP:
    torch.manual_seed(0)
    return CoordinateMLP(2, 1, FieldConfig(hidden=hidden, layers=layers), dtype=dtype)


def _regression(rows: int = 64, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random 2-D regression target on [-1, 1]²."""
    generator = torch.Generator().manual_seed(1)
    coords = torch.rand(rows, 2, generator=generator, dtype=dtype) * 2 - 1
    targets = torch.sin(2 * coords[:, :1]) * torch.cos(3 * coords[:, 1:]) + 0.1 * coords[:, :1]
    return coords, targets


def _closure(optimizer, model, coords, targets):
    return make_closure(
        optimizer,
        lambda: torch.nn.functional.mse_loss(model(coords), targets),
        compute_residuals=lambda: model(coords) - targets,
    )


def _mse(model, coords, targets) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(coords), targets))


def _run(model, optimizer, coords, targets, steps: int) -> list[float]:
    closure = _closure(optimizer, model, coords, targets)
    return [float(optimizer.step(closure)) for _ in range(steps)]


# -- every peer through the registry -----------------------------------------------------------------------------


def test_peers_are_registered_at_the_end():
    assert list(OPTIMIZERS)[-len(PEERS):] == PEERS
    assert OPTIMIZERS["torch-lbfgs"].full_batch and OPTIMIZERS["lm"].full_batch
    assert OPTIMIZERS["muon"].builds_from == "model"
    assert all(OPTIMIZERS[name].batched is None for name in PEERS)


@pytest.mark.parametrize("name", PEERS)
def test_lowers_loss_on_tiny_regression(name):
    coords, targets = _regression()
    model = _field()
    optimizer = build_optimizer(name, model)
    initial = _mse(model, coords, targets)
    losses = _run(model, optimizer, coords, targets, steps=10 if OPTIMIZERS[name].full_batch else 200)
    final = _mse(model, coords, targets)
    assert losses[0] == pytest.approx(initial)
    assert final < 0.7 * initial, f"{name}: {initial:.4g} -> {final:.4g}"


@pytest.mark.parametrize("name", PEERS)
def test_state_dict_round_trip_gives_bit_identical_steps(name):
    """Save after 7 steps (serialized, as a checkpoint is), resume in a fresh model and optimizer: the next 5 steps
    are the uninterrupted run's, bit for bit (PSGD draws random probes: same seed, same draws)."""
    coords, targets = _regression()
    model = _field()
    optimizer = build_optimizer(name, model)
    _run(model, optimizer, coords, targets, steps=7)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)

    torch.manual_seed(123)
    expected = _run(model, optimizer, coords, targets, steps=5)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = _field()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build_optimizer(name, resumed)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    torch.manual_seed(123)
    actual = _run(resumed, resumed_optimizer, coords, targets, steps=5)

    assert actual == expected
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["muon", "soap", "psgd", "lm"])
def test_negative_lr_is_a_clear_value_error(name):
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(name, _field(), lr=-1.0)


@pytest.mark.parametrize("name", ["muon", "soap", "psgd", "lm"])
def test_non_finite_loss_is_refused_and_parameters_untouched(name):
    coords, targets = _regression()
    model = _field()
    optimizer = build_optimizer(name, model)
    _run(model, optimizer, coords, targets, steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    bad = targets.clone()
    bad[3] = float("nan")
    with pytest.raises(NonFiniteLossError):
        optimizer.step(_closure(optimizer, model, coords, bad))
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_torch_lbfgs_line_search_has_room_to_backtrack(seed, camera_crop):
    """With torch's own max_eval (1.25 x max_iter = 1) these sine fields never move: the first trial overshoots, the
    line search may not try another and returns t = 0, and every step repeats it. The registered budget fits them."""
    coords, targets = camera_crop
    torch.manual_seed(seed)
    model = CoordinateMLP(2, 1, FieldConfig(hidden=32, layers=2))
    optimizer = build_optimizer("torch-lbfgs", model)
    initial = _mse(model, coords, targets)
    _run(model, optimizer, coords, targets, steps=20)
    assert _mse(model, coords, targets) < 0.7 * initial


# -- Muon with AdamW -----------------------------------------------------------------------------------------------


def test_muon_updates_exactly_the_hidden_weight_matrices():
    model = _field(layers=3)
    first, *hidden, last = model.linears
    optimizer = build_optimizer("muon", model)
    muon_group, adamw_group = optimizer.param_groups
    assert muon_group["use_muon"] and not adamw_group["use_muon"]
    assert [id(p) for p in muon_group["params"]] == [id(linear.weight) for linear in hidden]
    expected_rest = [first.weight, first.bias, *(linear.bias for linear in hidden), last.weight, last.bias]
    assert {id(p) for p in adamw_group["params"]} == {id(p) for p in expected_rest}
    assert len(adamw_group["params"]) == len(expected_rest)
    assert [id(p) for p in hidden_weights(model)] == [id(linear.weight) for linear in hidden]


def test_muon_without_hidden_matrix_is_adamw_alone():
    model = _field(layers=1)
    optimizer = build_optimizer("muon", model)
    assert [group["use_muon"] for group in optimizer.param_groups] == [False]
    coords, targets = _regression()
    losses = _run(model, optimizer, coords, targets, steps=30)
    assert losses[-1] < losses[0]


def test_muon_refuses_stacked_batched_weights():
    assert OPTIMIZERS["muon"].batched is None
    with pytest.raises(ValueError, match="stacked"):
        MuonWithAdamW(BatchedMLP(3, 2, 1, FieldConfig(hidden=8, layers=2)))


def test_muon_matches_torch_muon_and_adamw_twins_under_an_lr_schedule():
    """Muon's half is torch.optim.Muon with group lr, AdamW's half torch.optim.AdamW with lr * adamw_lr_ratio, also
    after a schedule rewrites every group's lr (the ratio stays fixed)."""
    coords, targets = _regression()
    model = _field(layers=3)
    twin = copy.deepcopy(model)
    ratio = 0.3
    optimizer = MuonWithAdamW(model, lr=2e-3, adamw_lr_ratio=ratio)
    hidden = hidden_weights(twin)
    rest = [p for p in twin.parameters() if all(p is not h for h in hidden)]
    muon = torch.optim.Muon(hidden, lr=2e-3, weight_decay=0.0)
    adamw = torch.optim.AdamW(rest, lr=2e-3 * ratio, weight_decay=0.0)
    closure = _closure(optimizer, model, coords, targets)
    for step, lr in enumerate([2e-3, 2e-3, 1e-3, 5e-4, 0.0, 1e-3]):
        for group in optimizer.param_groups:
            group["lr"] = lr
        muon.param_groups[0]["lr"], adamw.param_groups[0]["lr"] = lr, lr * ratio
        optimizer.step(closure)
        muon.zero_grad()
        adamw.zero_grad()
        torch.nn.functional.mse_loss(twin(coords), targets).backward()
        muon.step()
        adamw.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.equal(p, q), f"step {step}"


# -- heavyball: SOAP and PSGD-Kron ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["soap", "psgd"])
def test_heavyball_runs_eagerly_on_cpu(name, monkeypatch):
    """heavyball's update runs with its compile switch off for CPU parameters (compiling would autotune for far
    longer than the fit takes), and the global switch is back to heavyball's default after each step."""
    import heavyball.utils

    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile called for a CPU step")

    monkeypatch.setattr(torch, "compile", refuse)
    before = heavyball.utils.compile_mode
    assert before is not None
    coords, targets = _regression()
    model = _field()
    optimizer = build_optimizer(name, model)
    seen = []
    heavyball_update = optimizer._step

    def spy(group):
        seen.append(heavyball.utils.compile_mode)
        return heavyball_update(group)

    optimizer._step = spy
    losses = _run(model, optimizer, coords, targets, steps=3)
    assert seen == [None] * 3
    assert heavyball.utils.compile_mode == before
    assert all(torch.isfinite(torch.tensor(losses)))


# -- Levenberg–Marquardt -------------------------------------------------------------------------------------------


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_lm_linear_least_squares_lands_on_the_normal_equations_solution():
    """r = X W^T + b - Y is linear in (W, b): one step with a tiny λ is the least-squares solution."""
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(50, 3, generator=generator, dtype=F64)
    outputs = inputs @ torch.randn(3, 2, generator=generator, dtype=F64) + 0.5
    outputs += 0.1 * torch.randn(50, 2, generator=generator, dtype=F64)
    layer = torch.nn.Linear(3, 2, dtype=F64)
    optimizer = build_optimizer("lm", layer, damping=1e-10)
    closure = make_closure(optimizer, lambda: None, compute_residuals=lambda: layer(inputs) - outputs)
    optimizer.step(closure)
    design = torch.cat([inputs, torch.ones(50, 1, dtype=F64)], dim=1)
    solution = torch.linalg.lstsq(design, outputs).solution  # [4, 2]: W^T stacked on b
    torch.testing.assert_close(layer.weight.detach(), solution[:3].T, atol=1e-4, rtol=0)
    torch.testing.assert_close(layer.bias.detach(), solution[3], atol=1e-4, rtol=0)


def _dense_reference(model, coords, targets):
    """The residuals as a function of the flat parameter vector, for torch.autograd.functional.jacobian."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def residuals(flat: torch.Tensor) -> torch.Tensor:
        tensors, offset = {}, 0
        for name, shape in zip(names, shapes):
            tensors[name] = flat[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return (functional_call(model, tensors, (coords,)) - targets).reshape(-1)

    return residuals


@pytest.mark.parametrize("damping_matrix", ["identity", "diagonal"])
@pytest.mark.parametrize("omega0", [3.0, 30.0])
def test_lm_step_matches_dense_jacobian_gauss_newton(damping_matrix, omega0):
    """One step against the textbook loop with J from torch.autograd.functional.jacobian: solve
    (JᵀJ/M + λD) δ = -Jᵀr/M, accept θ + δ if the loss drops (λ / 10), else λ x 10 and solve again. With ω0 = 30 the
    Gauss–Newton step overshoots and trials are rejected first. Chunks of 7 rows (the last one short) must add up to
    the dense matrices."""
    coords, targets = _regression(rows=30, dtype=F64)
    torch.manual_seed(0)
    model = CoordinateMLP(2, 1, FieldConfig(hidden=4, layers=2, omega0=(omega0,)), dtype=F64)
    start = _flat(model)
    residuals = _dense_reference(model, coords, targets)
    jacobian = torch.autograd.functional.jacobian(residuals, start)
    r = residuals(start).detach()
    rows, loss = r.numel(), float(r.square().mean())
    gram, gradient = jacobian.T @ jacobian / rows, jacobian.T @ r / rows
    scale = torch.ones_like(gradient) if damping_matrix == "identity" else gram.diagonal()
    damping, rejected = 1e-3, 0
    while True:
        delta = torch.linalg.solve(gram + damping * torch.diag(scale), -gradient)
        if float(residuals(start + delta).square().mean()) < loss:
            expected, damping = start + delta, damping * 0.1
            break
        damping, rejected = damping * 10, rejected + 1

    optimizer = LevenbergMarquardt(model.parameters(), damping=1e-3, damping_matrix=damping_matrix, chunk_size=7)
    lm_gram, lm_gradient = optimizer.normal_equations(model(coords) - targets)
    torch.testing.assert_close(lm_gram, gram, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lm_gradient, gradient, rtol=1e-12, atol=1e-12)
    assert float(optimizer.step(_closure(optimizer, model, coords, targets))) == pytest.approx(loss, rel=1e-12)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-9, atol=1e-9)
    assert optimizer.damping == pytest.approx(damping)
    state = optimizer.state[next(model.parameters())]
    assert (state["accepted"], state["rejected"]) == (1, rejected)
    if omega0 == 30.0:
        assert rejected > 0


def test_lm_leaves_parameters_untouched_when_every_trial_fails():
    """ω0 = 30 makes the first Gauss–Newton trial overshoot (see above): with one attempt the step is refused, θ is
    restored exactly and λ grows tenfold."""
    coords, targets = _regression(rows=30, dtype=F64)
    torch.manual_seed(0)
    model = CoordinateMLP(2, 1, FieldConfig(hidden=4, layers=2, omega0=(30.0,)), dtype=F64)
    start = _flat(model)
    optimizer = LevenbergMarquardt(model.parameters(), damping=1e-3, max_attempts=1)
    optimizer.step(_closure(optimizer, model, coords, targets))
    assert torch.equal(_flat(model), start)
    assert optimizer.damping == pytest.approx(1e-2)
    state = optimizer.state[next(model.parameters())]
    assert (state["accepted"], state["rejected"]) == (0, 1)


def test_lm_never_raises_the_loss_and_restores_rejected_trials():
    """An overshooting lr makes trials fail: each is undone and λ grows, so the loss never goes up."""
    coords, targets = _regression(rows=40, dtype=F64)
    model = _field(layers=2, hidden=6, dtype=F64)
    optimizer = build_optimizer("lm", model, lr=3.0)
    losses = _run(model, optimizer, coords, targets, steps=12)
    final = _mse(model, coords, targets)
    assert all(later <= earlier for earlier, later in zip(losses, losses[1:] + [final]))
    assert final < 0.5 * losses[0]
    state = optimizer.state[next(model.parameters())]
    assert state["rejected"] > 0 and state["accepted"] > 0


def test_lm_without_residuals_is_one_clear_error():
    model = _field()
    optimizer = build_optimizer("lm", model)
    assert wants_residuals(optimizer)
    coords, targets = _regression()
    with pytest.raises(ValueError, match="lm fits mean-squared-error signals only"):
        make_closure(optimizer, lambda: torch.nn.functional.mse_loss(model(coords), targets))
    with pytest.raises(ValueError, match="residual tensor"):
        optimizer.step(lambda: torch.nn.functional.mse_loss(model(coords), targets))


def test_lm_refuses_a_network_whose_gram_matrix_is_too_large():
    with pytest.raises(ValueError, match=r"GiB.*--hidden"):
        build_optimizer("lm", _field(layers=2, hidden=256))


def test_other_optimizers_ignore_compute_residuals():
    """The residual closure is only for optimizers that declare wants_residuals; Adam still gets a backward pass."""
    coords, targets = _regression()
    model = _field()
    optimizer = build_optimizer("adam", model)
    assert not wants_residuals(optimizer)
    closure = make_closure(
        optimizer,
        lambda: torch.nn.functional.mse_loss(model(coords), targets),
        compute_residuals=lambda: pytest.fail("residuals evaluated for adam"),
    )
    loss = closure()
    assert loss.ndim == 0 and not loss.requires_grad
    assert all(p.grad is not None for p in model.parameters())
