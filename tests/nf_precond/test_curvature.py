"""nf_precond.curvature against dense math: analytic Hessians of quadratics, torch.func's Hessian, and the exact
variance of the Rademacher estimators on tiny coordinate MLPs of every activation."""

from __future__ import annotations

import pytest
import torch

from nf_precond import curvature
from nf_precond.nn import ACTIVATIONS, CoordinateMLP, FieldConfig

ACTIVATION_KWARGS = {"gauss": {"sigma": 0.5}, "relu-pe": {"pe_frequencies": 2}}


def _tiny_field(activation: str) -> tuple[torch.nn.Module, curvature.LossFn]:
    """A 2-layer, width-5 field of ``activation`` (float64) fitting 16 random points, and its MSE loss: small
    enough for a dense Hessian."""
    model = CoordinateMLP(2, 1, FieldConfig(hidden=5, layers=2, activation=activation, **ACTIVATION_KWARGS.get(activation, {})), dtype=torch.float64)  # fmt: skip
    coords = torch.rand(16, 2, dtype=torch.float64) * 2 - 1
    targets = torch.rand(16, 1, dtype=torch.float64)
    model.points = (coords, targets)  # for tests that rebuild the loss functionally
    return model, lambda: torch.nn.functional.mse_loss(model(coords), targets)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _quadratic(dtype=torch.float64):
    """0.5 θᵀAθ + bᵀθ over two parameter tensors (shapes [2, 2] and [3]) with a known dense, indefinite A."""
    torch.manual_seed(1)
    m = torch.randn(7, 7, dtype=dtype)
    a = m + m.T
    b = torch.randn(7, dtype=dtype)
    params = [torch.randn(2, 2, dtype=dtype, requires_grad=True), torch.randn(3, dtype=dtype, requires_grad=True)]

    def loss():
        theta = _flat(params)
        return 0.5 * theta @ a @ theta + b @ theta

    return params, loss, a


def test_all_activations_are_covered():
    assert set(ACTIVATIONS) == {"sine", "gauss", "wavelet", "relu", "relu-pe"}


def test_dense_hessian_of_a_quadratic_is_its_matrix():
    params, loss, a = _quadratic()
    torch.testing.assert_close(curvature.dense_hessian(loss, params), a)


def test_hessian_eigenvalues_of_a_quadratic_are_its_matrix_eigenvalues():
    params, loss, a = _quadratic()
    torch.testing.assert_close(curvature.hessian_eigenvalues(loss, params), torch.linalg.eigvalsh(a))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_hessian_matches_torch_func_hessian(activation):
    model, loss = _tiny_field(activation)
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    coords, targets = model.points

    def loss_of_flat(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [p.numel() for p in params])
        weights = {n: piece.view_as(p) for n, piece, p in zip(names, pieces, params)}
        out = torch.func.functional_call(model, weights, (coords,))
        return torch.nn.functional.mse_loss(out, targets)

    expected = torch.func.hessian(loss_of_flat)(_flat(params))
    actual = curvature.dense_hessian(loss, list(model.parameters()))
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hvp_equals_dense_hessian_times_vector(activation):
    model, loss = _tiny_field(activation)
    params = list(model.parameters())
    hessian = curvature.dense_hessian(loss, params)
    grads = torch.autograd.grad(loss(), params, create_graph=True)
    vectors = [torch.randn_like(p) for p in params]
    products = curvature.hvp(grads, params, vectors)
    assert [hv.shape for hv in products] == [p.shape for p in params]
    torch.testing.assert_close(_flat(products), hessian @ _flat(vectors))


def test_hvp_of_a_quadratic_is_exact_and_skips_graphless_gradients():
    params, loss, a = _quadratic()
    grads = torch.autograd.grad(loss(), params, create_graph=True)
    vectors = curvature.rademacher_like(params)
    torch.testing.assert_close(_flat(curvature.hvp(grads, params, vectors)), a @ _flat(vectors))

    # Linear in y: y's gradient is constant (no graph), so H's y rows/columns are zero.
    x, y = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    gx, gy = torch.autograd.grad((x**3).sum() + (2.0 * y).sum(), [x, y], create_graph=True)
    assert not gy.requires_grad
    hx, hy = curvature.hvp([gx, gy], [x, y], [torch.ones(3), torch.ones(2)])
    torch.testing.assert_close(hx, 6 * x.detach())
    torch.testing.assert_close(hy, torch.zeros(2))


def test_hvp_without_graph_names_the_fix():
    x = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad((x**2).sum(), [x])
    with pytest.raises(ValueError, match="create_graph=True"):
        curvature.hvp([grad], [x], [torch.ones(3)])


