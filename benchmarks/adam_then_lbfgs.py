"""Improving ours where the leaderboard shows a gap: Adam for the first seconds, then L-BFGS, on full-batch photos.

    python -m benchmarks.adam_then_lbfgs [--switch 0,5,15] [--budget 60] [--activation sine]
    python -m benchmarks.adam_then_lbfgs --smoke     # tiny photos and budget, results to a temporary folder

The full-batch sine board (``leaderboard.md``) has L-BFGS 1.70x sooner than the tuned Adam to Adam's 60-s PSNR, not
the 3x the peer-race issue asks for, with the same step cost: the gap is L-BFGS's iterations, and its first steps
from random weights are the least efficient (the curvature pairs describe a landscape the weights leave fast). The
idea tested here is the common remedy: take Adam's cheap first steps, then switch the same weights to L-BFGS (fresh
history). Every variant runs the leaderboard's full regime (4x64 field, full batch, one thread, compiled as nf-fit
compiles it) on its race photos for the same training-time budget, from the same initial weights:

- ``adam``: Adam at ``--adam-lr`` (the full/sine board's sweep winner) for the whole budget: the baseline;
- ``switch S``: Adam for S seconds, then L-BFGS for the rest (S = 0 is plain L-BFGS).

Reported per photo and variant: PSNR at the end of the budget, and the time and iterations to Adam's final PSNR
(speed-up = Adam's time / the variant's). The switch is kept only if its median speed-up beats plain L-BFGS's.
Results go to ``benchmarks/results/adam_then_lbfgs.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, machine_facts, write_results
from benchmarks.leaderboard import PHOTOS, RACE_PHOTOS, REGIMES, base_config, photo
from fitters import metrics
from fitters.bench import RunSpec, run_config
from fitters.build import build_components, build_sampler, loop_options
from fitters.config import apply_threads, fit_to_signal
from fitters.loop import FitLoop
from fitters.signals import Signal
from nf_precond.nn import CompiledField
from nf_precond.optim import build_optimizer

SMOKE = {"budget": 2.0, "size": 16, "switch": "0,0.5", "compile": "off"}
"""--smoke: a few seconds per run on tiny eager fields."""


def fit(signal: Signal, path: Path, args: argparse.Namespace, switch_s: float | None) -> dict[str, Any]:
    """One run: Adam for ``switch_s`` seconds of training then L-BFGS (``None``: Adam throughout). The curves of the
    two phases are joined, the second shifted by the first's time and steps."""
    budget = args.budget
    base = dataclasses.replace(base_config(path, "full", args.activation, budget, args.size), compile=args.compile)
    adam = fit_to_signal(run_config(base, RunSpec(f"adam@{args.adam_lr:g}", "adam", args.adam_lr)), signal)
    apply_threads(adam)
    model, optimizer, _ = build_components(adam, signal)
    phases = [(optimizer, budget if switch_s is None else switch_s)]
    if switch_s is not None:
        field = model.field if isinstance(model, CompiledField) else model
        phases.append((build_optimizer("lbfgs", field, lr=1.0), budget - switch_s))
    curve: list[dict[str, Any]] = []
    steps, time_s, evals = 0, 0.0, 0
    for optimizer, seconds in phases:
        if seconds <= 0:
            continue
        options = dataclasses.replace(loop_options(adam), time_budget=seconds)
        outcome = FitLoop(signal, model, optimizer, build_sampler(adam, signal), options).run()
        start = 1 if curve else 0  # the next phase's step-0 record repeats the last one
        curve += [{**record, "step": record["step"] + steps, "time_s": record["time_s"] + time_s,
                   "closure_evals": record["closure_evals"] + evals} for record in outcome.history[start:]]  # fmt: skip
        steps, time_s, evals = steps + outcome.step, time_s + outcome.time_s, evals + outcome.closure_evals
    return {"switch_s": switch_s, "steps": steps, "time_s": time_s, "closure_evals": evals,
            "final_psnr": curve[-1]["psnr"], "curve": curve}  # fmt: skip


def label(switch_s: float | None) -> str:
    return "adam" if switch_s is None else ("lbfgs" if switch_s == 0 else f"adam {switch_s:g} s, then lbfgs")


