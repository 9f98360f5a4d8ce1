"""Optimizers for neural fields, all ``torch.optim.Optimizer`` subclasses driven by ``step(closure)``.

``OPTIMIZERS`` is the one registry of optimizer names: ``build_optimizer(name, model, **overrides)`` is how fitters,
Kilo tiles, benchmarks and the nerfstudio plugin create one. Each name maps to a class and the papers' default
hyperparameters (paper 2's supplementary for the stochastic optimizers, paper 1 for L-BFGS).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from nf_precond.optim._common import NonFiniteLossError
from nf_precond.optim.closure import evaluates_nets, make_closure, needs_graph


BuildFrom = Literal["parameters", "model", "nets"]


@dataclass(frozen=True)
class OptimizerSpec:
    """Where an optimizer class lives and the defaults a user gets from its registered name."""

    module: str
    cls: str
    defaults: dict[str, Any] = field(default_factory=dict)
    builds_from: BuildFrom = "parameters"
    """What the class is constructed from: the parameters; the model (K-FAC hooks its Linear layers); or, for an
    optimizer over the N stacked nets of a ``BatchedMLP``, the parameters and ``num_nets``."""
    full_batch: bool = False
    """Deterministic line-search methods (L-BFGS) want the full batch."""
    batched: OptimizerSpec | None = None
    """The optimizer that trains the N nets of a ``BatchedMLP`` at once, each exactly as if alone (Kilo tiles);
    None = this one would couple the nets."""
    compiles: bool = True
    """Whether the field may run compiled (``CompiledField``; curvature steps run eager by themselves). False for
    optimizers that hook the field's modules (K-FAC) or differentiate it functionally."""

    def load(self) -> type[torch.optim.Optimizer]:
        return getattr(importlib.import_module(self.module), self.cls)

    @property
    def lr(self) -> float | None:
        return self.defaults.get("lr")


def _per_element(spec: OptimizerSpec) -> OptimizerSpec:
    """Element-wise optimizers (Adam, SGD) over stacked weights are exactly one optimizer per net."""
    return replace(spec, batched=spec)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adam": _per_element(OptimizerSpec("torch.optim", "Adam", {"lr": 1e-4})),
    "sgd": _per_element(OptimizerSpec("torch.optim", "SGD", {"lr": 1e-2, "momentum": 0.9})),
    "esgd": OptimizerSpec("nf_precond.optim.esgd", "ESGD", {"lr": 0.15}),
    "esgd-max": OptimizerSpec("nf_precond.optim.esgd_max", "ESGDMax", {"lr": 0.15}),
    "adahessian-j": OptimizerSpec("nf_precond.optim.adahessian", "AdaHessian", {"lr": 0.15, "variant": "jacobi"}),
    "adahessian-e": OptimizerSpec(
        "nf_precond.optim.adahessian", "AdaHessian", {"lr": 0.15, "variant": "equilibration"}
    ),
    "shampoo": OptimizerSpec("nf_precond.optim.shampoo", "Shampoo", {"lr": 0.1}),
    "kfac": OptimizerSpec(
        "nf_precond.optim.kfac", "KFAC", {"lr": 0.1, "damping": 0.01}, builds_from="model", compiles=False
    ),
    "lbfgs": OptimizerSpec(
        "nf_precond.optim.lbfgs",
        "LBFGS",
        {"lr": 1.0},
        full_batch=True,
        # 20 pairs per net, not 100: 2 * 20 + 4 copies of a 4x64 tile's 12.9k weights is 2.3 MB per tile.
        batched=OptimizerSpec(
            "nf_precond.optim.batched_lbfgs", "BatchedLBFGS", {"lr": 1.0, "history_size": 20}, builds_from="nets",
            full_batch=True,
        ),
    ),
    # L-BFGS started from ESGD's equilibration diagonal: ahead of plain L-BFGS on Gaussian fields, not on sine ones.
    "lbfgs-eq": OptimizerSpec(
        "nf_precond.optim.equilibrated_lbfgs", "EquilibratedLBFGS", {"lr": 1.0, "samples": 10, "damping": 1e-2},
        full_batch=True,
    ),
    # Peers a neural-field researcher would try. Muon splits the network's Linear layers, so it is built from the
    # model; soap and psgd are heavyball's (the peers extra); lm needs residuals (make_closure's compute_residuals).
    "muon": OptimizerSpec(
        "nf_precond.optim.muon", "MuonWithAdamW", {"lr": 1e-3, "adamw_lr_ratio": 1.0}, builds_from="model"
    ),
    "soap": OptimizerSpec("nf_precond.optim.peers", "SOAP", {"lr": 1e-3}),
    "psgd": OptimizerSpec("nf_precond.optim.peers", "PSGDKron", {"lr": 3e-4}),
    # max_eval: torch's default, 1.25 * max_iter, would give a one-iteration step's line search a single trial; when
    # that trial fails it returns t = 0 and every later step repeats it. 25 is torch's budget for its default 20.
    "torch-lbfgs": OptimizerSpec(
        "torch.optim",
        "LBFGS",
        {"lr": 1.0, "history_size": 100, "max_iter": 1, "max_eval": 25, "line_search_fn": "strong_wolfe"},
        full_batch=True,
    ),
    "lm": OptimizerSpec(
        "nf_precond.optim.lm", "LevenbergMarquardt", {"lr": 1.0, "damping": 1e-3}, full_batch=True, compiles=False
    ),
}

OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]
"""The registered names as a type, so command lines offer exactly the keys of ``OPTIMIZERS``."""


def optimizer_spec(name: str, *, batched: bool = False) -> OptimizerSpec:
    """The registered spec of ``name`` (its many-nets variant with ``batched``); one clear error otherwise."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    if not batched:
        return spec
    if spec.batched is None:
        usable = ", ".join(key for key, value in OPTIMIZERS.items() if value.batched is not None)
        raise ValueError(f"optimizer {name!r} would couple independent nets; for many nets at once use one of {usable}")
    return spec.batched


def build_optimizer(
    name: str, model: torch.nn.Module | Iterable[torch.Tensor], *, batched: bool = False, **overrides: Any
) -> torch.optim.Optimizer:
    """Create the optimizer registered as ``name``; ``overrides`` replace the defaults (None = keep).

    ``model`` is a module, or (for optimizers built from parameters) the parameters themselves, as nerfstudio hands
    them over. ``batched=True`` builds the variant that trains every net of a ``BatchedMLP`` as if alone.
    """
    spec = optimizer_spec(name, batched=batched)
    kwargs = {**spec.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    if spec.builds_from == "parameters":
        params = model.parameters() if isinstance(model, torch.nn.Module) else model
        return spec.load()(params, **kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"optimizer {name!r} is built from the model, not its parameters; pass the module")
    if spec.builds_from == "model":
        return spec.load()(model, **kwargs)
    return spec.load()(model.parameters(), num_nets=model.num_nets, **kwargs)


__all__ = [
    "OPTIMIZERS",
    "NonFiniteLossError",
    "OptimizerName",
    "OptimizerSpec",
    "build_optimizer",
    "evaluates_nets",
    "make_closure",
    "needs_graph",
    "optimizer_spec",
]
