"""The optimizer race behind ``nf-bench PATH --optims adam,adam@1e-3,lbfgs``: several optimizers on one signal, one
process, one seed.

Every run gets the same signal, the same initial weights (same seed) and the same settings apart from its optimizer
(and that optimizer's default lr / batch size / log interval unless given). The report gives, each as a ratio to
the FIRST run: time and iterations to a target metric (default: the first run's final metric), the metric at equal
time (the shortest run's training time), and the per-step cost. It writes ``<results-dir>/<name>.md`` and
``.json`` and two PNG plots (metric vs time, metric vs step). Times are training time (evaluation excluded), so
ratios within one run of nf-bench are comparable; absolute seconds depend on the machine and its load.

With ``--ray`` every run is a Ray task (``fitters.distributed``) reserving ``--threads`` CPUs (default 1), so runs
side by side on one machine do not share cores; the curves equal a local race's, and time ratios stay comparable as
long as the nodes are alike. ``--stop-at-target`` without a given target runs the first run on its own before the
others (its final metric is their target).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fitters import metrics
from fitters.build import build_loop, check_fits, loop_options
from fitters.config import (
    INT_FLAGS,
    FitConfig,
    apply_threads,
    fit_to_signal,
    resolve,
    resolve_device,
    to_dict,
)
from fitters.distributed import engine_for
from fitters.kilo import make_grid
from fitters.machine import machine_facts
from fitters.run_dir import to_plain
from nf_precond.atomic import atomic_path, atomic_write_text
from fitters.signals import Signal
from fitters.signals import load_signal
from nf_precond.nn import ACTIVATIONS
from nf_precond.optim import OPTIMIZERS


@dataclass
class BenchConfig(FitConfig):
    """Compare optimizers on PATH; every nf-fit flag sets the shared settings (e.g. --hidden, --batch-size)."""

    optims: str = "adam,lbfgs"
    """Comma-separated runs, each NAME[@LR][+SAMPLER][:ACT] (e.g. adam@1e-3,adam@1e-3+int,lbfgs,lbfgs:relu);
    ratios are to the first. Without @LR a run uses its optimizer's paper default; --lr and a preset's lr are not used
    by nf-bench. +full/+random/+int gives that run its own --sampler (the --int-* flags configure the +int runs).
    :sine/:gauss/:wavelet/:relu/:relu-pe gives it its own --activation (--omega0, --sigma, ... stay shared)."""
    name: str | None = None
    """Results file stem; None = <signal kind>_<file stem>."""
    results_dir: Path = Path("benchmarks/results")
    """Where <name>.md, <name>.json and the plots go."""
    stop_at_target: bool = False
    """Stop runs after the first once they reach the target (saves time; their equal-time curves end there)."""


SAMPLERS = ("full", "random", "int")


@dataclass
class RunSpec:
    label: str
    optim: str
    lr: float | None
    sampler: str | None = None
    """This run's --sampler; None = the shared setting."""
    act: str | None = None
    """This run's --act; None = the shared setting."""


def parse_optims(text: str) -> list[RunSpec]:
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head, _, act = item.partition(":")
        if act and act not in ACTIVATIONS:
            raise ValueError(f"--optims: {item!r} has an unknown activation {act!r}; write NAME:{'|'.join(ACTIVATIONS)}")
        head, _, sampler = head.partition("+")
        if sampler and sampler not in SAMPLERS:
            raise ValueError(f"--optims: {item!r} has an unknown sampler {sampler!r}; write NAME+{'|'.join(SAMPLERS)}")
        name, _, lr_text = head.partition("@")
        if name not in OPTIMIZERS:
            raise ValueError(f"--optims: unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
        try:
            lr = float(lr_text) if lr_text else None
        except ValueError as error:
            raise ValueError(f"--optims: {item!r} has a bad learning rate; write NAME@LR, e.g. adam@1e-3") from error
        specs.append(RunSpec(item, name, lr, sampler or None, act or None))
    if not specs:
        raise ValueError("--optims is empty; give e.g. --optims adam,lbfgs")
    return specs


def run_config(base: BenchConfig, spec: RunSpec) -> FitConfig:
    """The resolved nf-fit config of one run: the shared settings with this run's optimizer (and lr)."""
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(FitConfig)}
    # lr is per run (NAME@LR or the registry default): a preset's lr belongs to the preset's own optimizer.
    fields.update(optim=spec.optim, lr=spec.lr, out=Path("unused"))
    if spec.act is not None:
        fields["field"] = dataclasses.replace(base.field, activation=spec.act)
    if spec.sampler is not None:
        fields["sampler"] = spec.sampler
        if spec.sampler != "random":  # the shared mini-batch size is for the runs that draw mini-batches
            fields["batch_size"] = None
    if fields["sampler"] != "int":  # the shared --int-* flags configure the +int runs only
        fields.update({name: None for name in INT_FLAGS})
    return resolve(FitConfig(**fields))


