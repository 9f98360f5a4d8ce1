"""Implicit Neural Teaching (paper 3, Algorithm 1): train on the samples the field currently gets most wrong.

On a reselection step the teacher ranks every sample by its error ``|f(x) - f*(x)|`` (summed over channels) and
hands the learner the ``k = ceil(ratio * N)`` largest; between reselections (the interval schedule) the same subset is
reused, because recomputing errors needs a forward pass over the whole signal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from nf_precond.sampling.base import ErrorFn, Sampler
from nf_precond.sampling.schedules import (
    IntervalSchedule,
    RatioSchedule,
    make_interval_schedule,
    make_ratio_schedule,
)


@torch.no_grad()
def chunked_errors(
    predict: Callable[[torch.Tensor], torch.Tensor], coords: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Per-sample error ``|predict(x) - target|`` summed over channels, [N], built ``chunk`` samples at a time.

    ``predict`` maps coordinates [P, in_features] to predictions shaped like the targets [P, out_features].

    Runs under ``no_grad`` into one preallocated output, so peak memory is one chunk's activations and no graph
    survives: the result has ``requires_grad=False`` and no ``grad_fn`` even when ``predict`` is a trainable field.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 samples, got {chunk}")
    if coords.shape[0] != targets.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} samples but targets has {targets.shape[0]}; pass matching rows")
    num_samples = coords.shape[0]
    errors = torch.empty(num_samples, dtype=targets.dtype, device=targets.device)
    for begin in range(0, num_samples, chunk):
        end = min(begin + chunk, num_samples)
        target = targets[begin:end]
        prediction = predict(coords[begin:end])
        if prediction.shape != target.shape:
            raise ValueError(f"predict returned shape {tuple(prediction.shape)} for targets of shape {tuple(target.shape)}")
        errors[begin:end] = (prediction - target).abs().reshape(end - begin, -1).sum(dim=1)
    return errors


def top_k_indices(errors: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest errors, in ascending index order (cache-friendly gathers, cheap comparison).

    Among equal errors at the cut-off, which ones are kept is up to ``torch.topk``.
    """
    return torch.topk(errors, k, sorted=False).indices.sort().values


def selection_size(ratio: float, num_samples: int) -> int:
    """``k = ceil(ratio * N)`` in [1, N]; the small tolerance keeps e.g. 0.3 * 10 at 3, not 4, despite float error."""
    return min(num_samples, max(1, math.ceil(ratio * num_samples - 1e-6)))


@dataclass
class INTOptions:
    """INT settings (``nf-fit`` exposes each as ``--int-<field>``); None keeps the paper's default for the chosen schedule.

    The defaults are the paper's best strategy ("step-incremental", Table 1 last row, used for Table 2).
    """

    ratio: str = "step"
    """constant | step | cosine | rcosine."""
    interval: str = "incremental"
    """dense | incremental | decremental."""
    ratio_start: float | None = None
    """fraction selected at the first step (the constant schedule's fraction)."""
    ratio_end: float | None = None
    """fraction selected at the last step (step, cosine, rcosine)."""
    stages: int | None = None
    """equal-length stages of the stepped schedules (paper: 10)."""
    max_interval: int | None = None
    """the largest reselection interval, in steps (paper: 90; 10 for megapixel images)."""


