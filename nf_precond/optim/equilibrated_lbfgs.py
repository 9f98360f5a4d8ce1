"""L-BFGS whose initial inverse Hessian is ESGD's equilibration diagonal instead of one scale for every parameter.

Plain L-BFGS starts each two-loop recursion from H₀ = γI. On full-batch Gaussian fields that one scale leaves it
behind Adam and SOAP, which scale every parameter (or block) by its own statistics. ESGD's equilibration diagonal
(paper 2) measures how strongly the loss curves along each parameter, Dᵢ ≈ ‖H_{i,·}‖₂, from Hessian-vector products
with Rademacher vectors. With H₀ = γ·diag(s²), s = (D + λ)^-½ and D fixed, L-BFGS is exactly the plain method on the
rescaled parameters φ = θ / s (its γ = sᵀy / yᵀy in φ is γ = sᵀy / yᵀH₀y in θ). ``EquilibratedLBFGS`` runs it that
way: the same core (curvature history, strong-Wolfe search, tolerances) sees φ and ∂L/∂φ = s ⊙ ∂L/∂θ, while the
field keeps θ = φ ⊙ s. D comes from the first step's own closure call (``needs_graph``), so estimating it costs
``samples`` Hessian-vector products once, and no extra loss evaluation.

Measured in ``benchmarks/results/equilibrated_lbfgs_gauss.md`` (kept) and ``equilibrated_lbfgs.md`` (sine: not
better than plain L-BFGS); ``benchmarks/README.md`` says when to use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from nf_precond.checks import require_int_at_least, require_positive
from nf_precond.curvature import equilibration_diagonal_of_grads
from nf_precond.optim.lbfgs import LBFGS


class EquilibratedLBFGS(LBFGS):
    """L-BFGS on φ = θ / s, s = (D + λ)^-½ normalized to mean s² = 1 (so ``lr`` keeps plain L-BFGS's meaning), D the
    equilibration diagonal at the parameters of the first ``step``, λ = ``damping`` x mean(D).

    ``state_dict`` holds s with the history, so a resumed run follows the same trajectory. ``reset()`` (a new
    objective) also forgets D: the next step estimates it afresh.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        samples: int = 10,
        damping: float = 1e-2,
        **lbfgs_options: Any,
    ) -> None:
        """
        Args:
            samples: Hessian-vector products averaged into D (10 cost about 3.6 s on a 4x64 field of a 256² photo
                on one CPU core, once).
            damping: λ as a fraction of mean(D); keeps nearly flat directions from taking unbounded steps.
            lbfgs_options: the rest of ``LBFGS``'s arguments (history_size, max_iter, line_search, ...).
        """
        require_int_at_least("samples", samples, 1)
        require_positive("damping", damping, finite=True)
        super().__init__(params, lr=lr, **lbfgs_options)
        self._samples, self._damping = samples, damping

    @property
    def needs_graph(self) -> bool:  # type: ignore[override]
        """True until D is estimated: that step's closure must back-propagate with ``create_graph=True``."""
        return "scales" not in self._state()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Run ``max_iter`` L-BFGS iterations in φ (estimating D first if it is not known yet); returns the loss at
        the start of the step."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure (see nf_precond.optim.make_closure)")
        if self.needs_graph:
            self._estimate_scales(closure)
        return super().step(closure)

    def _estimate_scales(self, closure: Callable[[], Tensor]) -> None:
        """One closure call with its double-backward graph: D from ``samples`` Hessian-vector products, then that
        call's loss and gradient (in φ) as the start of the first iteration."""
        loss, _ = self._evaluate_at_start(closure)  # refuses a non-finite loss or gradient
        params = self._params
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        with torch.enable_grad():
            diagonal = equilibration_diagonal_of_grads(grads, params, self._samples)
        for p in params:  # the gradients no longer hold the double-backward graph
            if p.grad is not None:
                p.grad = p.grad.detach()
        diagonal = torch.cat([d.reshape(1, -1) for d in diagonal], dim=1)
        inverse = (diagonal + self._damping * diagonal.mean()).reciprocal_()
        self._state()["scales"] = inverse.div_(inverse.mean()).sqrt_()
        self._remember_start(closure, loss, self._flat_grad())

    # The core's flat views, in φ.

    def _flat_params(self) -> Tensor:
        return super()._flat_params() / self._state()["scales"]

    def _flat_grad(self) -> Tensor:
        grad = super()._flat_grad()
        scales = self._state().get("scales")
        return grad if scales is None else grad * scales  # None: the evaluation D is estimated at, still in θ

    def _set_params(self, flat: Tensor) -> None:
        super()._set_params(flat * self._state()["scales"])


__all__ = ["EquilibratedLBFGS"]
