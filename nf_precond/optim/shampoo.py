"""Shampoo (Gupta, Koren & Singer, 2018) for matrix-shaped parameters, as summarized in paper 2's supplementary
(Algorithm 1): with ``G`` the gradient of an ``m x n`` weight,

    L_t = L_{t-1} + G Gᵀ,   R_t = R_{t-1} + Gᵀ G,   L_0 = eps I_m,   R_0 = eps I_n,
    W  <- W - lr L_t^{-1/4} G R_t^{-1/4}.

Statistics are plain sums, as in the algorithm, so the step shrinks like AdaGrad's. Choices this module makes:

- Parameters with more than two dimensions are viewed as ``shape[0] x prod(shape[1:])`` matrices.
- Vectors and scalars (biases, per-layer scalars) and matrices with a side longer than ``max_preconditioner_dim``
  get the diagonal version of the same rule: ``h_t = eps + sum g²`` per entry and the step ``g h_t^{-1/2}`` (Shampoo's
  order-1 exponent -1/2 restricted to the diagonal, i.e. diagonal AdaGrad). It needs no eigendecomposition and no
  ``n x n`` memory.
- The inverse roots come from ``torch.linalg.eigh`` with eigenvalues clamped at ``eps`` (the true spectrum is
  ``>= eps`` by construction; rounding can dip below). They are recomputed on every one of the first
  ``update_every`` steps and then every ``update_every`` steps, with the statistics accumulated on every step. The
  early every-step phase matters: a root computed before a gradient direction was ever seen magnifies that direction
  by up to ``eps^{-1/2}``, so roots are only allowed to go stale once the statistics have seen many gradients.
  ``update_every=1`` is Algorithm 1 exactly.
- Weight decay is L2 (added to the gradient before the statistics); momentum is heavy-ball on the preconditioned
  step. Both default to 0, as in Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from nf_precond.checks import require_in_unit_interval, require_positive
from nf_precond.optim._common import check_finite_loss


def matrix_inverse_root(matrix: torch.Tensor, root: int, floor: float) -> torch.Tensor:
    """``matrix^{-1/root}`` of a symmetric PSD matrix by eigendecomposition, eigenvalues clamped below at ``floor``.

    Computed in at least float32 (half-precision eigh is unsupported and too coarse) and returned in that dtype.
    """
    work = matrix.float() if matrix.dtype in (torch.float16, torch.bfloat16) else matrix
    eigenvalues, eigenvectors = torch.linalg.eigh(work)
    scaled = eigenvalues.clamp(min=floor).pow(-1.0 / root)
    return (eigenvectors * scaled) @ eigenvectors.mT


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """The ``shape[0] x prod(shape[1:])`` view Shampoo preconditions a tensor of two or more dimensions as."""
    return tensor.reshape(tensor.shape[0], -1)


class Shampoo(torch.optim.Optimizer):
    """Shampoo with left/right Kronecker statistics for matrices and diagonal AdaGrad for the rest (module docs).

    Args:
        params: parameters or parameter groups.
        lr: step size η (paper 2: 0.1 for Gaussian/wavelet fields, 0.01 for sine).
        eps: initial statistics ``eps I`` (and the diagonal's ``eps``); bounds the magnification of rare directions.
        update_every: recompute the inverse roots every this many steps (after doing so on each of the first
            ``update_every`` steps); 1 is Algorithm 1 exactly.
        momentum: heavy-ball coefficient on the preconditioned step, in [0, 1).
        weight_decay: L2 coefficient added to the gradient.
        max_preconditioner_dim: matrices with a side longer than this fall back to the diagonal rule, bounding the
            ``side x side`` memory and the ``O(side³)`` eigendecomposition.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        eps: float = 1e-4,
        update_every: int = 10,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        max_preconditioner_dim: int = 4096,
    ) -> None:
        require_positive("lr", lr)
        require_positive("eps", eps)
        if not (isinstance(update_every, int) and update_every >= 1):
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
        require_in_unit_interval("momentum", momentum)
        require_positive("weight_decay", weight_decay, allow_zero=True)
        if not (isinstance(max_preconditioner_dim, int) and max_preconditioner_dim >= 1):
            raise ValueError(f"max_preconditioner_dim must be an integer >= 1, got {max_preconditioner_dim!r}")
        defaults = dict(
            lr=lr,
            eps=eps,
            update_every=update_every,
            momentum=momentum,
            weight_decay=weight_decay,
            max_preconditioner_dim=max_preconditioner_dim,
        )
        super().__init__(params, defaults)

    @staticmethod
    def uses_kronecker_factors(param: torch.Tensor, max_preconditioner_dim: int) -> bool:
        """True when ``param`` gets left/right statistics; False when it gets the diagonal rule."""
        return param.dim() >= 2 and max(as_matrix(param).shape) <= max_preconditioner_dim

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Evaluate ``closure`` (it back-propagates, see ``make_closure``), then take one Shampoo step."""
        if closure is None:
            raise ValueError("Shampoo.step needs a closure; build one with nf_precond.optim.make_closure")
        with torch.enable_grad():
            loss = closure()
        check_finite_loss(loss, "Shampoo")
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("Shampoo does not support sparse gradients; use dense parameters")
                self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        grad = param.grad
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        state = self.state[param]
        if not state:
            state["step"] = 0
            if self.uses_kronecker_factors(param, group["max_preconditioner_dim"]):
                rows, cols = as_matrix(param).shape
                like = dict(dtype=param.dtype, device=param.device)
                state["left"] = group["eps"] * torch.eye(rows, **like)
                state["right"] = group["eps"] * torch.eye(cols, **like)
                state["left_root"] = torch.eye(rows, **like)
                state["right_root"] = torch.eye(cols, **like)
            else:
                state["diagonal"] = torch.full_like(param, group["eps"])
            if group["momentum"] != 0:
                state["momentum_buffer"] = torch.zeros_like(param)
        state["step"] += 1

        if "left" in state:
            matrix = as_matrix(grad)
            state["left"].addmm_(matrix, matrix.mT)
            state["right"].addmm_(matrix.mT, matrix)
            step_count, every = state["step"], group["update_every"]
            if step_count <= every or step_count % every == 0:
                state["left_root"] = matrix_inverse_root(state["left"], 4, group["eps"]).to(param.dtype)
                state["right_root"] = matrix_inverse_root(state["right"], 4, group["eps"]).to(param.dtype)
            direction = (state["left_root"] @ matrix @ state["right_root"]).reshape(param.shape)
        else:
            state["diagonal"].addcmul_(grad, grad)
            direction = grad / state["diagonal"].sqrt()

        if group["momentum"] != 0:
            direction = state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
        param.add_(direction, alpha=-group["lr"])
