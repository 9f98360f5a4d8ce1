"""The one way to build a closure for any optimizer in this project (see DESIGN.md, the optimizer contract)."""

from __future__ import annotations

import warnings
from typing import Callable

import torch


def needs_graph(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer's next ``step`` estimates curvature and so needs ``backward(create_graph=True)``."""
    return bool(getattr(optimizer, "needs_graph", False))


def wants_residuals(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer's ``step`` wants the residual vector ``r`` (loss = mean(r²)) instead of a loss with its
    gradient: Levenberg–Marquardt builds JᵀJ from the residuals' Jacobian."""
    return bool(getattr(optimizer, "wants_residuals", False))


def evaluates_nets(closure: Callable[..., torch.Tensor]) -> bool:
    """True when ``closure(nets)`` evaluates only the nets ``nets`` of a batched model (see ``make_closure``)."""
    return bool(getattr(closure, "evaluates_nets", False))


def make_closure(
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[], torch.Tensor],
    compute_residuals: Callable[[], torch.Tensor] | None = None,
    compute_net_losses: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[..., torch.Tensor]:
    """Wrap ``compute_loss`` into the closure ``optimizer.step`` expects.

    The closure zeroes the gradients, evaluates the loss, and back-propagates with ``create_graph`` exactly when the
    optimizer asks for it, so no caller can forget the graph on curvature steps. ``compute_loss`` may return a scalar
    or, for batched optimizers over N independent networks, a vector of N losses (their sum is differentiated: the
    networks share no parameters, so each gets its own gradient). The closure returns the loss, detached.

    An optimizer that declares ``wants_residuals = True`` gets a closure that returns ``compute_residuals()`` instead:
    the residual tensor (prediction - target, any shape, loss = mean(r²)), with its graph when called with grad
    enabled and no backward pass; the optimizer decides when it needs the graph. Such an optimizer fits
    mean-squared-error signals only, so ``compute_residuals`` is then required.

    ``compute_net_losses(nets)``, for a batched model, returns the losses of the nets ``nets`` (a long tensor of net
    indices) evaluated alone. The closure then also takes ``nets`` and back-propagates through those nets only (the
    other nets' gradients are zero) and says so (``evaluates_nets``): a batched line search evaluates just the nets
    still searching instead of every net at every trial.
    """
    if wants_residuals(optimizer):
        if compute_residuals is None:
            raise ValueError(
                "lm fits mean-squared-error signals only; make_closure needs compute_residuals, a callable returning "
                "the residual tensor prediction - target (the loss is its mean square)"
            )
        residuals = compute_residuals

        def residual_closure() -> torch.Tensor:
            return residuals()

        return residual_closure

    def closure(nets: torch.Tensor | None = None) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = compute_loss() if nets is None else compute_net_losses(nets)
            with warnings.catch_warnings():
                # torch warns that create_graph=True ties each parameter to its .grad in a cycle; our curvature
                # optimizers detach the gradients after their HVP and zero_grad(set_to_none) drops them.
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                loss.sum().backward(create_graph=needs_graph(optimizer))
        return loss.detach()

    closure.evaluates_nets = compute_net_losses is not None  # type: ignore[attr-defined]
    return closure