class INTSampler(Sampler):
    """Top-k error selection with a ratio schedule and an interval schedule (paper 3, Algorithm 1 + Sec. 5)."""

    def __init__(
        self,
        num_samples: int,
        total_steps: int,
        ratio_schedule: RatioSchedule,
        interval_schedule: IntervalSchedule,
        device: torch.device | str = "cpu",
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.num_samples = num_samples
        self.total_steps = total_steps
        self.ratio_schedule = ratio_schedule
        self.interval_schedule = interval_schedule
        self.device = torch.device(device)
        self._indices: torch.Tensor | None = None  # None = every sample
        self._selected_at: int | None = None  # step of the last reselection; None before the first
        self._reselected = False
        self._changed = False
        self._select_s = 0.0
        self._reselections = 0  # running totals over the run (kept across a resume)
        self._select_total_s = 0.0

    @classmethod
    def from_options(
        cls, options: INTOptions, num_samples: int, total_steps: int, device: torch.device | str = "cpu"
    ) -> "INTSampler":
        ratio = make_ratio_schedule(options.ratio, options.ratio_start, options.ratio_end, options.stages)
        interval = make_interval_schedule(options.interval, options.max_interval, options.stages)
        return cls(num_samples, total_steps, ratio, interval, device)

    def next_indices(self, step: int, errors: ErrorFn) -> torch.Tensor | None:
        """The current subset; on reselection steps first re-rank all samples with ``errors()``."""
        due = self._selected_at is None or step - self._selected_at >= self.interval_schedule.interval(
            step, self.total_steps
        )
        self._reselected = due
        self._changed = False
        self._select_s = 0.0
        if due:
            self._reselect(step, errors)
        return self._indices

    def _reselect(self, step: int, errors: ErrorFn) -> None:
        started = time.perf_counter()
        previous = self._indices
        k = selection_size(self.ratio_schedule.ratio(step, self.total_steps), self.num_samples)
        if k == self.num_samples:
            self._indices = None  # everything is selected: no need to rank, and the loop can skip the gather
        else:
            with torch.no_grad():  # even an errors_fn that forgets no_grad must not build a graph here
                sample_errors = errors()
            if sample_errors.shape != (self.num_samples,):
                raise ValueError(
                    f"errors_fn returned shape {tuple(sample_errors.shape)}; expected one error per sample "
                    f"({self.num_samples},)"
                )
            self._indices = top_k_indices(sample_errors.to(self.device), k)
        self._changed = not _same_selection(previous, self._indices, first=self._selected_at is None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # time the kernels, not just their launch
        self._selected_at = step
        self._select_s = time.perf_counter() - started
        self._reselections += 1
        self._select_total_s += self._select_s

    def stats(self) -> dict[str, float | int | bool]:
        """``int_ratio``: fraction of samples in the subset in use; ``int_reselected``: this step re-ranked;
        ``int_select_s``: seconds this step spent selecting, the error pass included (0 when reusing);
        ``int_reselections`` and ``int_select_total_s``: reselections and their seconds so far in the run."""
        in_use = self.num_samples if self._indices is None else self._indices.numel()
        return {
            "int_ratio": in_use / self.num_samples,
            "int_reselected": self._reselected,
            "int_select_s": self._select_s,
            "int_reselections": self._reselections,
            "int_select_total_s": self._select_total_s,
        }

    @property
    def selection_changed(self) -> bool:
        return self._changed

    def state_dict(self) -> dict:
        """The schedule position and the current subset as one bit per sample (the subset was ranked by an earlier
        field, so it cannot be redrawn; bits are 64x smaller than the index list)."""
        return {
            "num_samples": self.num_samples,
            "selection": None if self._indices is None else _pack(self._indices, self.num_samples),
            "selected_at": self._selected_at,
            "reselections": self._reselections,
            "select_total_s": self._select_total_s,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"the checkpoint's INT state covers {state['num_samples']} samples but this signal has "
                f"{self.num_samples}; resume with the same signal and signal options"
            )
        selection = state["selection"]
        self._indices = None if selection is None else _unpack(selection, self.num_samples).to(self.device)
        self._selected_at = state["selected_at"]
        self._reselections, self._select_total_s = state["reselections"], state["select_total_s"]
        self._reselected = self._changed = False
        self._select_s = 0.0


def _pack(indices: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Sorted indices as a bit mask over ``num_samples``, packed 8 samples per byte."""
    mask = np.zeros(num_samples, dtype=bool)
    mask[indices.cpu().numpy()] = True
    return torch.from_numpy(np.packbits(mask))


def _unpack(packed: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The sorted indices of a mask written by ``_pack``."""
    mask = np.unpackbits(packed.numpy(), count=num_samples).astype(bool)
    return torch.from_numpy(np.flatnonzero(mask))


def _same_selection(previous: torch.Tensor | None, current: torch.Tensor | None, first: bool) -> bool:
    """Whether two sorted index sets are equal (None = all samples); the very first selection is always new."""
    if first:
        return False
    if previous is None or current is None:
        return previous is None and current is None
    return previous.shape == current.shape and torch.equal(previous, current)
