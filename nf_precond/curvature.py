"""Curvature of a loss as small pure functions: Hessian-vector products, stochastic diagonal estimates, the dense
Hessian of small models, its spectrum, and HVP sparsity.

The optimizers (ESGD, ESGD-max, AdaHessian) use ``rademacher_like`` + ``hvp``; diagnostics and tests use the rest.
Conventions: a "list" is one tensor per parameter, shaped like that parameter; the dense Hessian is over the
parameters flattened and concatenated in the given order.

The two diagonal preconditioners of paper 2 (Sec. 4.1), estimated with Rademacher vectors v (entries ±1):
- Jacobi ``D^J = |diag H|``: ``E[v ⊙ Hv] = diag H`` (Hutchinson), because ``E[v_i v_j] = δ_ij``.
- Equilibration ``D^E_i = ‖H_i,·‖``: ``E[(Hv)_i²] = Σ_j H_ij²``, so ``sqrt(E[(Hv)²])`` is the row 2-norm.
Note ``(v ⊙ Hv)² = (Hv)²`` for Rademacher v: squaring a Hutchinson sample before averaging gives D^E, not D^J.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LossFn = Callable[[], torch.Tensor]


def rademacher_like(tensors: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Random ±1 tensors shaped like ``tensors`` (same dtype and device).

    Without ``generator`` they come from the global RNG of each tensor's device, so ``torch.manual_seed`` makes a
    run repeatable; with one, they are drawn on the generator's device and moved.
    """
    vectors = []
    for tensor in tensors:
        device = generator.device if generator is not None else tensor.device
        bits = torch.randint(0, 2, tensor.shape, generator=generator, device=device)
        vectors.append((bits * 2 - 1).to(device=tensor.device, dtype=tensor.dtype))
    return vectors


def hvp(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    *,
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """``H·v`` for the Hessian of the loss whose gradients ``grads`` (w.r.t. ``params``) were built with
    ``create_graph=True``; ``vectors`` are shaped like ``params``.

    One reverse pass: ``Hv = ∂(g·v)/∂θ``. A gradient without a graph is constant in θ, so its Hessian rows are zero
    and it is skipped. ``retain_graph=True`` keeps the graph for further products (estimators with many samples).
    """
    if not (len(grads) == len(params) == len(vectors)):
        raise ValueError(
            f"hvp needs one grad and one vector per parameter, got {len(grads)}, {len(params)}, {len(vectors)}"
        )
    with_graph = [(g, v) for g, v in zip(grads, vectors) if g.requires_grad]
    if not with_graph:
        raise ValueError(
            "the gradients carry no autograd graph, so no Hessian-vector product can be taken; back-propagate with "
            "loss.backward(create_graph=True) (nf_precond.optim.make_closure does this when the optimizer asks)"
        )
    products = torch.autograd.grad(
        [g for g, _ in with_graph],
        list(params),
        grad_outputs=[v for _, v in with_graph],
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(p) if hv is None else hv for p, hv in zip(params, products)]


def _grads_with_graph(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.enable_grad():
        loss = loss_fn()
        if loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
        grads = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def dense_hessian(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The full Hessian ``[n, n]`` of ``loss_fn()`` w.r.t. ``params`` flattened in order (n = total entries).

    One reverse pass per row, so only for small models (a few thousand parameters at most).
    """
    params = list(params)
    grads = _grads_with_graph(loss_fn, params)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])
    n = flat_grad.numel()
    hessian = flat_grad.new_zeros(n, n)
    if not flat_grad.requires_grad:  # the loss is at most linear in the parameters
        return hessian
    with torch.enable_grad():
        for row in range(n):
            entries = torch.autograd.grad(flat_grad[row], params, retain_graph=row < n - 1, allow_unused=True)
            hessian[row] = torch.cat(
                [torch.zeros_like(p).reshape(-1) if e is None else e.reshape(-1) for p, e in zip(params, entries)]
            )
    return hessian


def hessian_eigenvalues(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eigenvalues (ascending, float64) of the dense Hessian, symmetrized to remove round-off asymmetry."""
    hessian = dense_hessian(loss_fn, params).double()
    return torch.linalg.eigvalsh(0.5 * (hessian + hessian.T))


def _mean_over_samples(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    samples: int,
    generator: torch.Generator | None,
    statistic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Mean of ``statistic(v, Hv)`` over ``samples`` Rademacher vectors, all from the one gradient graph ``grads``."""
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    totals = [torch.zeros_like(p) for p in params]
    for index in range(samples):
        vectors = rademacher_like(params, generator)
        products = hvp(grads, params, vectors, retain_graph=index < samples - 1)
        for total, v, hv in zip(totals, vectors, products):
            total.add_(statistic(v, hv.detach()))
    return [total / samples for total in totals]


def hutchinson_diagonal(
    loss_fn: LossFn, params: Sequence[torch.Tensor], samples: int = 100, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Hutchinson's estimate of ``diag H``: the mean of ``v ⊙ Hv`` over ``samples`` Rademacher vectors (unbiased;
    the error of entry i shrinks like ``sqrt(Σ_{j≠i} H_ij² / samples)``)."""
    params = list(params)
    return _mean_over_samples(_grads_with_graph(loss_fn, params), params, samples, generator, lambda v, hv: v * hv)


def equilibration_diagonal(
    loss_fn: LossFn, params: Sequence[torch.Tensor], samples: int = 100, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """The equilibration preconditioner ``D^E_i ≈ ‖H_i,·‖₂``: ``sqrt`` of the mean of ``(Hv)²`` over ``samples``
    Rademacher vectors (the mean of squares is unbiased for the squared row norm)."""
    params = list(params)
    return equilibration_diagonal_of_grads(_grads_with_graph(loss_fn, params), params, samples, generator)


def equilibration_diagonal_of_grads(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    samples: int = 100,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """``equilibration_diagonal`` from gradients already back-propagated with ``create_graph=True`` (an optimizer's
    closure call), so the loss is not evaluated again; the graph is freed after the last sample."""
    squares = _mean_over_samples(grads, params, samples, generator, lambda v, hv: hv.square())
    return [s.sqrt() for s in squares]


@dataclass(frozen=True)
class HvpSparsity:
    """Fraction of (near-)zero entries of a Hessian-vector product, as in paper 2's Fig. 4."""

    per_tensor: tuple[float, ...]
    """One fraction per tensor of the list, in order (one per parameter: a layer's weight and bias separately)."""
    overall: float
    """Fraction over all entries of all tensors (weighted by size, not a mean of ``per_tensor``)."""


def hvp_sparsity(hv_list: Sequence[torch.Tensor], atol: float = 0.0) -> HvpSparsity:
    """Fraction of entries with ``|x| <= atol`` per tensor and overall (``atol=0`` counts exact zeros)."""
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol!r}")
    if not hv_list:
        raise ValueError("hvp_sparsity needs at least one tensor")
    zero_counts = [int((hv.detach().abs() <= atol).sum()) for hv in hv_list]
    sizes = [hv.numel() for hv in hv_list]
    if 0 in sizes:
        raise ValueError("hvp_sparsity got an empty tensor; pass the Hessian-vector product of every parameter")
    return HvpSparsity(
        per_tensor=tuple(zeros / size for zeros, size in zip(zero_counts, sizes)),
        overall=sum(zero_counts) / sum(sizes),
    )


__all__ = [
    "HvpSparsity",
    "dense_hessian",
    "equilibration_diagonal",
    "equilibration_diagonal_of_grads",
    "hessian_eigenvalues",
    "hutchinson_diagonal",
    "hvp",
    "hvp_sparsity",
    "rademacher_like",
]
