"""``nf-fit PATH``: fit one signal file with one optimizer and write the run directory.

Bad input ends with one ``nf-fit: error: ...`` line on stderr and a non-zero exit status, never a traceback:
2 = unusable input or flags, 3 = the loss diverged (the last good checkpoint is kept), 130 = interrupted (Ctrl-C or
SIGTERM alike; checkpoint and summary are written, ``--resume`` continues). Runs streamed with ``--kilo-group`` write
their checkpoint only once every group is done, so a diverged or interrupted one keeps none and cannot be resumed.
A run holds its folder's lock, ``--resume`` checks the checkpoint's signal, field and optimizer, and ``--overwrite``
replaces the old run only once the new one has written its summary (``fitters.run_dir``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fitters.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, exit_on_interrupt, run_cli

# torch and the rest take seconds to import: Ctrl-C or SIGTERM meanwhile is one line too (the rest of the file uses
# these names as if imported at the top).
with exit_on_interrupt("nf-fit"):
    import argparse
    import dataclasses
    import os
    import time
    from pathlib import Path
    from typing import Any

    import torch
    import tyro

    from fitters.build import build_loop, check_fits, loop_options
    from fitters.coarse import check_coarse, coarse_signals, fit_coarse
    from fitters.dataset import fit_dataset, is_dataset_path
    from fitters.distributed import kilo_engine
    from fitters.config import (
        FitConfig,
        apply_threads,
        fit_to_signal,
        load_preset,
        record_flags,
        resolve,
        resolve_device,
        to_dict,
    )
    from fitters.loop import FitOutcome, LogCallback
    from fitters.run_dir import CONFIG, RunDir, file_sha256, to_plain
    from fitters.signals import Signal, load_signal

PREVIEW_INTERVAL_S = 0.5
"""At most two viewer previews per second: rendering the whole field is an evaluation pass."""
PREVIEW_COST_FACTOR = 20.0
"""After a preview that took d seconds, wait at least this many times d: previews cost at most ~5 % of wall time."""


def parse_config(argv: Sequence[str]) -> FitConfig:
    """tyro parse with defaults from ``--config FILE`` or, for ``--resume``, from the run's own config.yaml."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--out", type=Path)
    known, _ = pre.parse_known_args(list(argv))
    default = FitConfig()
    if known.resume and known.out is not None and (known.out / CONFIG).is_file():
        default = load_preset(known.out / CONFIG)
        default = dataclasses.replace(default, resume=False, overwrite=False, config=None, viewer=False)
    elif known.config is not None:
        default = load_preset(known.config)
    return record_flags(tyro.cli(FitConfig, args=list(argv), default=default, prog="nf-fit"), argv)


def viewer_callback(config: FitConfig, signal: Signal) -> tuple[Any, LogCallback]:
    """Start the live viewer (imported only when asked for) and a log callback that feeds it, previews throttled."""
    from fitters.viewer import Viewer

    try:
        viewer = Viewer(signal.target_preview(), port=config.viewer_port, title=f"nf-fit {config.path.name}")
    except OSError as error:  # port taken: the viewer's message names --viewer-port
        raise ValueError(str(error)) from error
    print(f"nf-fit: viewer at {viewer.url}", file=sys.stderr)
    next_preview = [-float("inf")]

    def on_log(record: dict[str, Any], preview: Any) -> None:
        image = None
        if time.monotonic() >= next_preview[0]:
            started = time.monotonic()
            image = preview()
            finished = time.monotonic()
            next_preview[0] = finished + max(PREVIEW_INTERVAL_S, PREVIEW_COST_FACTOR * (finished - started))
        metric = record.get(signal.metric)
        viewer.update(record["step"], record["time_s"], signal.metric, float("nan") if metric is None else metric, image)

    return viewer, on_log


def run_identity(config: FitConfig) -> dict[str, Any]:
    """What every checkpoint records and ``--resume`` checks, keyed by flag: the signal (file, content and options),
    the field and the optimizer."""
    identity: dict[str, Any] = {
        "signal": os.path.abspath(config.path),
        "signal content (sha256)": file_sha256(config.path)[:16],
        "--optim": config.optim,
        "--lr": config.lr,
        "--kilo": config.kilo,
        "--coarse": config.coarse,
    }
    for prefix, settings in (("--signal.", config.signal), ("--", config.field)):
        for name, value in to_plain(dataclasses.asdict(settings)).items():
            identity[prefix + name.replace("_", "-")] = value
    return identity


def run(config: FitConfig, *, progress: bool = True) -> tuple[FitOutcome, RunDir, FitConfig]:
    """Resolve and validate, then hold the run folder's lock while loading, checking and fitting; an --overwrite run
    replaces the old one once its summary is written."""
    config = resolve(config)
    device = resolve_device(config.device)
    apply_threads(config)
    run_dir = RunDir.check(config.out)
    with run_dir.claim(overwrite=config.overwrite, resume=config.resume):
        outcome, config = fit_claimed(config, run_dir, device, progress)
        run_dir.commit()
    return outcome, run_dir, config


