"""Optimizers for neural fields, all ``torch.optim.Optimizer`` subclasses driven by ``step(closure)``.

``build_optimizer(name, model)`` is how fitters, benchmarks and the nerfstudio plugin create one by its CLI name;
each name maps to a class and the papers' default hyperparameters (paper 2's supplementary for the stochastic
optimizers, paper 1 for L-BFGS).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from nf_precond.optim._common import NonFiniteLossError
from nf_precond.optim.closure import make_closure, needs_graph


@dataclass(frozen=True)
class OptimizerSpec:
    """Where an optimizer class lives and the defaults a user gets from ``--optim NAME``."""

    module: str
    cls: str
    defaults: dict[str, Any] = field(default_factory=dict)
    takes_model: bool = False
    """K-FAC hooks the model's Linear layers, so it is built from the model rather than its parameters."""
    full_batch: bool = False
    """Deterministic line-search methods (L-BFGS) want the full batch."""

    def load(self) -> type[torch.optim.Optimizer]:
        return getattr(importlib.import_module(self.module), self.cls)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec("torch.optim", "Adam", {"lr": 1e-4}),
    "sgd": OptimizerSpec("torch.optim", "SGD", {"lr": 1e-2, "momentum": 0.9}),
    "esgd": OptimizerSpec("nf_precond.optim.esgd", "ESGD", {"lr": 0.15}),
    "esgd-max": OptimizerSpec("nf_precond.optim.esgd_max", "ESGDMax", {"lr": 0.15}),
    "adahessian-j": OptimizerSpec("nf_precond.optim.adahessian", "AdaHessian", {"lr": 0.15, "variant": "jacobi"}),
    "adahessian-e": OptimizerSpec(
        "nf_precond.optim.adahessian", "AdaHessian", {"lr": 0.15, "variant": "equilibration"}
    ),
    "shampoo": OptimizerSpec("nf_precond.optim.shampoo", "Shampoo", {"lr": 0.1}),
    "kfac": OptimizerSpec("nf_precond.optim.kfac", "KFAC", {"lr": 0.1, "damping": 0.01}, takes_model=True),
    "lbfgs": OptimizerSpec("nf_precond.optim.lbfgs", "LBFGS", {"lr": 1.0}, full_batch=True),
}


def build_optimizer(name: str, model: torch.nn.Module, **overrides: Any) -> torch.optim.Optimizer:
    """Create the optimizer registered as ``name`` for ``model``; ``overrides`` replace the defaults (None = keep)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    kwargs = {**spec.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    target = model if spec.takes_model else model.parameters()
    return spec.load()(target, **kwargs)


__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "make_closure", "needs_graph", "NonFiniteLossError"]
