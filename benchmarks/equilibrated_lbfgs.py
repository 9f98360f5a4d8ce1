"""Improving ours where the leaderboard shows a gap: L-BFGS whose initial inverse Hessian is ESGD's equilibration
diagonal instead of one scale for every parameter.

    python -m benchmarks.equilibrated_lbfgs [--refresh 0,15] [--samples 10] [--activation sine] [--adam-lr 1e-3]
    python -m benchmarks.equilibrated_lbfgs --smoke     # tiny photos and budget, results to a temporary folder

L-BFGS starts each two-loop recursion from H₀ = γI, one scale for all parameters, while the optimizers that beat it
on the full-batch Gaussian board (Adam, SOAP) scale every parameter (or block) by its own statistics. ESGD's
equilibration diagonal (paper 2) measures how strongly the loss curves along each parameter, Dᵢ ≈ ‖H_{i,·}‖₂, from
Hessian-vector products with Rademacher vectors. With H₀ = γ·diag(1 / (D + λ)) and D fixed, L-BFGS is exactly the
plain method on the rescaled parameters φ = θ ⊙ (D + λ)^½ (its γ = sᵀy / yᵀy in φ is γ = sᵀy / yᵀH₀y in θ), which is
how ``EquilibratedLBFGS`` runs it: the repository's L-BFGS on φ, with D estimated at its first step, on the clock.
λ = ``--damping`` x mean(D) keeps nearly flat directions from taking unbounded steps.

The variants (raced as ``benchmarks.phased`` describes):

- ``adam``: Adam at ``--adam-lr`` (the board's sweep winner for the activation) for the whole budget: the baseline;
- ``lbfgs``: L-BFGS for the whole budget;
- ``equilibrated``: ``EquilibratedLBFGS`` for the whole budget (D from the initial weights);
- ``equilibrated, D every R s``: a fresh D (and history) from the current weights every R seconds (``--refresh``).

Kept only if its median speed-up beats plain L-BFGS's. Results go to
``benchmarks/results/equilibrated_lbfgs.{md,json}`` (``--results-name`` for another activation's run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from benchmarks.phased import LocalOptimizer, Phase, Variant, experiment_parser, parse, run_experiment
from nf_precond.curvature import equilibration_diagonal
from nf_precond.optim.lbfgs import LBFGS

SMOKE = {"budget": 2.0, "size": 16, "refresh": "0,1", "samples": 2, "compile": "off"}
"""--smoke: a few seconds per run on tiny eager fields."""
LBFGS_STEP = 1.0
"""L-BFGS's initial trial step (its registry default; the line search picks the step)."""


