"""``--coarse FACTOR:SECONDS,...``: fit smaller copies of an image first, then the image (coarse to fine).

A full-batch step costs in proportion to the pixels, and a field's first steps only learn the coarse content that a
smaller copy of the image also holds. A coordinate field is defined on the whole square whatever the sampling, so
the weights fitted to a copy shrunk by FACTOR (anti-aliased, as --signal.resize shrinks) carry over to the next copy
and to the image itself. Each phase trains a fresh optimizer of --optim (the objective changed, so L-BFGS's curvature
pairs would mislead) for SECONDS of training time, which come out of --time-budget; the run's records then continue
on the image, their time and closure evaluations counting the phases. Measured with L-BFGS on 256² photos: Adam's
60-s PSNR 2.8x sooner with ``--coarse 2:8`` than Adam, vs 1.7x for L-BFGS alone (benchmarks/results/coarse_to_fine.md).
"""

from __future__ import annotations

import dataclasses
import sys

from fitters.build import build_sampler, loop_options
from fitters.compile import follow_optimizer
from fitters.config import FitConfig, parse_coarse
from fitters.loop import FitLoop
from fitters.signals import Signal, load_signal
from nf_precond.optim import build_optimizer


def check_coarse(config: FitConfig, signal: Signal) -> None:
    """Refuse --coarse where it does not apply, before any work."""
    phases = parse_coarse(config.coarse)
    seconds = sum(seconds for _, seconds in phases)
    checks = [
        (signal.kind == "image", f"--coarse shrinks images; {config.path} is {signal.kind}: drop --coarse"),
        (config.kilo is None, "--coarse fits one field; drop --coarse or --kilo"),
        (config.sampler == "full" and config.batch_size in (0, None),
         f"--coarse trains on the whole image at each size, but this run draws mini-batches (--sampler "
         f"{config.sampler}, --batch-size {config.batch_size}: {(config.provenance or {}).get('batch_size', 'given')}); "
         "use a full-batch run (--optim lbfgs, or --batch-size 0) or drop --coarse"),  # fmt: skip
        (config.time_budget is None or seconds < config.time_budget,
         f"--coarse {config.coarse} takes {seconds:g} s of the --time-budget {config.time_budget or 0:g} s; shorten "
         "the phases or raise the budget"),  # fmt: skip
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if min(signal.height, signal.width) // max(factor for factor, _ in phases) < 2:
        raise ValueError(f"--coarse {config.coarse}: a {signal.height}x{signal.width} image shrunk that far has less "
                         "than 2 pixels a side; use smaller factors")  # fmt: skip


def coarse_signals(config: FitConfig, signal: Signal) -> list[tuple[Signal, float]]:
    """Each phase's copy of the image (loaded from the file, shrunk from the image's size) and its seconds."""
    copies = []
    for factor, seconds in parse_coarse(config.coarse):
        size = (signal.height // factor, signal.width // factor)
        copies.append((load_signal(config.path, dataclasses.replace(config.signal, resize=size)).to(signal.device),
                       seconds))  # fmt: skip
    return copies


def fit_coarse(config: FitConfig, loop: FitLoop, copies: list[tuple[Signal, float]], progress: bool) -> list[dict]:
    """Train ``loop``'s field on each copy for its seconds, then set the loop's clock and closure count to what the
    phases spent; returns one record per phase (for the summary). Ctrl-C during a phase stops the run before its
    folder is written (KeyboardInterrupt)."""
    field = getattr(loop.model, "field", loop.model)
    records = []
    for copy, seconds in copies:
        optimizer = build_optimizer(config.optim, field, lr=config.lr)
        follow_optimizer(loop.model, optimizer)
        options = dataclasses.replace(loop_options(config), time_budget=seconds, target=None)
        phase = FitLoop(copy, loop.model, optimizer, build_sampler(config, copy), options, progress=progress)
        try:
            outcome = phase.run()
        finally:
            follow_optimizer(loop.model, loop.optimizer)
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if outcome.status == "diverged":
            raise ValueError(f"--coarse: the loss became NaN/inf on the {copy.height}x{copy.width} copy with --optim "
                             f"{config.optim} --lr {config.lr:g}; lower --lr or drop --coarse")  # fmt: skip
        loop.time_s += outcome.time_s
        loop.closure_evals += outcome.closure_evals
        record = {"size": [copy.height, copy.width], "steps": outcome.step, "time_s": round(outcome.time_s, 3),
                  "closure_evals": outcome.closure_evals, "metrics on the copy": outcome.final_metrics}  # fmt: skip
        print(f"nf-fit: coarse phase {copy.height}x{copy.width}: {outcome.step} steps in {outcome.time_s:.1f} s, "
              f"{copy.metric} {outcome.final_metrics[copy.metric]:.2f} on the copy", file=sys.stderr)  # fmt: skip
        records.append(record)
    return records
