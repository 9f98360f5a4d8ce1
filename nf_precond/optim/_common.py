"""Checks shared by every optimizer in this package."""

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


def require_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """A clear ``ValueError`` for a hyperparameter outside its range."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def require_in_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
