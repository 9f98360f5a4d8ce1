"""``CompiledField``: a field run through ``torch.compile`` on every step that can use it.

Compiled graphs have no double backward, which curvature optimizers (ESGD, ESGD-max, AdaHessian) need on their
curvature steps only (warm-up, then one step in ``update_every``). ``eager_when`` says when the next forward must
build the eager graph; all other forwards, with or without gradients, run the compiled one (except a
``BatchedMLP`` evaluated on a subset of its nets, whose shapes change from call to call). Both share the same
parameters, and the state dict is the field's own, so checkpoints do not depend on whether a run was compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


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


__all__ = ["CompiledField"]