def fit_claimed(config: FitConfig, run_dir: RunDir, device: torch.device, progress: bool) -> tuple[FitOutcome, FitConfig]:
    """Load and check (a resumed run against its checkpoint), build, then (only then) write the run folder and fit."""
    checkpoint = run_dir.load_checkpoint(device) if config.resume else None
    signal = load_signal(config.path, config.signal).to(device)
    run_dir.identity = run_identity(config)
    if checkpoint is not None:
        run_dir.check_resume(checkpoint)
    config = fit_to_signal(config, signal)
    check_fits(config, signal)
    if config.coarse is not None:
        check_coarse(config, signal)
    # A resumed run's checkpoint already holds what the coarse phases learned.
    copies = coarse_signals(config, signal) if config.coarse is not None and checkpoint is None else []
    loop_extra = {
        "optim": config.optim, "lr": config.lr, "batch_size": config.batch_size, "sampler": config.sampler,
        "path": str(config.path),
    }
    viewer, on_log = viewer_callback(config, signal) if config.viewer else (None, None)
    try:
        loop = build_loop(
            config, signal, loop_options(config), [copy for copy, _ in copies], run_dir=run_dir, on_log=on_log,
            progress=progress, summary_extra=loop_extra, **kilo_engine(config),
        )  # fmt: skip
        if copies:  # before the run folder is written: Ctrl-C here leaves nothing behind
            loop.summary_extra["coarse"] = fit_coarse(config, loop, copies, progress)
        if checkpoint is not None:
            try:
                loop.load_state_dict(checkpoint)
            except (KeyError, RuntimeError, ValueError) as error:
                raise ValueError(
                    f"checkpoint in {run_dir.path} does not match this configuration ({str(error).splitlines()[0]}); "
                    "resume with the run's original flags or start afresh with --overwrite"
                ) from error
        run_dir.prepare(resume=config.resume)
        if config.resume:
            run_dir.truncate_metrics(loop.step)
        run_dir.write_config(to_dict(dataclasses.replace(config, device=device.type)))
        outcome = loop.run()
    finally:
        if viewer is not None:
            viewer.close()
    return outcome, config


def explain(outcome: FitOutcome, config: FitConfig, run_dir: RunDir) -> tuple[int, str | None]:
    """Exit status and the one stderr line for runs that did not end normally.

    Whether a checkpoint is on disk decides what to advise: a fresh run removes the previous one, every plain run
    writes one, and a run streamed with --kilo-group writes one only after its last group."""
    kept_checkpoint = run_dir.checkpoint_path.is_file()
    if outcome.status == "diverged":
        lr = config.lr
        advice = (
            f"loss became NaN/inf at step {outcome.diverged_at} with --optim {config.optim} --lr {lr:g}; "
            f"lower --lr (e.g. --lr {lr / 10:g})."
        )
        if kept_checkpoint:
            return EXIT_DIVERGED, f"{advice} Kept the last good checkpoint (step {outcome.step}) in {run_dir.path}"
        return EXIT_DIVERGED, (
            f"{advice} --kilo-group runs keep no checkpoint before their last group: metrics and summary are in "
            f"{run_dir.path}; rerun with --overwrite"
        )
    if outcome.status == "interrupted":
        if kept_checkpoint:
            return EXIT_INTERRUPTED, (
                f"interrupted at step {outcome.step}; checkpoint and summary written to {run_dir.path}; "
                f"continue with: nf-fit {config.path} --out {run_dir.path} --resume"
            )
        return EXIT_INTERRUPTED, (
            f"interrupted at step {outcome.step}; metrics and summary written to {run_dir.path}; --kilo-group runs "
            "keep no checkpoint before their last group, so they cannot --resume: rerun with --overwrite"
        )
    return 0, None


def fit(argv: list[str]) -> int:
    config = parse_config(argv)
    if is_dataset_path(config.path):  # a folder or a glob: every signal in it (fitters/dataset.py)
        return fit_dataset(config)
    outcome, run_dir, config = run(config)
    code, message = explain(outcome, config, run_dir)
    if message is not None:
        print(f"nf-fit: {'error: ' if code == EXIT_DIVERGED else ''}{message}", file=sys.stderr)
        return code
    summary = ", ".join(f"{key} {value:.4g}" for key, value in outcome.final_metrics.items())
    print(f"nf-fit: {outcome.status} at step {outcome.step} ({outcome.time_s:.1f} s): {summary}; wrote {run_dir.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("nf-fit", fit, argv,
                   interrupted="interrupted; if the run folder has a checkpoint.pt, --resume continues from it")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
