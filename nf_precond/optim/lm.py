"""Levenberg–Marquardt for mean-squared-error fits of a small coordinate network (registry name ``lm``), full batch.

A damped Gauss–Newton method: with residuals r(θ) ∈ R^M (prediction - target) and their Jacobian J = ∂r/∂θ, one
step solves

    (JᵀJ / M + λ D) δ = -Jᵀr / M,        D = I ("identity", Levenberg) or diag(JᵀJ / M) ("diagonal", Marquardt),

by Cholesky, tries θ + lr·δ, and keeps it only if the loss mean(r²) went down: then λ shrinks by ``damping_down``,
otherwise θ is restored, λ grows by ``damping_up`` and the solve is repeated, at most ``max_attempts`` times. Small λ
is a Gauss–Newton step, large λ a short gradient step. Dividing by M makes λ independent of the number of samples.

Residuals, not a loss: the optimizer declares ``wants_residuals = True`` and ``make_closure(optimizer, compute_loss,
compute_residuals)`` hands it a closure returning the residual tensor. ``step`` evaluates it once with a graph and
accumulates JᵀJ and Jᵀr over chunks of residual rows (one batched backward pass per chunk, the rows' one-hot vectors
as the output gradients), then evaluates it without a graph for each trial step.

Memory: JᵀJ is P x P for P parameters (refused above ``max_matrix_bytes``, so LM is for small networks: a smaller
``--hidden`` is the fix), plus its Cholesky factor; a chunk of Jacobian rows is ``chunk_size`` x P; the batched
backward holds about ``chunk_size`` copies of the graph's activation gradients. Defaults (λ starts at 1e-3, x10 up,
x0.1 down, bounds 1e-10 and 1e10, 10 attempts, identity damping) are Marquardt's rule as torch-levenberg-marquardt
ships it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from nf_precond.checks import require_int_at_least, require_positive
from nf_precond.optim._common import check_finite_loss

Damping = Literal["identity", "diagonal"]

ROWS_TIMES_RESIDUALS = 2**20
"""Automatic chunk size: rows per batched backward such that rows x residuals stays under this many elements (each
activation gradient of the batched backward is that large times the layer width)."""


class LevenbergMarquardt(torch.optim.Optimizer):
    """Levenberg–Marquardt on all parameters jointly; ``step(closure)`` with a residual closure returns the loss
    mean(r²) before the step. State (λ, accepted and rejected trial counts) round-trips through ``state_dict``."""

    wants_residuals = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        damping: float = 1e-3,
        damping_up: float = 10.0,
        damping_down: float = 0.1,
        min_damping: float = 1e-10,
        max_damping: float = 1e10,
        max_attempts: int = 10,
        damping_matrix: Damping = "identity",
        chunk_size: int | None = None,
        max_matrix_bytes: int = 4 * 2**30,
    ) -> None:
        """``lr`` scales the accepted step δ (1 = the full Gauss–Newton/LM step). ``damping`` is the initial λ;
        ``damping_up`` > 1 and ``damping_down`` < 1 multiply it after a rejected / accepted trial, within
        [``min_damping``, ``max_damping``]. ``damping_matrix`` is D above. ``chunk_size`` is the number of residual
        rows per batched backward pass (None: automatic). ``max_matrix_bytes`` bounds the size of JᵀJ."""
        require_positive("lr", lr)
        require_positive("damping", damping)
        require_positive("min_damping", min_damping)
        require_positive("max_damping", max_damping)
        if not min_damping <= damping <= max_damping:
            raise ValueError(
                f"damping must be in [min_damping, max_damping] = [{min_damping}, {max_damping}], got {damping!r}"
            )
        if not (isinstance(damping_up, (int, float)) and damping_up > 1):
            raise ValueError(f"damping_up must be > 1, got {damping_up!r}")
        if not (isinstance(damping_down, (int, float)) and 0 < damping_down < 1):
            raise ValueError(f"damping_down must be in (0, 1), got {damping_down!r}")
        require_int_at_least("max_attempts", max_attempts, 1)
        if damping_matrix not in ("identity", "diagonal"):
            raise ValueError(f"damping_matrix must be 'identity' or 'diagonal', got {damping_matrix!r}")
        if chunk_size is not None:
            require_int_at_least("chunk_size", chunk_size, 1)
        defaults = {"lr": lr}
        super().__init__(params, defaults)
        self._params = [param for group in self.param_groups for param in group["params"]]
        self.hyper = {
            "damping_up": float(damping_up),
            "damping_down": float(damping_down),
            "min_damping": float(min_damping),
            "max_damping": float(max_damping),
            "max_attempts": max_attempts,
            "damping_matrix": damping_matrix,
            "chunk_size": chunk_size,
        }
        self._initial_damping = float(damping)
        count = sum(param.numel() for param in self._params)
        matrix_bytes = count * count * self._params[0].element_size()
        if matrix_bytes > max_matrix_bytes:
            raise ValueError(
                f"lm: JᵀJ for {count:,} parameters is {matrix_bytes / 2**30:.1f} GiB, over the "
                f"{max_matrix_bytes / 2**30:g} GiB limit; use a smaller network (--hidden) or another optimizer"
            )

    @property
    def _global(self) -> dict[str, Any]:
        """λ and the trial counts, kept in the first parameter's state so ``state_dict`` carries them."""
        state = self.state[self._params[0]]
        if "damping" not in state:
            state.update(damping=self._initial_damping, accepted=0, rejected=0)
        return state

    @property
    def damping(self) -> float:
        """The current λ."""
        return float(self._global["damping"])

    def _flat_params(self) -> Tensor:
        return torch.cat([param.detach().reshape(-1) for param in self._params])

    def _set_params(self, flat: Tensor) -> None:
        offset = 0
        for param in self._params:
            param.copy_(flat[offset : offset + param.numel()].view_as(param))
            offset += param.numel()

    def _lr_per_entry(self, like: Tensor) -> Tensor | float:
        """Each parameter entry's group lr (a scalar when there is one group)."""
        if len(self.param_groups) == 1:
            return float(self.param_groups[0]["lr"])
        return torch.cat(
            [torch.full((param.numel(),), float(group["lr"]), dtype=like.dtype, device=like.device)
             for group in self.param_groups for param in group["params"]]
        )

    def normal_equations(self, residuals: Tensor) -> tuple[Tensor, Tensor]:
        """(JᵀJ / M, Jᵀr / M) for the flattened ``residuals`` (with their graph), accumulated over chunks of rows."""
        with torch.enable_grad():
            flat = residuals.reshape(-1)
        rows = flat.numel()
        count = sum(param.numel() for param in self._params)
        chunk = self.hyper["chunk_size"] or max(1, min(rows, ROWS_TIMES_RESIDUALS // rows))
        dtype, device = self._params[0].dtype, self._params[0].device
        gram = torch.zeros(count, count, dtype=dtype, device=device)
        gradient = torch.zeros(count, dtype=dtype, device=device)
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            one_hot = torch.zeros(stop - start, rows, dtype=flat.dtype, device=flat.device)
            one_hot[torch.arange(stop - start), torch.arange(start, stop)] = 1
            grads = torch.autograd.grad(
                flat, self._params, grad_outputs=one_hot, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
            jacobian = torch.cat(
                [
                    grad.reshape(stop - start, -1)
                    if grad is not None
                    else torch.zeros(stop - start, param.numel(), dtype=dtype, device=device)
                    for grad, param in zip(grads, self._params)
                ],
                dim=1,
            )
            gram.addmm_(jacobian.T, jacobian)
            gradient.addmv_(jacobian.T, flat[start:stop].detach().to(dtype))
        return gram.div_(rows), gradient.div_(rows)

    def _solve(self, gram: Tensor, gradient: Tensor, damping: float) -> Tensor | None:
        """δ from (gram + λ D) δ = -gradient; None when the damped matrix is not numerically positive definite."""
        if self.hyper["damping_matrix"] == "identity":
            scale = torch.ones_like(gradient)
        else:
            diagonal = gram.diagonal()
            scale = diagonal.clamp(min=torch.finfo(gram.dtype).eps * max(float(diagonal.max()), 1.0))
        factor, info = torch.linalg.cholesky_ex(gram + torch.diag(damping * scale))
        if int(info) != 0:
            return None
        return torch.cholesky_solve(-gradient.unsqueeze(1), factor).squeeze(1)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """One LM iteration: residuals and JᵀJ at θ, then up to ``max_attempts`` damped solves until the loss drops."""
        with torch.enable_grad():
            residuals = closure()
        if not isinstance(residuals, Tensor) or residuals.ndim == 0:
            raise ValueError(
                "lm needs the residual tensor (prediction - target), not a scalar loss; build the closure with "
                "make_closure(optimizer, compute_loss, compute_residuals=...)"
            )
        if not residuals.requires_grad:
            raise ValueError("lm: the residuals have no graph to the parameters; compute them with gradients enabled")
        loss = residuals.detach().square().mean()
        check_finite_loss(loss, "LevenbergMarquardt")
        gram, gradient = self.normal_equations(residuals)
        del residuals
        state = self._global
        hyper = self.hyper
        start = self._flat_params()
        lr = self._lr_per_entry(start)
        damping = float(state["damping"])
        for _ in range(hyper["max_attempts"]):
            delta = self._solve(gram, gradient, damping)
            if delta is not None:
                self._set_params(start + lr * delta)
                trial = closure().detach().square().mean()
                if bool(torch.isfinite(trial)) and float(trial) < float(loss):
                    state["accepted"] += 1
                    state["damping"] = max(damping * hyper["damping_down"], hyper["min_damping"])
                    return loss
                self._set_params(start)
            state["rejected"] += 1
            if damping >= hyper["max_damping"]:
                break
            damping = min(damping * hyper["damping_up"], hyper["max_damping"])
        # No trial lowered the loss: θ is unchanged and the next step starts from the largest λ tried.
        state["damping"] = damping
        return loss

    def reset(self) -> None:
        """Forget λ (back to the initial damping), e.g. when the training data change."""
        self._global.update(damping=self._initial_damping)