def field_text(configs: list[FitConfig], signal: Signal) -> str:
    """The field of the runs for the report: layers x width, activation(s), tiles."""
    first = configs[0]
    acts = list(dict.fromkeys(run_cfg.field.activation for run_cfg in configs))
    text = f"{first.field.layers}x{first.field.hidden} {'/'.join(acts)}" + (" (per run)" if len(acts) > 1 else "")
    if first.kilo:
        text += f" per tile, --kilo {first.kilo} ({make_grid(signal, first.kilo).num_tiles} tiles)"
    return text


def race_run(config: FitConfig, signal: Signal, target: float | None, remote: bool) -> dict[str, Any]:
    """One run of the race where the engine runs it (a Ray task first moves the shared signal to its device)."""
    if remote:
        signal = signal.to(resolve_device(config.device))
    return fit_one(config, signal, target)


def fit_one(config: FitConfig, signal: Signal, target: float | None) -> dict[str, Any]:
    options = dataclasses.replace(loop_options(config), target=target)
    outcome = build_loop(config, signal, options, progress=True).run()
    return {
        "optim": config.optim,
        "act": config.field.activation,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "sampler": config.sampler,
        "status": outcome.status,
        "steps": outcome.step,
        "time_s": outcome.time_s,
        "closure_evals": outcome.closure_evals,
        "final": outcome.final_metrics,
        "curve": outcome.history,
    }


def analyse(runs: list[dict[str, Any]], metric: str, target: float) -> float:
    """Add target/equal-time/step-cost figures and ratios to the first run; return the equal time."""
    equal_time = min(run["time_s"] for run in runs)
    for run in runs:
        curve = run["curve"]
        run["time_to_target_s"] = metrics.first_crossing(curve, metric, target, "time_s")
        run["steps_to_target"] = metrics.first_crossing(curve, metric, target, "step")
        run[f"{metric}_at_equal_time"] = metrics.value_at(curve, metric, "time_s", equal_time)
        run["ms_per_step"] = 1000 * run["time_s"] / max(run["steps"], 1)
        run["closure_evals_per_step"] = run["closure_evals"] / max(run["steps"], 1)
    first = runs[0]
    for run in runs:
        run["ratios"] = {
            "time_to_target": metrics.ratio(run["time_to_target_s"], first["time_to_target_s"]),
            "steps_to_target": metrics.ratio(run["steps_to_target"], first["steps_to_target"]),
            f"{metric}_at_equal_time": metrics.ratio(run[f"{metric}_at_equal_time"], first[f"{metric}_at_equal_time"]),
            "ms_per_step": metrics.ratio(run["ms_per_step"], first["ms_per_step"]),
        }
        reached, first_reached = run["time_to_target_s"], first["time_to_target_s"]
        run["speedup_vs_first"] = (
            first_reached / reached if reached and first_reached
            else None
        )
        # The first run never got there: it ran for its whole time, so the speed-up is at least this.
        run["speedup_vs_first_at_least"] = first["time_s"] / reached if reached and first_reached is None else None
    return equal_time


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _batch_column(run: dict[str, Any]) -> str:
    if run["sampler"] == "int":
        return "INT"
    return str(run["batch_size"]) if run["sampler"] == "random" else "full"


