"""AdaHessian (Yao et al. 2021) in paper 2's two variants: AdaHessian(J) (Jacobi) and AdaHessian(E) (equilibration)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nf_precond.checks import require_power
from nf_precond.optim.curvature_optimizer import CurvatureOptimizer

VARIANTS = ("jacobi", "equilibration")
DEFAULT_HESSIAN_POWER = {"jacobi": 0.5, "equilibration": 1.0}
"""Per variant: the original's 1 for D^E (paper 2's setting); 0.5 for D^J, where 1 diverges (see the class docstring)."""


class AdaHessian(CurvatureOptimizer):
    """Adam with a Hessian-vector-product preconditioner: ``θ ← θ − lr · m̂ / (D^{hessian_power} + eps)``.

    Both variants draw one Rademacher v per curvature step and take a true HVP ``Hv`` (no gradient squares).
    What each one averages (EMA with β₂, bias-corrected over the k curvature estimates taken):

    - ``"equilibration"`` — AdaHessian(E), the original implementation (amirgholami/adahessian): it squares the
      Hutchinson sample ``|v ⊙ Hv|``, which for Rademacher v *is* ``|Hv|``, so it keeps ``s = EMA[(Hv)²]`` and
      uses ``D = sqrt(ŝ)``, an estimate of the row norms ``‖H_i,·‖`` (D^E, like ESGD). No spatial averaging: the
      original averages only over conv-kernel dimensions, which coordinate MLPs do not have.
    - ``"jacobi"`` — AdaHessian(J), the Jacobi preconditioner the AdaHessian paper describes: the signed
      Hutchinson samples are averaged *before* the absolute value, ``z = EMA[v ⊙ Hv]``, ``D = |ẑ| → |diag H|``
      (D^J). Averaging squares instead would give D^E again. (Paper 2's released AdaHessian_J keeps EMA[|Hv|] and
      takes its square root, which estimates neither D^J nor D^E; it is not reproduced.)

    ``hessian_power`` k: the step divides by D^k. Default (None): 1 for equilibration (the original and paper 2);
    0.5 for jacobi. A true D^J with k = 1 is a diagonal-Newton step, and a Hutchinson estimate of a diagonal
    entry near zero (sine/Gaussian fields have many: indefinite, off-diagonal-dominated Hessians) gives steps of up
    to lr/eps, which makes a sine field diverge within a few hundred steps, while k = 0.5 trains smoothly (and is
    the same curvature scale as paper 2's released AdaHessian_J, which divides by the square root of an |Hv|
    average). Measured in the variant race of ``benchmarks/README.md``: Jacobi suits Gaussian fields and sine
    fields badly at paper 2's lr. Curvature is estimated on
    every step while t < ``warmup`` and then every ``update_every`` steps (defaults 1 and 1: every step, like the
    original). Paper 2's defaults: lr 0.15, betas (0.9, 0.999), eps 1e-4. Weight decay is decoupled, as in the
    original: ``θ ← θ(1 − lr·wd)``.
    """

    optimizer_name = "AdaHessian"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float | None = None,
        variant: str = "jacobi",
        update_every: int = 1,
        warmup: int = 1,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if hessian_power is None:
            hessian_power = DEFAULT_HESSIAN_POWER[variant]
        require_power("hessian_power", hessian_power, "1: divide by D, as in paper 2; 0.5: by sqrt(D)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power,
                        variant=variant, update_every=update_every, warmup=warmup)  # fmt: skip
        super().__init__(params, defaults)

    def _init_curvature(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"exp_avg_curvature": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _accumulate(self, state: dict[str, Any], v: torch.Tensor, hv: torch.Tensor, group: dict[str, Any]) -> None:
        sample = v * hv if group["variant"] == "jacobi" else hv.square()
        state["exp_avg_curvature"].lerp_(sample, 1.0 - group["betas"][1])

    def _preconditioner(self, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        mean = state["exp_avg_curvature"] / (1.0 - group["betas"][1] ** state["curvature_updates"])
        diagonal = mean.abs_() if group["variant"] == "jacobi" else mean.sqrt_()
        return diagonal.pow_(group["hessian_power"])


__all__ = ["DEFAULT_HESSIAN_POWER", "VARIANTS", "AdaHessian"]
