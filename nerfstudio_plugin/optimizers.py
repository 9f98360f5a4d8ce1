"""nerfstudio `OptimizerConfig`s for our optimizers, so ESGD, ESGD-max and L-BFGS plug into nerfstudio's `Optimizers`.

Each config names its class in `_target` and builds it in `setup(params)` from its own fields (nerfstudio's base
`setup` passes every field, including `eps`, which L-BFGS does not take). `max_norm` (gradient clipping) is refused:
clipping between backward and `step` has no place in a closure-driven step (see `trainer.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Tuple, Type

import torch

from nerfstudio.engine.optimizers import OptimizerConfig

from nf_precond.optim.esgd import ESGD
from nf_precond.optim.esgd_max import ESGDMax
from nf_precond.optim.lbfgs import LBFGS


def _require_no_clipping(config: OptimizerConfig) -> None:
    if config.max_norm is not None:
        raise ValueError(
            f"{type(config).__name__}: max_norm={config.max_norm} (gradient clipping) is not supported for "
            "closure-driven optimizers; leave max_norm unset"
        )


@dataclass
class _ESGDFamilyConfig(OptimizerConfig):
    """The fields ESGD and ESGD-max share; `setup` passes every field but `_target` and `max_norm` to the class."""

    lr: float = 1.0
    """Learning rate (paper 2 starts at 1; the method's scheduler decays it, see each method)."""
    eps: float = 1e-4
    """Added to the preconditioner."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """Momentum coefficient, then the curvature one (ESGD: EMA of the estimates; ESGD-max: per-estimate decay of the
    running maximum)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    warmup: int = 50
    """Steps at the start that all estimate curvature."""
    update_every: int = 100
    """After warm-up, estimate curvature once every this many steps."""
    preconditioner_power: float = 0.25
    """0.25: paper 2's Eq. 6 (step m/sqrt(D^E)); 0.5: the released code (step m/D^E)."""

    def setup(self, params: Any) -> torch.optim.Optimizer:
        _require_no_clipping(self)
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("_target", "max_norm")}
        return self._target(params, **{**options, "betas": tuple(self.betas)})


@dataclass
class ESGDOptimizerConfig(_ESGDFamilyConfig):
    """ESGD (nf_precond.optim.esgd.ESGD): equilibrated SGD with momentum; lr 1 decayed to 0.01 (paper 2's NeRF)."""

    _target: Type = field(default_factory=lambda: ESGD)
    bias_correction: str = "updates"
    """"updates" or "steps" (see ESGD)."""


@dataclass
class ESGDMaxOptimizerConfig(_ESGDFamilyConfig):
    """ESGD-max (nf_precond.optim.esgd_max.ESGDMax): ESGD with a decayed running maximum of |Hv|; lr 1 decayed to 0.1
    (paper 2, Blender)."""

    _target: Type = field(default_factory=lambda: ESGDMax)


@dataclass
class LBFGSOptimizerConfig(OptimizerConfig):
    """L-BFGS with a strong-Wolfe line search (nf_precond.optim.lbfgs.LBFGS); one `step` = `max_iter` iterations."""

    _target: Type = field(default_factory=lambda: LBFGS)
    lr: float = 1.0
    """Initial trial step of each line search."""
    history_size: int = 100
    """Curvature pairs remembered."""
    max_iter: int = 1
    """L-BFGS iterations per training step (each may call the closure several times)."""
    line_search: Optional[str] = "strong_wolfe"
    """"strong_wolfe" or None (fixed step lr)."""
    tolerance_grad: float = 1e-7
    """Stop when the largest gradient entry is at most this."""
    tolerance_change: float = 1e-9
    """Stop when the step or the loss change is smaller than this."""

    def setup(self, params: Any) -> torch.optim.Optimizer:
        _require_no_clipping(self)
        return self._target(params, lr=self.lr, history_size=self.history_size, max_iter=self.max_iter,
                            line_search=self.line_search, tolerance_grad=self.tolerance_grad,
                            tolerance_change=self.tolerance_change)  # fmt: skip


__all__ = ["ESGDMaxOptimizerConfig", "ESGDOptimizerConfig", "LBFGSOptimizerConfig"]
