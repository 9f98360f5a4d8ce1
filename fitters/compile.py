"""``--compile auto|on|off``: when the field runs through ``torch.compile``, and compiling it before the clock starts.

Compiling takes seconds (the first call traces and generates code), so it is done here, on one training-shaped
batch and one evaluation-shaped chunk, before training starts: the time is reported as ``compile_s`` and kept out
of the training time. ``auto`` compiles when the run is long enough to repay that (``AUTO_MIN_POINT_STEPS``) and
the optimizer allows it (``OptimizerSpec.compiles``). A compile failure (no C compiler, an unsupported op) falls
back to the eager field with one warning line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import torch

from fitters.config import FitConfig
from fitters.signals import Signal
from nf_precond.nn import CompiledField
from nf_precond.optim import OPTIMIZERS, needs_graph

AUTO_MIN_POINT_STEPS = 2e7
"""auto compiles runs that evaluate the field on at least this many points in training (steps x batch), or, under
--time-budget, that train for at least ``AUTO_MIN_BUDGET_S``: below that, compiling costs more than it saves."""
AUTO_MIN_BUDGET_S = 60.0


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


def compile_field(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: FitConfig,
                  signal: Signal) -> torch.nn.Module:  # fmt: skip
    """``model`` as a ``CompiledField`` (eager on curvature steps), compiled now; ``model`` itself when not
    compiling or when compiling fails. The compiled field carries ``compile_s``."""
    if not wants_compile(config, signal):
        return model
    batch = min(config.batch_size or signal.num_samples, signal.num_samples)
    chunk = min(config.eval_chunk, signal.num_samples)

    def warm_up(field: torch.nn.Module) -> None:
        coords, targets = signal.batch(torch.arange(batch, device=signal.device))
        signal.loss(field(coords), targets).sum().backward()
        with torch.no_grad():
            field(signal.coords_at(torch.arange(chunk, device=signal.device)))

    return compiled(model, optimizer, warm_up, signal.device)


def compiled(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             warm_up: Callable[[torch.nn.Module], None], device: torch.device) -> torch.nn.Module:  # fmt: skip
    """``model`` as a ``CompiledField``, compiled now by ``warm_up(compiled forward)`` (a training-shaped forward and
    backward, an evaluation-shaped forward); ``model`` itself, with one warning line, when compiling fails."""
    field = CompiledField(model, eager_when=lambda: needs_graph(optimizer))
    started = time.perf_counter()
    try:
        # Inductor's C++ toolchain probe logs that a CPU-only machine has no CUDA runtime: noise, not a problem.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            warm_up(field.compiled)
    except Exception as error:  # noqa: BLE001 - any backend failure means: run eager
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"warning: torch.compile failed ({first_line[:200]}); training the eager field", file=sys.stderr)
        return model
    finally:
        model.zero_grad(set_to_none=True)
    field.compile_s = time.perf_counter() - started
    print(f"compiled the field in {field.compile_s:.1f} s (not counted as training time)")
    return field
