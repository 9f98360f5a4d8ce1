"""The generic fit loop: signal → sampler → field → loss → ``optimizer.step(closure)`` → run directory.

It knows nothing about the modality (``Signal`` does) or the optimizer (the closure contract does). Timing rule:
``time_s`` counts training only; evaluation, logging, checkpoints and previews are excluded (on CUDA
the device is synchronized before each clock reading at a log point, so queued kernels are counted where they ran).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal as os_signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fitters.run_dir import RunDir
from fitters.signals import Predict, Signal
from nf_precond.optim import NonFiniteLossError, make_closure
from nf_precond.sampling import Sampler

CHECKPOINT_INTERVAL_S = 30.0
"""Default wall-time spacing of checkpoints: a Ctrl-C always checkpoints, a crash loses at most this much."""

Preview = Callable[[], "np.ndarray | None"]
LogCallback = Callable[[dict[str, Any], Preview], None]
"""Called after every log with the metrics record and a function that renders the current reconstruction."""


@dataclass
class LoopOptions:
    """When the loop logs, checkpoints and stops."""

    steps: int
    """Stop when this many steps have been taken in total (a resumed run counts its earlier steps)."""
    log_every: int = 1
    """Evaluate the whole signal and write a metrics record every N steps (and always at the last step)."""
    checkpoint_every: int | None = None
    """Write checkpoint.pt every N steps at a log point (and at the end); None = at the first log after
    ``CHECKPOINT_INTERVAL_S`` of wall time (L-BFGS checkpoints carry the history, so not every step)."""
    time_budget: float | None = None
    """Stop once training time (evaluation excluded) reaches this many seconds."""
    target: float | None = None
    """Stop at the first log where the headline metric reaches this value."""
    eval_chunk: int = 65536
    """Coordinates per forward pass when evaluating the whole signal."""
    reset_on_new_selection: bool = False
    """Call ``optimizer.reset()`` when the sampler's selection changes (line-search methods keep a history that a
    different training set would invalidate)."""
    lr_schedule: str = "constant"
    """constant, or cosine: anneal every group's lr to ``lr_min`` over ``steps`` (see ``cosine_lr``)."""
    lr_min: float = 0.0
    """The lr reached at ``steps`` under the cosine schedule."""


