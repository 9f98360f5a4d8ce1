"""``--compile auto|on|off``: when the field runs through ``torch.compile``, compiled before the clock starts.

The field is compiled (``nf_precond.nn.compiled_field``) on one training-shaped batch and one evaluation-shaped
chunk before training starts, so the compile time is ``compile_s``, not training time. ``auto`` compiles when the
run is long enough to repay it (``AUTO_MIN_POINT_STEPS``) and the optimizer allows it (``OptimizerSpec.compiles``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from fitters.config import FitConfig
from fitters.signals import Signal
from nf_precond.nn import AUTO_MIN_POINT_STEPS, CompiledField, compiled_field
from nf_precond.optim import OPTIMIZERS, needs_graph

AUTO_MIN_BUDGET_S = 60.0
"""Under --time-budget, auto compiles runs that train at least this long (the budget bounds the run, whatever the
step count); otherwise runs of at least ``AUTO_MIN_POINT_STEPS`` points x steps."""


def wants_compile(config: FitConfig, signal: Signal) -> bool:
    """Whether a resolved config's field should be compiled (``on`` for an optimizer that cannot be compiled is
    refused by the caller's validation)."""
    if config.compile == "off" or not OPTIMIZERS[config.optim].compiles:
        return False
    if config.compile == "on":
        return True
    if config.time_budget is not None:  # the budget bounds the run, whatever the step count
        return config.time_budget >= AUTO_MIN_BUDGET_S
    return config.steps * (config.batch_size or signal.num_samples) >= AUTO_MIN_POINT_STEPS


def compile_field(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: FitConfig, signal: Signal,
                  also: Sequence[Signal] = ()) -> torch.nn.Module:  # fmt: skip
    """``model`` as a ``CompiledField`` (eager on curvature steps), compiled now for ``signal`` and the signals
    ``also`` trained on (--coarse copies), one static graph per size; ``model`` itself when not compiling or when
    compiling fails. The compiled field carries ``compile_s``."""
    if not wants_compile(config, signal):
        return model

    def warm_up(field: torch.nn.Module) -> None:
        # Without this, a second size would recompile the field for dynamic shapes, slower for every size.
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            for each in (signal, *also):
                batch = min(config.batch_size or each.num_samples, each.num_samples)
                coords, targets = each.batch(torch.arange(batch, device=each.device))
                each.loss(field(coords), targets).sum().backward()
                with torch.no_grad():
                    field(each.coords_at(torch.arange(min(config.eval_chunk, each.num_samples), device=each.device)))

    return compiled_field(model, warm_up, signal.device, eager_when=functools.partial(needs_graph, optimizer))


def follow_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Run a compiled ``model`` eager on ``optimizer``'s curvature steps from now on (a phase that trains with an
    optimizer of its own, e.g. --coarse); a plain model is left as it is."""
    if isinstance(model, CompiledField):
        model.eager_when = functools.partial(needs_graph, optimizer)

