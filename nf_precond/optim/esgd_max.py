"""ESGD-max: ESGD with an infinity-norm (AdaMax-style) curvature statistic instead of an EMA (paper 2, ESGD remark)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nf_precond.checks import require_power
from nf_precond.optim.curvature_optimizer import CurvatureOptimizer
from nf_precond.optim.esgd import POWER_HINT


class ESGDMax(CurvatureOptimizer):
    """ESGD whose curvature statistic is the decayed running maximum of ``|Hv|``: ``u ← max(β₂·u, |Hv|)``, and
    ``θ ← θ − lr · m̂ / (u^{2p} + eps)``, so ``preconditioner_power`` p means what it means for ESGD
    (``0.5``: divide by ``u``, the released code's form; ``0.25``: by ``sqrt(u)``, paper 2's Eq. 6 read literally).

    Default p = ¼ by measurement (``benchmarks/results/esgd_variants.md``, 1000 steps at lr 0.15, Gaussian / sine:
    22.47 / 31.64 dB vs Adam's 19.12 / 30.01; p = ½ barely moves, 7.91 / 9.47 dB, because a maximum of |Hv| is
    larger than its RMS and so the steps are tiny). A maximum is not biased towards zero: no bias correction. Same schedule (warm-up, then every
    ``update_every``) and momentum as ``ESGD``. The released code kept ``max(β₂·d, (Hv)²)`` on squares (decay
    ``sqrt(β₂)`` per estimate on the ``|Hv|`` scale), used Nesterov momentum and an lr warm-up, and its image path
    never built the double-backward graph; here the graph comes from ``needs_graph`` like every optimizer's.
    """

    optimizer_name = "ESGDMax"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: int = 50,
        update_every: int = 100,
        preconditioner_power: float = 0.25,
    ) -> None:
        require_power("preconditioner_power", preconditioner_power, POWER_HINT)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup=warmup,
                        update_every=update_every, preconditioner_power=preconditioner_power)  # fmt: skip
        super().__init__(params, defaults)

    def _init_curvature(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"max_abs_hv": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _accumulate(self, state: dict[str, Any], v: torch.Tensor, hv: torch.Tensor, group: dict[str, Any]) -> None:
        decayed = state["max_abs_hv"].mul_(group["betas"][1])
        torch.maximum(decayed, hv.abs(), out=decayed)

    def _preconditioner(self, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        return state["max_abs_hv"].pow(2.0 * group["preconditioner_power"])


__all__ = ["ESGDMax"]
