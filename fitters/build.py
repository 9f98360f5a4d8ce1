"""Build what a resolved ``FitConfig`` describes: the field, its optimizer and sampler, and the loop that runs them.

The library behind ``nf-fit`` and ``nf-bench`` (and the benchmarks): ``check_fits`` refuses impossible settings
before any work, ``build_loop`` returns a ``FitLoop`` (one field) or a ``KiloLoop`` (one tiny field per tile).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fitters.compile import compile_field, wants_compile
from fitters.config import FitConfig, int_options
from fitters.kilo import KiloLoop, make_grid
from fitters.loop import FitLoop, LoopOptions
from fitters.memory import check_full_batch_fits
from fitters.signals import Signal
from nf_precond.nn import CoordinateMLP
from nf_precond.optim import OPTIMIZERS, build_optimizer
from nf_precond.sampling import FullBatch, INTSampler, RandomBatches, Sampler


def build_components(config: FitConfig, signal: Signal,
                     also: Sequence[Signal] = ()) -> tuple[torch.nn.Module, torch.optim.Optimizer, Sampler]:  # fmt: skip
    """The field, optimizer and sampler a resolved config describes, on the signal's device, seeded (a compiled
    field is compiled for the signals ``also`` trained on too)."""
    device = signal.device
    torch.manual_seed(config.seed)
    model = CoordinateMLP(signal.in_features, signal.out_features, config.field).to(device)
    optimizer = build_optimizer(config.optim, model, lr=config.lr)
    return compile_field(model, optimizer, config, signal, also), optimizer, build_sampler(config, signal)


def build_sampler(config: FitConfig, signal: Signal) -> Sampler:
    """The resolved config's --sampler over the signal's samples (a batch as large as the signal is the full batch)."""
    device = signal.device
    if config.sampler == "int":
        return INTSampler.from_options(int_options(config), signal.num_samples, config.steps, device)
    if config.sampler == "full" or config.batch_size >= signal.num_samples:
        return FullBatch()
    return RandomBatches(signal.num_samples, config.batch_size, device=device, seed=config.seed)


def loop_options(config: FitConfig) -> LoopOptions:
    return LoopOptions(
        steps=config.steps,
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        time_budget=config.time_budget,
        wall_budget=config.wall_budget,
        target=config.target,
        eval_chunk=config.eval_chunk,
        reset_on_new_selection=OPTIMIZERS[config.optim].full_batch and config.lbfgs_on_reselect == "reset",
        lr_schedule=config.lr_schedule,
        lr_min=config.lr_min,
    )


def check_fits(config: FitConfig, signal: Signal) -> None:
    """Refuse, before any work, a run whose settings cannot fit ``signal``: the full-batch memory guard, or tiles
    that the signal or the optimizer cannot take. The one validation of --kilo settings."""
    if getattr(OPTIMIZERS[config.optim].load(), "wants_residuals", False):
        check_least_squares_fits(config, signal)
    if config.kilo is None:
        if config.kilo_group is not None:
            raise ValueError(f"--kilo-group {config.kilo_group} applies only to --kilo; add --kilo TILES or drop it")
        check_full_batch_fits(signal, config.field, config.batch_size, signal.device)
        return
    if config.sampler != "full" or config.batch_size:
        raise ValueError(
            "--kilo trains every tile on all its points (paper 1: 10k points per tile); drop --batch-size and "
            "--sampler, or use fewer, larger tiles"
        )
    if config.compile == "on" and config.kilo_group is not None:
        raise ValueError("--compile on applies to --kilo runs that train all tiles at once; drop --kilo-group or use "
                         "--compile auto")  # fmt: skip
    if OPTIMIZERS[config.optim].batched is None:
        usable = ", ".join(name for name, spec in OPTIMIZERS.items() if spec.batched is not None)
        raise ValueError(f"--kilo works with --optim {usable}; got --optim {config.optim}")
    make_grid(signal, config.kilo)


LEAST_SQUARES_MAX_WORK = 1e12
"""Levenberg–Marquardt builds its Jacobian one backward pass over the whole batch per residual row, so a step costs
about residuals x samples x parameters multiply-adds; above this a step takes minutes on a CPU."""


def check_least_squares_fits(config: FitConfig, signal: Signal) -> None:
    """Levenberg–Marquardt needs a mean-squared-error signal and a Jacobian it can afford."""
    if not signal.least_squares:
        raise ValueError(f"--optim {config.optim} fits mean-squared-error signals only; {signal.kind} signals train "
                         "with cross-entropy: choose another --optim (e.g. lbfgs)")  # fmt: skip
    samples = config.batch_size or signal.num_samples
    parameters = config.field.num_parameters(signal.in_features, signal.out_features)
    work = samples * signal.out_features * samples * parameters
    if work > LEAST_SQUARES_MAX_WORK:
        raise ValueError(
            f"--optim {config.optim}: one step would build a Jacobian of {samples * signal.out_features:,} residuals x "
            f"{parameters:,} parameters at about {work:.1g} multiply-adds, too slow to train; shrink the signal "
            "(--signal.resize) or the field (--hidden), or use --optim lbfgs"
        )


def build_loop(config: FitConfig, signal: Signal, options: LoopOptions, also: Sequence[Signal] = (),
               **kwargs: Any) -> FitLoop | KiloLoop:  # fmt: skip
    """The loop a config checked by ``check_fits`` describes: all tiles of --kilo (group by group), else one field,
    its optimizer and sampler, the field compiled for the signals ``also`` trained on too (``kwargs``: run_dir,
    on_log, progress, summary_extra)."""
    if config.kilo is not None:
        grid = make_grid(signal, config.kilo)
        compile = config.kilo_group is None and wants_compile(config, signal)
        return KiloLoop(signal, grid, config.field, options, optim=config.optim, lr=config.lr, seed=config.seed,
                        group=config.kilo_group, compile=compile, **kwargs)  # fmt: skip
    model, optimizer, sampler = build_components(config, signal, also)
    return FitLoop(signal, model, optimizer, sampler, options, **kwargs)