def test_rademacher_like_is_plus_minus_one_shaped_like_and_seeded():
    tensors = [torch.zeros(50, 40, dtype=torch.float64), torch.zeros(7)]
    torch.manual_seed(5)
    first = curvature.rademacher_like(tensors)
    torch.manual_seed(5)
    again = curvature.rademacher_like(tensors)
    for v, w, t in zip(first, again, tensors):
        assert v.shape == t.shape and v.dtype == t.dtype and v.device == t.device
        assert set(v.unique().tolist()) == {-1.0, 1.0}
        assert torch.equal(v, w)
    assert abs(float(first[0].mean())) < 0.1  # 2000 fair signs: std of the mean is 0.022
    generator = torch.Generator().manual_seed(5)
    from_generator = curvature.rademacher_like(tensors, generator)
    assert torch.equal(from_generator[0], curvature.rademacher_like(tensors, torch.Generator().manual_seed(5))[0])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hutchinson_diagonal_converges_to_diag_h(activation):
    model, loss = _tiny_field(activation)
    params = list(model.parameters())
    hessian = curvature.dense_hessian(loss, params)
    diag = hessian.diagonal()
    off_diag_row_sq = (hessian**2).sum(1) - diag**2  # the variance of one sample of (v ⊙ Hv)_i
    errors = {}
    for samples in (10, 1000):
        estimate = _flat(curvature.hutchinson_diagonal(loss, params, samples=samples))
        errors[samples] = estimate - diag
    # Six standard deviations of the mean of 1000 samples, entry by entry.
    assert torch.all(errors[1000].abs() <= 6 * (off_diag_row_sq / 1000).sqrt() + 1e-12)
    assert errors[1000].norm() < 0.5 * errors[10].norm()  # expected ratio: sqrt(10 / 1000) = 0.1


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_equilibration_diagonal_converges_to_row_norms(activation):
    model, loss = _tiny_field(activation)
    params = list(model.parameters())
    hessian = curvature.dense_hessian(loss, params)
    row_sq = (hessian**2).sum(1)
    sample_variance = 2 * (row_sq**2 - (hessian**4).sum(1))  # Var[(Hv)_i²] for Rademacher v
    errors = {}
    for samples in (10, 1000):
        estimate = _flat(curvature.equilibration_diagonal(loss, params, samples=samples))
        errors[samples] = estimate - row_sq.sqrt()
        if samples == 1000:
            assert torch.all((estimate**2 - row_sq).abs() <= 6 * (sample_variance / 1000).sqrt() + 1e-12)
    assert errors[1000].norm() < 0.5 * errors[10].norm()


def test_estimators_are_exact_for_a_diagonal_hessian():
    h = torch.tensor([3.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = lambda: 0.5 * (h * x**2).sum()  # noqa: E731
    torch.testing.assert_close(curvature.hutchinson_diagonal(loss, [x], samples=3)[0], h)
    torch.testing.assert_close(curvature.equilibration_diagonal(loss, [x], samples=3)[0], h.abs())


def test_estimators_reject_a_bad_sample_count():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="samples"):
        curvature.hutchinson_diagonal(lambda: (x**2).sum(), [x], samples=0)


def test_hvp_sparsity_counts_near_zero_entries_per_tensor_and_overall():
    hv = [torch.tensor([0.0, 1e-9, 2.0, -3.0]), torch.tensor([[0.0, 0.5], [-1e-7, 4.0]])]
    exact = curvature.hvp_sparsity(hv)
    assert exact.per_tensor == (0.25, 0.25) and exact.overall == 2 / 8
    loose = curvature.hvp_sparsity(hv, atol=1e-6)
    assert loose.per_tensor == (0.5, 0.5) and loose.overall == 4 / 8
    with pytest.raises(ValueError, match="atol"):
        curvature.hvp_sparsity(hv, atol=-1.0)


def test_relu_fields_have_sparser_hvps_than_smooth_fields():
    """Paper 2, Thms. 4.2/4.3: ReLU HVPs have exact zeros (dead units), Gaussian and sine HVPs are dense."""
    overall = {}
    for activation in ("relu", "gauss", "sine"):
        model, loss = _tiny_field(activation)
        params = list(model.parameters())
        grads = torch.autograd.grad(loss(), params, create_graph=True)
        products = curvature.hvp(grads, params, curvature.rademacher_like(params))
        overall[activation] = curvature.hvp_sparsity(products).overall
    assert overall["gauss"] == 0.0 and overall["sine"] == 0.0
    assert overall["relu"] > 0.0
