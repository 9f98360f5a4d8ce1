"""``CompiledField``: a field run through ``torch.compile`` on every step that can use it.

Compiled graphs have no double backward, which curvature optimizers (ESGD, ESGD-max, AdaHessian) need on their
curvature steps only (warm-up, then one step in ``update_every``). ``eager_when`` says when the next forward must
build the eager graph; all other forwards, with or without gradients, run the compiled one (except a
``BatchedMLP`` evaluated on a subset of its nets, whose shapes change from call to call). Both share the same
parameters, and the state dict is the field's own, so checkpoints do not depend on whether a run was compiled.

``compiled_field`` compiles one before training starts (the first calls trace and generate code, which takes
seconds): the time is reported as ``compile_s`` and kept out of training time, and a compile failure (no C compiler,
an unsupported op) falls back to the eager field with one warning line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

AUTO_MIN_POINT_STEPS = 2e7
"""Field evaluations in training (steps x points per step) below which compiling costs more than it saves on a
CPU: "auto" compile settings compile runs at least this long."""


class CompiledField(nn.Module):
    """``field`` compiled, except while ``eager_when()`` is true and gradients are being recorded."""

    def __init__(self, field: nn.Module, eager_when: Callable[[], bool] = lambda: False, **compile_options: Any):
        super().__init__()
        self.field = field
        self.eager_when = eager_when
        # Stored outside the module tree: it shares ``field``'s parameters and must not duplicate them.
        self.__dict__["compiled"] = torch.compile(field, **compile_options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # A subset of a BatchedMLP's nets (a line-search trial) changes shape from call to call: eager, not recompiled.
        if (torch.is_grad_enabled() and self.eager_when()) or kwargs.get("nets") is not None:
            return self.field(*args, **kwargs)
        return self.compiled(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.field.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.field.load_state_dict(state_dict, strict=strict, assign=assign)


def compiled_field(field: nn.Module, warm_up: Callable[[nn.Module], None], device: torch.device,
                   eager_when: Callable[[], bool] = lambda: False) -> nn.Module:  # fmt: skip
    """``field`` as a ``CompiledField``, compiled now by ``warm_up(compiled forward)`` (the training-shaped forward
    and backward, and the evaluation-shaped forwards, the run will make); ``field`` itself, with one warning line,
    when compiling fails. The compiled field carries ``compile_s``."""
    compiled = CompiledField(field, eager_when)
    started = time.perf_counter()
    try:
        # Inductor's C++ toolchain probe logs that a CPU-only machine has no CUDA runtime: noise, not a problem.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            warm_up(compiled.compiled)
    except Exception as error:  # noqa: BLE001 - any backend failure means: run eager
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"warning: torch.compile failed ({first_line[:200]}); training the eager field", file=sys.stderr)
        return field
    finally:
        field.zero_grad(set_to_none=True)
    compiled.compile_s = time.perf_counter() - started
    print(f"compiled the field in {compiled.compile_s:.1f} s (not counted as training time)")
    return compiled


__all__ = ["AUTO_MIN_POINT_STEPS", "CompiledField", "compiled_field"]
