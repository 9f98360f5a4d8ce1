"""The non-finite loss check every optimizer in this package runs before it touches the parameters."""

from __future__ import annotations

import torch


class NonFiniteLossError(FloatingPointError):
    """Raised by ``step`` when the loss is NaN/inf: the parameters are left untouched."""


def check_finite_loss(loss: torch.Tensor, optimizer_name: str) -> None:
    """Refuse a NaN/inf loss before it reaches the parameters (one host sync per step)."""
    if not bool(torch.isfinite(loss).all()):
        raise NonFiniteLossError(
            f"{optimizer_name}: loss is {loss.detach().flatten()[:4].tolist()} (not finite); parameters were not "
            "updated. Lower the learning rate or check the data for NaN/inf."
        )