def markdown(report: dict[str, Any]) -> str:
    facts = report["machine"]
    lines = [
        "# Adam first, then L-BFGS (full batch)",
        "",
        f"Race photos {', '.join(report['photos'])} at {report['size']}², {report['field']} {report['activation']} "
        f"field, full batch, {report['budget']:g} s of training per run, one thread; Adam at lr "
        f"{report['adam_lr']:g} (baseline). Speed-up = Adam's training time / the variant's time to Adam's final "
        f"PSNR ('–': not reached, counted as 0 in the median). {facts['cpu']}, torch {facts['torch']}, 1-min load {facts['load_average_1min']}.",
        "",
        "| variant | " + " | ".join(f"{name} PSNR | {name} speed-up | {name} iterations" for name in report["photos"])
        + " | median speed-up |",
        "|---|" + "---|---|---|" * len(report["photos"]) + "---|",
    ]
    for variant in report["variants"]:
        cells = []
        for run in variant["runs"]:
            speed = f"{run['speedup']:.2f}x" if run["speedup"] else "–"
            iterations = f"{run['iteration_ratio']:.2f}x" if run["iteration_ratio"] else "–"
            cells.append(f"{run['final_psnr']:.2f} | {speed} | {iterations}")
        lines.append(f"| {variant['label']} | " + " | ".join(cells) + f" | {variant['median_speedup']:.2f}x |")
    lines += ["", f"Verdict: {report['verdict']}", "", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def verdict(variants: dict[str, dict[str, Any]]) -> str:
    """Keep a switch only if its median speed-up over the photos beats plain L-BFGS's (switch 0)."""
    plain = variants.get(label(0.0))
    switched = [variant for variant in variants.values() if variant["switch_s"]]
    if plain is None or not switched:
        return "no switch compared with plain L-BFGS"
    best = max(switched, key=lambda variant: variant["median_speedup"])
    if best["median_speedup"] > plain["median_speedup"]:
        return f"keep: {best['label']} ({best['median_speedup']:.2f}x) beats plain L-BFGS ({plain['median_speedup']:.2f}x)"
    return (f"not kept: no switch beats plain L-BFGS ({plain['median_speedup']:.2f}x median; best switch "
            f"{best['label']}, {best['median_speedup']:.2f}x)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switch", default="0,5,15", help="seconds of Adam before L-BFGS, comma-separated (0: L-BFGS)")
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--adam-lr", type=float, default=1e-3, help="Adam's lr (the full/sine board's winner)")
    parser.add_argument("--activation", default="sine")
    parser.add_argument("--size", type=int, default=256, help="photo side after resizing")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="as nf-fit --compile")
    parser.add_argument("--smoke", action="store_true", help="tiny photos and budget, results to a temporary folder")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    switches = [float(part) for part in args.switch.split(",") if part.strip()]
    if any(not 0 <= switch < args.budget for switch in switches):
        parser.error(f"--switch: every switch must lie in [0, --budget {args.budget:g})")
    variants = {label(switch): {"label": label(switch), "switch_s": switch, "runs": []} for switch in [None, *switches]}
    for name in RACE_PHOTOS:
        path = PHOTOS / name
        signal = photo(name, args.size)
        baseline = None
        for variant in variants.values():
            print(f"adam_then_lbfgs: {name} {variant['label']}", file=sys.stderr, flush=True)
            run = fit(signal, path, args, variant["switch_s"])
            baseline = baseline or run
            target = baseline["final_psnr"]
            reached_s = metrics.first_crossing(run["curve"], "psnr", target, "time_s")
            reached_step = metrics.first_crossing(run["curve"], "psnr", target, "step")
            run.update(photo=name, target_psnr=target,
                       speedup=baseline["time_s"] / reached_s if reached_s else None,
                       iteration_ratio=reached_step / baseline["steps"] if reached_step else None)  # fmt: skip
            variant["runs"].append(run)
    for variant in variants.values():  # a photo where the target is never reached counts as no speed-up
        variant["median_speedup"] = statistics.median(run["speedup"] or 0.0 for run in variant["runs"])
    report = {
        "photos": list(RACE_PHOTOS), "size": args.size, "field": f"{REGIMES['full']['field'].layers}x{REGIMES['full']['field'].hidden}", "activation": args.activation,
        "budget": args.budget, "adam_lr": args.adam_lr, "machine": machine_facts(), "verdict": verdict(variants),
        "command": " ".join(["python -m benchmarks.adam_then_lbfgs", *(argv if argv is not None else sys.argv[1:])]),
        "variants": list(variants.values()),
    }  # fmt: skip
    results_dir = Path(tempfile.mkdtemp(prefix="adam_then_lbfgs-")) if args.smoke else RESULTS
    write_results("adam_then_lbfgs", report, markdown(report), results_dir)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
