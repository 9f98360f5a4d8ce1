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
from nf_precond.nn import BatchedMLP
from nf_precond.optim import NonFiniteLossError, evaluates_nets, make_closure
from nf_precond.sampling import Sampler

CHECKPOINT_INTERVAL_S = 30.0
"""Default wall-time spacing of checkpoints: a Ctrl-C always checkpoints, a crash loses at most this much."""
FULL_EVAL_INTERVAL_S = 60.0
"""Least wall time between evaluations of the whole signal while training (logs in between measure the progress
subset, ``Signal.progress_indices``); the last record of a run is always a whole-signal one."""
FULL_EVAL_COST_FACTOR = 10.0
"""After a whole-signal evaluation that took d seconds, wait at least this many times d: it costs at most ~10 % of
wall time, however large the signal."""

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
    wall_budget: float | None = None
    """Stop once the loop's wall time (training, evaluation, logging, checkpoints) reaches this many seconds."""
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
    """How a run ended: ``status`` is completed, target_reached, time_budget, wall_budget, interrupted or diverged."""

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
    """``signal.per_sample_error`` of every sample [num_samples] (block by block, no graph): what INT ranks by."""
    return signal.per_sample_errors(predict)


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


STOP_SIGNALS = (os_signal.SIGINT, os_signal.SIGTERM)
"""Ctrl-C, and what ``kill`` and job schedulers send: both stop a run the same way."""


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C or SIGTERM asks the loop to stop after the current step (so checkpoint and summary are
    consistent); a second one meets the handlers from before the loop (nf-fit: an interrupt at once). Outside the main
    thread signals cannot be caught: the event is never set."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        requested.set()
        for number, old in previous.items():
            os_signal.signal(number, old)

    previous = {number: os_signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield requested
    finally:
        for number, old in previous.items():
            os_signal.signal(number, old)


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
        self.device = signal.device
        self.progress_indices = signal.progress_indices()
        """The fixed subset most logs measure (None: the signal is small enough to evaluate whole every time)."""
        self.step = 0
        self.time_s = 0.0
        self.closure_evals = 0
        self._last_logged_step = -1
        self._last_checkpoint_step: int | None = None
        self._last_checkpoint_wall = time.monotonic()
        self._wall_start = time.monotonic()  # these four are set again when ``run`` starts
        self._first_step = 0
        self._next_full_eval_wall = self._wall_start + FULL_EVAL_INTERVAL_S
        self._confirm_wall = 0.0
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
        coords, targets = self.signal.batch(indices)
        net_losses = None
        # Tiles or fields (compiled or not): a line search may evaluate only some of the nets.
        if isinstance(getattr(self.model, "field", self.model), BatchedMLP):
            net_losses = lambda nets: self.signal.loss(self.model(coords[nets], nets=nets), targets[nets])  # noqa: E731
        closure = make_closure(
            self.optimizer,
            lambda: self.signal.loss(self.model(coords), targets),
            compute_residuals=lambda: self.signal.residuals(self.model(coords), targets),
            compute_net_losses=net_losses,
        )

        def counted_closure(*nets: torch.Tensor) -> torch.Tensor:
            self.closure_evals += 1
            return closure(*nets)

        counted_closure.evaluates_nets = evaluates_nets(closure)  # type: ignore[attr-defined]
        return counted_closure

    # -- logging -----------------------------------------------------------------------------------------------
    def _log(self, loss: torch.Tensor | None, full: bool = False, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """The metrics record of this step: the headline metric over the progress subset, or over the whole signal
        when ``full`` (and whenever the signal is its own progress subset), or ``metrics`` already measured on the
        whole signal; ``eval_samples`` says which."""
        record: dict[str, Any] = {
            "step": self.step,
            "time_s": round(self.time_s, 6),
            "loss": float(loss.mean()) if loss is not None else None,  # batched fields: the mean over nets
            "closure_evals": self.closure_evals,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if metrics is not None:
            record.update({**metrics, "eval_samples": self.signal.num_eval_samples})
        else:
            record.update(self._evaluate(full))
        record.update(self.sampler.stats())
        self._last_logged_step = self.step
        return record

    def _evaluate(self, full: bool) -> dict[str, Any]:
        if self.progress_indices is not None and not full:
            return {**self.signal.evaluate(self.predict, self.progress_indices), "eval_samples": len(self.progress_indices)}
        started = time.monotonic()
        metrics = {**self.signal.evaluate(self.predict), "eval_samples": self.signal.num_eval_samples}
        finished = time.monotonic()
        self._next_full_eval_wall = finished + max(FULL_EVAL_INTERVAL_S, FULL_EVAL_COST_FACTOR * (finished - started))
        return metrics

    def _full_eval_due(self) -> bool:
        return self.progress_indices is not None and time.monotonic() >= self._next_full_eval_wall

    def _stop_reason(self, training_s: float, stop_requested: threading.Event) -> str | None:
        """Why the loop must stop before another step (``training_s``: training time so far), or None."""
        options = self.options
        if self.step >= options.steps:
            return "completed"
        if options.time_budget is not None and training_s >= options.time_budget:
            return "time_budget"
        if options.wall_budget is not None and time.monotonic() - self._wall_start >= options.wall_budget:
            return "wall_budget"
        if stop_requested.is_set():
            return "interrupted"
        return None

    def _reached(self, record: dict[str, Any]) -> bool:
        metric = record.get(self.signal.metric)
        return self.options.target is not None and metric is not None and metric >= self.options.target

    def _postfix(self, record: dict[str, Any] | None) -> dict[str, str]:
        """What the progress bar shows besides the steps: the metric, training and wall time, and the time left."""
        wall = time.monotonic() - self._wall_start
        postfix = {}
        if record is not None:
            postfix[self.signal.metric] = f"{record.get(self.signal.metric, float('nan')):.2f}"
        postfix.update({"train": f"{self.time_s:.1f}s", "wall": f"{wall:.1f}s"})
        eta = self._eta(wall)
        if eta is not None:
            postfix["eta"] = f"{eta:.0f}s"
        return postfix

    def _eta(self, wall: float) -> float | None:
        """Wall seconds left until the first of the step, training-time and wall-time limits, at the pace so far."""
        options, left = self.options, []
        done = self.step - self._first_step
        if done > 0:
            left.append((options.steps - self.step) * wall / done)
        if options.time_budget is not None and self.time_s > 0:
            left.append(max(0.0, options.time_budget - self.time_s) * wall / self.time_s)
        if options.wall_budget is not None:
            left.append(max(0.0, options.wall_budget - wall))
        return min(left) if left else None

    def _healthy(self, record: dict[str, Any]) -> bool:
        loss_ok = record["loss"] is None or _finite(record["loss"])
        metric = record.get(self.signal.metric)
        return loss_ok and (metric is None or not math.isnan(metric))

    def _publish(self, record: dict[str, Any], history: list[dict[str, Any]], bar: tqdm) -> None:
        history.append(record)
        if self.run_dir is not None:
            self.run_dir.append_metrics(record)
        bar.set_postfix(self._postfix(record), refresh=False)
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
        status: str | None = None
        diverged_at: int | None = None
        loss: torch.Tensor | None = None
        self._wall_start = time.monotonic()
        self._first_step = self.step
        self._next_full_eval_wall = self._wall_start + FULL_EVAL_INTERVAL_S
        self._confirm_wall = 0.0  # a progress metric at the target is confirmed on the whole signal after this
        counting = False  # whether training time is running since ``segment_start``
        # Under a time budget the steps are no measure of progress: the bar counts them, the postfix shows the ETA.
        by_steps = options.time_budget is None
        with stop_on_sigint() as stop_requested, tqdm(
            total=options.steps if by_steps else None, initial=self.step, disable=None if self.progress else True,
            dynamic_ncols=True, leave=False,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{postfix}]" if by_steps else "{n_fmt} steps [{postfix}]",
        ) as bar:  # fmt: skip
            if self.step == 0 and self._last_logged_step < 0:
                self._publish(self._log(None), history, bar)
                self._checkpoint()
            segment_start, counting = time.perf_counter(), True
            while True:
                status = self._stop_reason(self.time_s + time.perf_counter() - segment_start, stop_requested)
                if status is not None:
                    break
                try:
                    loss = self._train_step()
                except NonFiniteLossError:
                    status, diverged_at = "diverged", self.step + 1
                    break
                self.step += 1
                bar.update(1)
                if self.step % options.log_every and self.step != options.steps:
                    continue
                self._sync()
                self.time_s += time.perf_counter() - segment_start
                segment_start = time.perf_counter()
                if self._stop_reason(self.time_s, stop_requested) is not None:
                    continue  # the run ends here: the closing record below measures the whole signal
                counting = False
                record = self._log(loss, full=self._full_eval_due())
                if not self._healthy(record):
                    status, diverged_at = "diverged", self.step
                    break
                if self._reached(record) and record["eval_samples"] < self.signal.num_eval_samples:
                    if time.monotonic() >= self._confirm_wall:  # the target counts on the whole signal
                        record.update(self._evaluate(full=True))
                        self._confirm_wall = self._next_full_eval_wall
                self._publish(record, history, bar)
                if self._checkpoint_due():
                    self._checkpoint()
                if self._reached(record) and record["eval_samples"] == self.signal.num_eval_samples:
                    status = "target_reached"
                    break
                segment_start, counting = time.perf_counter(), True
            if counting:
                self._sync()
                self.time_s += time.perf_counter() - segment_start
            # One pass over the whole signal gives the final metrics, the closing record and the reconstruction.
            out_dir = self.run_dir.path if self.run_dir is not None else None
            final = self.signal.finish(self.predict, out_dir) if status != "diverged" else None
            if final is not None and self._last_logged_step != self.step:
                record = self._log(loss, metrics=final)
                if self._healthy(record):
                    self._publish(record, history, bar)
                else:
                    status, diverged_at, final = "diverged", self.step, None
            if status == "diverged":
                self._roll_back()
            elif self._last_checkpoint_step != self.step:
                self._checkpoint()
        outcome = FitOutcome(status, self.step, self.time_s, self.closure_evals, history, diverged_at=diverged_at)
        outcome.final_metrics = final if final is not None else self.signal.finish(self.predict, out_dir)
        if self.run_dir is not None:
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
        # A compiled field (fitters.compile) says how long compiling took: reported, never counted as training.
        compiled = {"compile_s": round(self.model.compile_s, 3)} if hasattr(self.model, "compile_s") else {}
        return run_summary(self.signal, outcome, parameters, self.device, {**self.summary_extra, **compiled})


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
