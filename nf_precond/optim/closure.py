"""The one way to build a closure for any optimizer in this project (see DESIGN.md, the optimizer contract)."""

from __future__ import annotations

import warnings
from typing import Callable

import torch


def needs_graph(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer's next ``step`` estimates curvature and so needs ``backward(create_graph=True)``."""
    return bool(getattr(optimizer, "needs_graph", False))


def make_closure(optimizer: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Wrap ``compute_loss`` into the closure ``optimizer.step`` expects.

    The closure zeroes the gradients, evaluates the loss, and back-propagates with ``create_graph`` exactly when the
    optimizer asks for it, so no caller can forget the graph on curvature steps. ``compute_loss`` may return a scalar
    or, for batched optimizers over N independent networks, a vector of N losses (their sum is differentiated: the
    networks share no parameters, so each gets its own gradient). The closure returns the loss, detached.
    """

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = compute_loss()
            with warnings.catch_warnings():
                # torch warns that create_graph=True ties each parameter to its .grad in a cycle; our curvature
                # optimizers detach the gradients after their HVP and zero_grad(set_to_none) drops them.
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                loss.sum().backward(create_graph=needs_graph(optimizer))
        return loss.detach()

    return closure
