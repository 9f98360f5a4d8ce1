"""INT schedules (paper 3, "Nonparametric Teaching of Implicit Neural Representations", Sec. 5 + Appendix C.3).

Two small families of pure functions of ``(step, total_steps)``:

- a *ratio* schedule says which fraction of the samples the teacher selects (``ratio(...) -> float`` in (0, 1]);
- an *interval* schedule says how many steps a selection is reused before the next one (``interval(...) -> int >= 1``).

The paper's stepped schedules split training into ``num_stages`` (10) equal stages; stage ``s`` covers
steps ``[s * (T - 1) / S, (s + 1) * (T - 1) / S)`` with ``T = total_steps``. For ``T`` divisible by ``S`` this is
exactly the paper's split (T = 5000 -> a new stage every 500 steps), and it reaches the last stage (and the cosine
schedules their end value) at the last step ``T - 1`` for any ``T``. Steps past the end keep the end value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

# Errors name the ``INTOptions`` field a value came from; front ends map ``INTOptions.X`` to their own flag.
RATIO_FLAG = "INTOptions.ratio"
RATIO_START_FLAG = "INTOptions.ratio_start"
RATIO_END_FLAG = "INTOptions.ratio_end"
STAGES_FLAG = "INTOptions.stages"
INTERVAL_FLAG = "INTOptions.interval"
MAX_INTERVAL_FLAG = "INTOptions.max_interval"


class RatioSchedule(Protocol):
    def ratio(self, step: int, total_steps: int) -> float:
        """Fraction of the samples the teacher selects at ``step``, in (0, 1]."""
        ...


class IntervalSchedule(Protocol):
    def interval(self, step: int, total_steps: int) -> int:
        """Steps between reselections in effect at ``step`` (1 = reselect every step)."""
        ...


def progress(step: int, total_steps: int) -> float:
    """Position of ``step`` in the run: 0 at the first step, 1 at the last (``total_steps - 1``) and after it."""
    _check_step(step, total_steps)
    if total_steps == 1:
        return 0.0
    return min(step, total_steps - 1) / (total_steps - 1)


def stage(step: int, total_steps: int, num_stages: int) -> int:
    """Index in ``[0, num_stages)`` of the equal-length stage ``step`` falls in (integer math: no float drift)."""
    _check_step(step, total_steps)
    if total_steps == 1:
        return 0
    return min(num_stages * min(step, total_steps - 1) // (total_steps - 1), num_stages - 1)


def _check_step(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def _require_ratio(flag: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{flag} must be in (0, 1] (a fraction of the samples), got {value!r}")


def _require_stages(num_stages: int) -> None:
    if num_stages < 2:
        raise ValueError(f"{STAGES_FLAG} must be >= 2 (a stepped schedule needs a first and a last stage), got {num_stages!r}")


# --- ratio schedules -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstantRatio:
    """The same fraction every step: Fig. 4(d)/Fig. 5 "INT 20%" (Appendix C.2)."""

    value: float = 0.2
    """Fraction of the samples selected at every step."""

    def __post_init__(self) -> None:
        _require_ratio(RATIO_START_FLAG, self.value)

    def ratio(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        return self.value


@dataclass(frozen=True)
class StepRatio:
    """Step-wise increasing fraction, the paper's default ("Incremental" ratio in Table 1/Fig. 6 right, Appendix C.3/C.4).

    Stage ``s`` of ``num_stages`` uses ``start + (end - start) * s / (num_stages - 1)``: 20 %, 28 %, ..., 92 %
    (+8 % every 500 of 5000 steps) with the defaults.
    """

    start: float = 0.2
    """Fraction in the first stage."""
    end: float = 0.92
    """Fraction in the last stage (>= start)."""
    num_stages: int = 10
    """Number of equal-length stages the run is split into."""

    def __post_init__(self) -> None:
        _require_ratio(RATIO_START_FLAG, self.start)
        _require_ratio(RATIO_END_FLAG, self.end)
        _require_stages(self.num_stages)
        if self.end < self.start:
            raise ValueError(
                f"{RATIO_END_FLAG} ({self.end}) must be >= {RATIO_START_FLAG} ({self.start}) for the step "
                f"schedule, which only increases; use {RATIO_FLAG} rcosine for a decreasing fraction"
            )

    def ratio(self, step: int, total_steps: int) -> float:
        fraction = stage(step, total_steps, self.num_stages) / (self.num_stages - 1)
        return self.start + (self.end - self.start) * fraction


def _cosine_between(start: float, end: float, step: int, total_steps: int) -> float:
    """Half a cosine from ``start`` (first step) to ``end`` (last step), like cosine learning-rate annealing."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress(step, total_steps)))


@dataclass(frozen=True)
class CosineRatio:
    """Fraction rising from 20 % to 100 % along half a cosine ("Cosine" in Table 1/Fig. 6 right, Appendix C.3)."""

    start: float = 0.2
    """Fraction at the first step."""
    end: float = 1.0
    """Fraction at the last step (>= start)."""

    def __post_init__(self) -> None:
        _require_ratio(RATIO_START_FLAG, self.start)
        _require_ratio(RATIO_END_FLAG, self.end)
        if self.end < self.start:
            raise ValueError(
                f"{RATIO_END_FLAG} ({self.end}) must be >= {RATIO_START_FLAG} ({self.start}) for the cosine "
                f"schedule, which only increases; use {RATIO_FLAG} rcosine for a decreasing fraction"
            )

    def ratio(self, step: int, total_steps: int) -> float:
        return _cosine_between(self.start, self.end, step, total_steps)