class EquilibratedLBFGS(torch.optim.Optimizer):
    """L-BFGS on φ = θ / s with s = (D + λ)^-½ (normalized to mean s² = 1), D the equilibration diagonal of
    ``loss_fn`` at the parameters of the first ``step``, from ``samples`` Hessian-vector products."""

    def __init__(self, params: Iterable[Tensor], loss_fn: Callable[[], Tensor], lr: float = LBFGS_STEP,
                 samples: int = 10, damping: float = 1e-2, seed: int = 0) -> None:  # fmt: skip
        super().__init__(list(params), {"lr": lr})
        self._params: list[Tensor] = self.param_groups[0]["params"]
        self._loss_fn, self._samples, self._damping, self._seed = loss_fn, samples, damping, seed
        self._scales: list[Tensor] = []
        self._phis: list[Tensor] = []
        self._inner: LBFGS | None = None
        self._wrapped: tuple[Callable[..., Tensor] | None, Callable[..., Tensor] | None] = (None, None)

    def _start(self) -> None:
        generator = torch.Generator(self._params[0].device).manual_seed(self._seed)
        with torch.enable_grad():
            diagonal = equilibration_diagonal(self._loss_fn, self._params, self._samples, generator)
        floor = self._damping * torch.cat([d.flatten() for d in diagonal]).mean()
        squares = [(d + floor).reciprocal() for d in diagonal]
        norm = torch.cat([s.flatten() for s in squares]).mean()
        self._scales = [(s / norm).sqrt() for s in squares]
        self._phis = [(p / s).detach().requires_grad_() for p, s in zip(self._params, self._scales)]
        self._inner = LBFGS(self._phis, lr=self.param_groups[0]["lr"])

    def _rescaled(self, closure: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``closure`` at θ = φ ⊙ s, its gradient carried to φ (∂L/∂φ = s ⊙ ∂L/∂θ)."""

        def rescaled(*nets: Tensor) -> Tensor:
            self._write_params()
            loss = closure(*nets)
            for phi, param, scale in zip(self._phis, self._params, self._scales):
                phi.grad = param.grad * scale
            return loss

        return rescaled

    @torch.no_grad()
    def step(self, closure: Callable[..., Tensor]) -> Tensor:  # type: ignore[override]
        if self._inner is None:
            self._start()
        if self._wrapped[0] is not closure:  # one wrapper per closure, so L-BFGS reuses the last step's evaluation
            self._wrapped = (closure, self._rescaled(closure))
        loss = self._inner.step(self._wrapped[1])
        self._write_params()  # the line search may end on a point it evaluated before the last one
        return loss

    @torch.no_grad()  # L-BFGS evaluates its closure with gradients on
    def _write_params(self) -> None:
        """θ = φ ⊙ s into the field's parameters."""
        torch._foreach_copy_(self._params, torch._foreach_mul(self._phis, self._scales))


def variants(refreshes: list[float], budget: float, adam_lr: float) -> list[Variant]:
    def every(seconds: float) -> tuple[Phase, ...]:
        fixed = math.ceil(budget / seconds) - 1
        return (*(Phase("equilibrated", LBFGS_STEP, seconds) for _ in range(fixed)), Phase("equilibrated", LBFGS_STEP))

    return [Variant("adam", (Phase("adam", adam_lr),)), Variant("lbfgs", (Phase("lbfgs", LBFGS_STEP),)),
            *(Variant("equilibrated" if refresh == 0 else f"equilibrated, D every {refresh:g} s",
                      (Phase("equilibrated", LBFGS_STEP),) if refresh == 0 else every(refresh))
              for refresh in refreshes)]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = experiment_parser(__doc__)
    parser.add_argument("--refresh", default="0,15",
                        help="seconds between fresh diagonals, comma-separated (0: D from the initial weights only)")
    parser.add_argument("--samples", type=int, default=10, help="Hessian-vector products per diagonal estimate")
    parser.add_argument("--damping", type=float, default=1e-2, help="λ as a fraction of mean(D)")
    args = parse(parser, argv, SMOKE)
    refreshes = [float(part) for part in args.refresh.split(",") if part.strip()]
    if any(not 0 <= refresh < args.budget for refresh in refreshes):
        parser.error(f"--refresh: every value must lie in [0, --budget {args.budget:g})")
    if args.samples < 1 or args.damping <= 0:
        parser.error("--samples must be >= 1 and --damping > 0")

    def equilibrated(field: torch.nn.Module, loss_fn: Callable[[], Tensor], lr: float) -> EquilibratedLBFGS:
        return EquilibratedLBFGS(field.parameters(), loss_fn, lr, samples=args.samples, damping=args.damping)

    title = (f"L-BFGS with ESGD's equilibration diagonal as its initial inverse Hessian ({args.activation}, full "
             f"batch; D from {args.samples} Hessian-vector products, λ = {args.damping:g} x mean D)")
    return run_experiment("equilibrated_lbfgs", title, args, argv, variants(refreshes, args.budget, args.adam_lr), idea="diagonal",
                          optimizers={"equilibrated": LocalOptimizer("lbfgs", equilibrated)})  # fmt: skip


if __name__ == "__main__":
    main()