@dataclass
class FitOutcome:
    """How a run ended: ``status`` is completed, target_reached, time_budget, interrupted or diverged."""

    status: str
    step: int
    time_s: float
    closure_evals: int
    history: list[dict[str, Any]] = field(default_factory=list)
    """The metrics records logged by this process (metrics.jsonl also holds a resumed run's earlier ones)."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    diverged_at: int | None = None
    """The step whose loss or metric was NaN/inf; the model was rolled back to ``step``."""


def make_predict(model: torch.nn.Module, chunk: int) -> Predict:
    """Evaluate ``model`` on many coordinates in chunks without building a graph."""

    def predict(coords: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(part) for part in coords.split(chunk)])

    return predict


def per_sample_errors(predict: Predict, signal: Signal) -> torch.Tensor:
    """``signal.per_sample_error`` of every sample [num_samples] (``predict`` runs in chunks, no graph): what INT
    ranks by."""
    return signal.per_sample_error(predict(signal.coords), signal.targets)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the loop to stop after the current step (so checkpoint and summary are consistent); a
    second one interrupts at once. Outside the main thread signals cannot be caught: the event is never set."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        requested.set()
        os_signal.signal(os_signal.SIGINT, previous)

    previous = os_signal.signal(os_signal.SIGINT, handler)
    try:
        yield requested
    finally:
        os_signal.signal(os_signal.SIGINT, previous)


def cosine_lr(base: float, minimum: float, step: int, steps: int) -> float:
    """The lr of step ``step`` annealed from ``base`` to ``minimum`` at ``steps``: torch's CosineAnnealingLR in closed
    form, a function of the step alone, so a resumed run continues on the same curve without scheduler state."""
    return minimum + (base - minimum) * (1 + math.cos(math.pi * min(step, steps) / steps)) / 2


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and not math.isinf(value)


class FitLoop:
    """Drive one optimizer on one signal; optionally write the run directory and call ``on_log``."""

    def __init__(
        self,
        signal: Signal,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        sampler: Sampler,
        options: LoopOptions,
        *,
        run_dir: RunDir | None = None,
        on_log: LogCallback | None = None,
        progress: bool = False,
        summary_extra: dict[str, Any] | None = None,
        predict: Predict | None = None,
    ):
        """``predict`` evaluates the field for ``signal.evaluate`` (default: ``model`` in chunks of
        ``options.eval_chunk`` rows; tiled fields pass their own)."""
        self.signal = signal
        self.model = model
        self.optimizer = optimizer
        self.sampler = sampler
        self.options = options
        self.run_dir = run_dir
        self.on_log = on_log
        self.progress = progress
        self.summary_extra = summary_extra or {}
        self.predict = predict or make_predict(model, options.eval_chunk)
        self.device = signal.coords.device
        self.step = 0
        self.time_s = 0.0
        self.closure_evals = 0
        self._last_logged_step = -1
        self._last_checkpoint_step: int | None = None
        self._last_checkpoint_wall = time.monotonic()
        self._last_good_state: dict[str, Any] | None = None
        self._closure: Callable[[], torch.Tensor] | None = None
        self._closure_indices: torch.Tensor | None = None
        self._base_lrs = [group["lr"] for group in optimizer.param_groups]

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sampler_state = self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": sampler_state,
            "step": self.step,
            "time_s": self.time_s,
            "closure_evals": self.closure_evals,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["sampler"] is not None and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        self.step, self.time_s, self.closure_evals = state["step"], state["time_s"], state["closure_evals"]
        self._closure = None
        set_rng_state(state["rng"])
        self._last_logged_step = self._last_checkpoint_step = self.step

    # -- one step ----------------------------------------------------------------------------------------------
    def _train_step(self) -> torch.Tensor | None:
        indices = self.sampler.next_indices(self.step, lambda: per_sample_errors(self.predict, self.signal))
        if self.options.reset_on_new_selection and self.sampler.selection_changed and hasattr(self.optimizer, "reset"):
            self.optimizer.reset()
        if self._closure is None or indices is not self._closure_indices:
            self._closure, self._closure_indices = self._closure_for(indices), indices
        if self.options.lr_schedule == "cosine":
            for group, base in zip(self.optimizer.param_groups, self._base_lrs):
                group["lr"] = cosine_lr(base, self.options.lr_min, self.step, self.options.steps)
        return self.optimizer.step(self._closure)

    def _closure_for(self, indices: torch.Tensor | None) -> Callable[[], torch.Tensor]:
        """One closure per selection: the subset is gathered once, not every step, and L-BFGS sees the same closure
        object while the data stay the same, so it reuses the previous step's loss and gradient (with a new closure
        every step it re-evaluated them: ~2 instead of ~1.1 closure evaluations per iteration)."""
        coords, targets = self.signal.coords, self.signal.targets
        if indices is not None:
            coords, targets = coords[indices], targets[indices]
        closure = make_closure(self.optimizer, lambda: self.signal.loss(self.model(coords), targets))

        def counted_closure() -> torch.Tensor:
            self.closure_evals += 1
            return closure()

        return counted_closure

    # -- logging -----------------------------------------------------------------------------------------------
    def _log(self, loss: torch.Tensor | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": self.step,
            "time_s": round(self.time_s, 6),
            "loss": float(loss.mean()) if loss is not None else None,  # batched fields: the mean over nets
            "closure_evals": self.closure_evals,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        record.update(self.signal.evaluate(self.predict))
        record.update(self.sampler.stats())
        self._last_logged_step = self.step
        return record

    def _healthy(self, record: dict[str, Any]) -> bool:
        loss_ok = record["loss"] is None or _finite(record["loss"])
        metric = record.get(self.signal.metric)
        return loss_ok and (metric is None or not math.isnan(metric))

    def _publish(self, record: dict[str, Any], history: list[dict[str, Any]], bar: tqdm) -> None:
        history.append(record)
        if self.run_dir is not None:
            self.run_dir.append_metrics(record)
        bar.set_postfix({self.signal.metric: f"{record.get(self.signal.metric, float('nan')):.2f}"}, refresh=False)
        if self.on_log is not None:
            self.on_log(record, lambda: self.signal.preview(self.predict))

    def _checkpoint_due(self) -> bool:
        if self.options.checkpoint_every is not None:
            return self.step % self.options.checkpoint_every == 0
        return time.monotonic() - self._last_checkpoint_wall >= CHECKPOINT_INTERVAL_S

    def _checkpoint(self) -> None:
        if self.run_dir is not None:
            self.run_dir.save_checkpoint(self.state_dict())
        else:  # no run folder (nf-bench, library use): keep the last good state in memory for a roll-back
            self._last_good_state = copy.deepcopy(self.state_dict())
        self._last_checkpoint_step = self.step
        self._last_checkpoint_wall = time.monotonic()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> FitOutcome:
        options = self.options
        history: list[dict[str, Any]] = []
        status = "completed"
        diverged_at: int | None = None
        loss: torch.Tensor | None = None
        with stop_on_sigint() as stop_requested, tqdm(
            total=options.steps, initial=self.step, disable=None if self.progress else True, dynamic_ncols=True, leave=False
        ) as bar:
            if self.step == 0 and self._last_logged_step < 0:
                self._publish(self._log(None), history, bar)
                self._checkpoint()
            segment_start = time.perf_counter()
            while self.step < options.steps:
                if options.time_budget is not None and self.time_s + time.perf_counter() - segment_start >= options.time_budget:
                    status = "time_budget"
                    break
                if stop_requested.is_set():
                    status = "interrupted"
                    break
                try:
                    loss = self._train_step()
                except NonFiniteLossError:
                    status, diverged_at = "diverged", self.step + 1
                    self._sync()
                    self.time_s += time.perf_counter() - segment_start
                    break
                self.step += 1
                bar.update(1)
                if self.step % options.log_every and self.step != options.steps:
                    continue
                self._sync()
                self.time_s += time.perf_counter() - segment_start
                record = self._log(loss)
                if not self._healthy(record):
                    status, diverged_at = "diverged", self.step
                    break
                self._publish(record, history, bar)
                if self._checkpoint_due():
                    self._checkpoint()
                metric = record.get(self.signal.metric)
                if options.target is not None and metric is not None and metric >= options.target:
                    status = "target_reached"
                    break
                segment_start = time.perf_counter()
            else:
                self._sync()
                self.time_s += time.perf_counter() - segment_start
            if status in ("time_budget", "interrupted"):
                self._sync()
                self.time_s += time.perf_counter() - segment_start
            if status == "diverged":
                self._roll_back()
            elif self._last_logged_step != self.step:
                record = self._log(loss)
                self._publish(record, history, bar)
            if status != "diverged" and self._last_checkpoint_step != self.step:
                self._checkpoint()
        outcome = FitOutcome(status, self.step, self.time_s, self.closure_evals, history, diverged_at=diverged_at)
        outcome.final_metrics = self.signal.final_metrics(self.predict)
        if self.run_dir is not None:
            self.signal.save_reconstruction(self.predict, self.run_dir.path)
            self.run_dir.write_summary(self.summary(outcome))
        return outcome

    def _roll_back(self) -> None:
        """Return to the last good checkpoint (on disk, or in memory without a run dir) so outputs show a finite
        model; the training time spent reaching the divergence stays counted."""
        time_s, closure_evals = self.time_s, self.closure_evals
        if self.run_dir is not None and self.run_dir.checkpoint_path.is_file():
            self.load_state_dict(self.run_dir.load_checkpoint(self.device))
        elif self._last_good_state is not None:
            self.load_state_dict(copy.deepcopy(self._last_good_state))
        self.time_s, self.closure_evals = time_s, closure_evals

    def summary(self, outcome: FitOutcome) -> dict[str, Any]:
        parameters = sum(p.numel() for p in self.model.parameters())
        return run_summary(self.signal, outcome, parameters, self.device, self.summary_extra)


def run_summary(signal: Signal, outcome: FitOutcome, parameters: int, device: torch.device,
                extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """summary.json of a run: how it ended, its final metrics, its cost, and the caller's ``extra`` settings."""
    return {
        "status": outcome.status,
        "signal": signal.kind,
        "metric": signal.metric,
        **outcome.final_metrics,
        "steps": outcome.step,
        "time_s": round(outcome.time_s, 6),
        "closure_evals": outcome.closure_evals,
        "parameters": parameters,
        "device": str(device),
        "diverged_at_step": outcome.diverged_at,
        **extra,
    }