def markdown(report: dict[str, Any]) -> str:
    metric, target = report["metric"], report["target"]
    lines = [
        f"# {report['name']}",
        "",
        f"Signal `{report['path']}` ({report['signal']}, {report['samples']} samples); field: {report['field']}; "
        f"seed {report['seed']}; device {report['device']} ({report['threads']} threads); torch {report['torch']}.",
        f"Target {metric} = {target:.2f} ({report['target_source']}); equal time = {report['equal_time_s']:.1f} s "
        "(the shortest run). Times are training time, evaluation excluded. Ratios are to the first run "
        f"(`{report['runs'][0]['label']}`); speed-up = first's time to target / this run's.",
        "",
        f"| run | batch | steps | time s | final {metric} | time to target s | steps to target | speed-up | "
        f"{metric} at equal time | ms/step (ratio) | closure evals/step | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        speedup = _fmt(run["speedup_vs_first"], ".2f") + "x" if run["speedup_vs_first"] else (
            f"> {run['speedup_vs_first_at_least']:.2f}x" if run["speedup_vs_first_at_least"] else "–"
        )
        lines.append(
            f"| {run['label']} | {_batch_column(run)} | {run['steps']} | {run['time_s']:.1f} | "
            f"{_fmt(run['final'].get(metric), '.2f')} | {_fmt(run['time_to_target_s'], '.1f')} | "
            f"{_fmt(run['steps_to_target'], '.0f')} ({_fmt(run['ratios']['steps_to_target'], '.2f')}) | {speedup} | "
            f"{_fmt(run[f'{metric}_at_equal_time'], '.2f')} | {run['ms_per_step']:.1f} "
            f"({_fmt(run['ratios']['ms_per_step'], '.2f')}) | {run['closure_evals_per_step']:.2f} | {run['status']} |"
        )
    lines += ["", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], results_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, written = report["metric"], []
    for axis, label, suffix in (("time_s", "training time (s)", "time"), ("step", "iteration", "step")):
        figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
        for run in report["runs"]:
            points = [(r[axis], r[metric]) for r in run["curve"] if r.get(metric) is not None]
            axes.plot(*zip(*points), label=run["label"])
        axes.axhline(report["target"], color="gray", linestyle=":", linewidth=1, label=f"target {report['target']:.1f}")
        axes.set_xlabel(label)
        axes.set_ylabel(metric.upper())
        if axis == "step":
            axes.set_xscale("symlog", linthresh=10)
        axes.set_xlim(left=0)
        axes.set_title(report["name"])
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        final = results_dir / f"{report['name']}_{metric}_vs_{suffix}.png"
        with atomic_path(final) as temporary:
            figure.savefig(temporary)
        plt.close(figure)
        written.append(final.name)
    return written


def bench(config: BenchConfig, argv: Sequence[str]) -> dict[str, Any]:
    specs = parse_optims(config.optims)
    configs = [run_config(config, spec) for spec in specs]  # validates every run before any work
    unused_int_flags = [name for name in INT_FLAGS if getattr(config, name) is not None]
    if unused_int_flags and not any(run_cfg.sampler == "int" for run_cfg in configs):
        flag = "--" + unused_int_flags[0].replace("_", "-")
        raise ValueError(f"{flag} is given but no run uses INT; add +int to a run in --optims (e.g. adam+int)")
    device = resolve_device(config.device)
    apply_threads(config)
    signal = load_signal(config.path, config.signal).to(device)
    name = config.name or f"{signal.kind}_{config.path.stem}"
    target = config.target
    runs: list[dict[str, Any]] = []
    configs = [fit_to_signal(run_cfg, signal) for run_cfg in configs]
    for run_cfg in configs:
        check_fits(run_cfg, signal)
    if config.group is not None:
        raise ValueError(f"--group {config.group} applies to nf-fit DIR; nf-bench races runs on one file (drop it)")
    if config.coarse is not None:
        raise ValueError(f"--coarse {config.coarse} applies to nf-fit; nf-bench races every run from the same start "
                         "(drop it; benchmarks/coarse_to_fine.py races coarse-to-fine schedules)")  # fmt: skip
    engine = engine_for(config.ray, threads=config.threads, device=config.device)
    engine.connect()
    config.results_dir.mkdir(parents=True, exist_ok=True)
    shared = engine.put(signal.to("cpu")) if engine.remote else signal
    pending = list(enumerate(zip(specs, configs)))
    batches = [pending[:1], pending[1:]] if config.stop_at_target and target is None else [pending]

    def calls(batch: list[tuple[int, tuple[RunSpec, FitConfig]]]) -> Iterator[tuple[Any, ...]]:
        for index, (spec, run_cfg) in batch:  # made lazily: locally each run starts after the previous one
            print(f"nf-bench: {spec.label} (lr {run_cfg.lr:g}, sampler {run_cfg.sampler})", file=sys.stderr)
            yield run_cfg, shared, target if (config.stop_at_target and index) else None, engine.remote

    for batch in batches:
        for (_index, (spec, _cfg)), result in zip(batch, engine.map(race_run, calls(batch))):
            runs.append({"label": spec.label, **result})
        if target is None and runs:
            target = runs[0]["final"][signal.metric]
    equal_time = analyse(runs, signal.metric, target)
    report = {
        "name": name,
        "path": str(config.path),
        "signal": signal.kind,
        "samples": signal.num_samples,
        "metric": signal.metric,
        "target": target,
        "target_source": "given" if config.target is not None else f"final {signal.metric} of the first run",
        "equal_time_s": equal_time,
        "field": field_text(configs, signal),
        "seed": config.seed,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine_facts(),
        "command": "nf-bench " + " ".join(argv),
        "settings": to_plain(to_dict(config)),
        "runs": runs,
    }
    report["plots"] = plot(report, config.results_dir)
    atomic_write_text(config.results_dir / f"{name}.json", json.dumps(to_plain(report), indent=1) + "\n")
    atomic_write_text(config.results_dir / f"{name}.md", markdown(report))
    return report
