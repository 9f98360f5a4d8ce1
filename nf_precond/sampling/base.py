"""Which training samples each step sees: the full batch, random mini-batches, or INT top-k (``nf_precond.sampling.int_teaching``)."""

from __future__ import annotations

import abc
from typing import Callable

import torch

ErrorFn = Callable[[], torch.Tensor]
"""Returns the current per-sample error [num_samples] (no graph); samplers call it only when they need it."""


class Sampler(abc.ABC):
    """Picks the indices of the samples step ``step`` trains on; ``None`` means all of them."""

    @abc.abstractmethod
    def next_indices(self, step: int, errors: ErrorFn) -> torch.Tensor | None:
        """Indices into the signal's samples for this step (on the signal's device), or None for the full batch."""

    def stats(self) -> dict[str, float | int | bool]:
        """What the fit loop logs to metrics.jsonl about the last selection (empty for the simple samplers)."""
        return {}

    @property
    def selection_changed(self) -> bool:
        """True when the last ``next_indices`` picked a different set than the step before (L-BFGS resets on it)."""
        return False


class FullBatch(Sampler):
    """Every sample, every step: what deterministic line-search methods (L-BFGS) need."""

    def next_indices(self, step: int, errors: ErrorFn) -> None:
        return None


class RandomBatches(Sampler):
    """Mini-batches of ``batch_size`` drawn without replacement, reshuffled every epoch (paper 2: 512).

    The state is O(1): the generator state the current epoch's permutation was drawn from and the position in it;
    ``load_state_dict`` redraws the same permutation, so a resumed run sees the same batches without the checkpoint
    holding one index per sample.
    """

    def __init__(self, num_samples: int, batch_size: int, device: torch.device | str = "cpu", seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = min(batch_size, num_samples)
        self.device = torch.device(device)
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._epoch_state: torch.Tensor | None = None  # generator state that drew ``_order``; None before the first
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0

    def next_indices(self, step: int, errors: ErrorFn) -> torch.Tensor:
        if self._cursor + self.batch_size > self._order.numel():
            self._epoch_state = self._generator.get_state()
            self._order = torch.randperm(self.num_samples, generator=self._generator)
            self._cursor = 0
        batch = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return batch.to(self.device, non_blocking=True)

    @property
    def selection_changed(self) -> bool:
        return True

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples, "epoch_state": self._epoch_state, "cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"the checkpoint's batches cover {state['num_samples']} samples but this signal has "
                f"{self.num_samples}; resume with the same signal and signal options"
            )
        self._epoch_state, self._cursor = state["epoch_state"], state["cursor"]
        self._order = torch.empty(0, dtype=torch.long)
        if self._epoch_state is not None:  # redraw the current epoch's permutation; the generator ends where it was
            self._generator.set_state(self._epoch_state)
            self._order = torch.randperm(self.num_samples, generator=self._generator)