@dataclass(frozen=True)
class ReverseCosineRatio:
    """Fraction falling from 100 % to 20 % along half a cosine ("R-Cosine" in Table 1/Fig. 6 right, Appendix C.3)."""

    start: float = 1.0
    """Fraction at the first step."""
    end: float = 0.2
    """Fraction at the last step (<= start)."""

    def __post_init__(self) -> None:
        _require_ratio(RATIO_START_FLAG, self.start)
        _require_ratio(RATIO_END_FLAG, self.end)
        if self.end > self.start:
            raise ValueError(
                f"{RATIO_END_FLAG} ({self.end}) must be <= {RATIO_START_FLAG} ({self.start}) for the rcosine "
                f"schedule, which only decreases; use {RATIO_FLAG} cosine for an increasing fraction"
            )

    def ratio(self, step: int, total_steps: int) -> float:
        return _cosine_between(self.start, self.end, step, total_steps)


# --- interval schedules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseInterval:
    """Reselect every step ("Dense" in Table 1/Fig. 6 left, Appendix C.3)."""

    def interval(self, step: int, total_steps: int) -> int:
        _check_step(step, total_steps)
        return 1


def _stepped_interval(stage_index: int, num_stages: int, max_interval: int) -> int:
    """Stage ``s`` reselects every ``round(s * max_interval / (num_stages - 1))`` steps, never fewer than 1."""
    return max(1, round(stage_index * max_interval / (num_stages - 1)))


def _require_max_interval(max_interval: int) -> None:
    if max_interval < 1:
        raise ValueError(f"{MAX_INTERVAL_FLAG} must be >= 1 step, got {max_interval!r}")


@dataclass(frozen=True)
class IncrementalInterval:
    """Interval growing in stages, the paper's default ("Incremental" in Table 1/Fig. 6 left, Appendix C.3).

    With the defaults the 10 stages reselect every 1, 10, 20, ..., 90 steps ("at every 500 iterations, we increase
    the interval by 10, except for the first 500 iterations where we increase by 9 from 1 to 10").
    """

    max_interval: int = 90
    """Interval of the last stage (Appendix C.4's megapixel run uses 10)."""
    num_stages: int = 10
    """Number of equal-length stages the run is split into."""

    def __post_init__(self) -> None:
        _require_max_interval(self.max_interval)
        _require_stages(self.num_stages)

    def interval(self, step: int, total_steps: int) -> int:
        return _stepped_interval(stage(step, total_steps, self.num_stages), self.num_stages, self.max_interval)


@dataclass(frozen=True)
class DecrementalInterval:
    """Interval shrinking in stages: 90, 80, ..., 10, 1 ("Decremental" in Table 1/Fig. 6 left, Appendix C.3)."""

    max_interval: int = 90
    """Interval of the first stage."""
    num_stages: int = 10
    """Number of equal-length stages the run is split into."""

    def __post_init__(self) -> None:
        _require_max_interval(self.max_interval)
        _require_stages(self.num_stages)

    def interval(self, step: int, total_steps: int) -> int:
        reversed_stage = self.num_stages - 1 - stage(step, total_steps, self.num_stages)
        return _stepped_interval(reversed_stage, self.num_stages, self.max_interval)


# --- CLI names -------------------------------------------------------------------------------------------------

RATIO_SCHEDULES: dict[str, type] = {
    "constant": ConstantRatio,
    "step": StepRatio,
    "cosine": CosineRatio,
    "rcosine": ReverseCosineRatio,
}
INTERVAL_SCHEDULES: dict[str, type] = {
    "dense": DenseInterval,
    "incremental": IncrementalInterval,
    "decremental": DecrementalInterval,
}


def make_ratio_schedule(
    name: str, start: float | None = None, end: float | None = None, num_stages: int | None = None
) -> RatioSchedule:
    """The ratio schedule ``INTOptions.ratio``; arguments left as None keep the paper's defaults for that schedule.

    ``start`` is the constant schedule's value. ``num_stages`` (``INTOptions.stages``, shared with the interval
    schedule) applies only to ``step``; the others have no stages and ignore it.
    """
    if name not in RATIO_SCHEDULES:
        raise ValueError(f"{RATIO_FLAG} must be one of {', '.join(RATIO_SCHEDULES)}; got {name!r}")
    if name == "constant":
        _reject_unused(name, RATIO_FLAG, {RATIO_END_FLAG: end})
        return ConstantRatio() if start is None else ConstantRatio(value=start)
    given: dict[str, float | int | None] = {"start": start, "end": end}
    if name == "step":
        given["num_stages"] = num_stages
    return RATIO_SCHEDULES[name](**{key: value for key, value in given.items() if value is not None})


def make_interval_schedule(
    name: str, max_interval: int | None = None, num_stages: int | None = None
) -> IntervalSchedule:
    """The interval schedule ``INTOptions.interval``; arguments left as None keep the paper's defaults.

    ``num_stages`` (``INTOptions.stages``, shared with the ratio schedule) is ignored by ``dense``, which has no stages.
    """
    if name not in INTERVAL_SCHEDULES:
        raise ValueError(f"{INTERVAL_FLAG} must be one of {', '.join(INTERVAL_SCHEDULES)}; got {name!r}")
    if name == "dense":
        _reject_unused(name, INTERVAL_FLAG, {MAX_INTERVAL_FLAG: max_interval})
        return DenseInterval()
    given = {"max_interval": max_interval, "num_stages": num_stages}
    return INTERVAL_SCHEDULES[name](**{key: value for key, value in given.items() if value is not None})


def _reject_unused(name: str, flag: str, unused: dict[str, object]) -> None:
    """A flag the chosen schedule ignores is a mistake worth reporting, not a silent no-op."""
    for unused_flag, value in unused.items():
        if value is not None:
            raise ValueError(f"{unused_flag} does not apply to {flag} {name}; drop it or pick a schedule that uses it")
