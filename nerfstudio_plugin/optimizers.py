"""`RegistryOptimizerConfig`: any optimizer of `nf_precond.optim.OPTIMIZERS`, by name, in nerfstudio's `Optimizers`.

The registry is the one place an optimizer's defaults live; a method names the optimizer and overrides only what it
changes (e.g. ESGD's lr for NeRF), so a default that moves in the core moves here too. `max_norm` (gradient
clipping) is refused: clipping between backward and `step` has no place in a closure-driven step (see `trainer.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Type

import torch
import tyro
from typing_extensions import Annotated

from nerfstudio.engine.optimizers import OptimizerConfig

from nf_precond.optim import OptimizerName, build_optimizer


@dataclass
class RegistryOptimizerConfig(OptimizerConfig):
    """The optimizer registered as `name`, with the registry's defaults except `lr`, `eps` and `overrides`."""

    _target: Type = field(default_factory=lambda: torch.optim.Optimizer)
    """Unused: `setup` builds the optimizer through the registry."""
    name: OptimizerName = "esgd"
    """Registered optimizer name (nf_precond.optim.OPTIMIZERS)."""
    lr: float = 1.0
    """Initial learning rate (nerfstudio's scheduler decays it from here)."""
    eps: Optional[float] = None
    """The optimizer's eps; None = the registry's default for `name`."""
    overrides: Annotated[Dict[str, Any], tyro.conf.Suppress] = field(default_factory=dict)
    """Other keyword arguments of the optimizer class that the method changes from the registry's defaults."""

    def setup(self, params: Any) -> torch.optim.Optimizer:
        if self.max_norm is not None:
            raise ValueError(
                f"optimizer {self.name}: max_norm={self.max_norm} (gradient clipping) is not supported for "
                "closure-driven training; leave max_norm unset"
            )
        return build_optimizer(self.name, params, lr=self.lr, eps=self.eps, **self.overrides)


__all__ = ["RegistryOptimizerConfig"]
