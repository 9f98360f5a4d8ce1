"""Argument checks shared by the core: each raises one ``ValueError`` that names the argument, its range and the
value given, so a bad hyperparameter fails at construction with a message the user can act on."""

from __future__ import annotations

import math


def require_positive(
    name: str, value: float, *, allow_zero: bool = False, finite: bool = False, hint: str | None = None
) -> float:
    """A number > 0 (>= 0 with ``allow_zero``; inf allowed unless ``finite``, NaN never); returns it as a float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (math.isfinite(value) or not finite)
    if not ok:
        bound = (">= 0" if allow_zero else "> 0") if not finite else "a finite number " + (">= 0" if allow_zero else "> 0")
        raise ValueError(f"{name} must be {bound}, got {value!r}" + (f"; {hint}" if hint else ""))
    return float(value)


def require_in_unit_interval(name: str, value: float) -> None:
    """A number in [0, 1) (decay rates such as Adam's betas)."""
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def require_fraction(name: str, value: float, hint: str = "") -> None:
    """A number in (0, 1] (a share of the samples)."""
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1]{hint}, got {value!r}")


def require_power(name: str, value: float, hint: str) -> None:
    """An exponent in (0, 1] (preconditioner powers)."""
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r} ({hint})")


def require_int_at_least(name: str, value: int, minimum: int, hint: str = "") -> None:
    """An integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")
