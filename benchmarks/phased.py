"""Runs made of phases, raced against a tuned Adam on full-batch photos: the machinery of the improve-ours
experiments (``adam_then_lbfgs``, ``coarse_to_fine``).

A phase trains the same field with one optimizer, for some seconds, on the photo at some size; a variant is a list
of phases run one after the other on one clock. Every variant runs the leaderboard's full regime (4x64 field, full
batch, one thread) on its race photos for the same training-time budget, from the same initial weights. When the
field is compiled, it is compiled for every photo size before the clock starts (one static graph per size, as
``nf-fit --coarse`` compiles it), so no variant pays for a recompile. A phase on a smaller copy of the photo is scored once, at its end, on
the full-size photo: its own PSNR would measure a different signal.

Per photo and variant: PSNR at the end of the budget, and the time and iterations to the baseline's (the first
variant's) final PSNR; speed-up = the baseline's time / the variant's.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import RESULTS, machine_facts, write_results
from benchmarks.leaderboard import PHOTOS, RACE_PHOTOS, REGIMES, base_config, photo
from fitters import metrics
from fitters.bench import RunSpec, run_config
from fitters.build import build_components, build_sampler, loop_options
from fitters.compile import follow_optimizer
from fitters.config import apply_threads, fit_to_signal
from fitters.loop import FitLoop, make_predict
from fitters.signals import Signal
from nf_precond.optim import OPTIMIZERS, build_optimizer


@dataclasses.dataclass(frozen=True)
class Phase:
    optim: str
    lr: float
    seconds: float | None = None
    """Training seconds of this phase; None: what is left of the budget."""
    size: int | None = None
    """Side of the photo this phase fits; None: the race size."""


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    phases: tuple[Phase, ...]
    peer: bool = False
    """A peer optimizer raced beside the idea (``--peers``): compared with it, never judged as part of it."""


def parse_peers(text: str) -> list[Variant]:
    """``"soap@3e-4,muon@9.5e-4"`` -> one single-phase peer variant each (registered optimizers at those lrs)."""
    peers = []
    for item in filter(str.strip, text.split(",")):
        name, _, lr = item.strip().partition("@")
        if name not in OPTIMIZERS:
            raise ValueError(f"--peers: {name!r} is not a registered optimizer; choose from {', '.join(OPTIMIZERS)}")
        try:
            peers.append(Variant(f"{name}@{float(lr):g}", (Phase(name, float(lr)),), peer=True))
        except ValueError:
            raise ValueError(f"--peers: {item!r} is not NAME@LR (for example soap@3e-4)") from None
    return peers


def scored(signal: Signal, predict: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    return {**signal.evaluate(predict), "eval_samples": signal.num_eval_samples}


def fit(name: str, variant: Variant, *, budget: float, size: int, activation: str, compile: bool) -> dict[str, Any]:
    """One run of ``variant`` on photo ``name``: the phases' curves joined into one (each shifted by the time, steps
    and closure evaluations before it), a smaller-size phase collapsed to one record scored on the full photo."""
    signals = {side: photo(name, side) for side in {size, *(phase.size or size for phase in variant.phases)}}
    target = signals[size]
    base = base_config(PHOTOS / name, "full", activation, budget, size)
    first = variant.phases[0]
    config = dataclasses.replace(fit_to_signal(run_config(base, RunSpec(variant.label, first.optim, first.lr)), target),
                                 compile="on" if compile else "off")
    apply_threads(config)
    # The field nf-fit would start from, compiled (before the clock) for every size the phases train on.
    model, _, _ = build_components(config, target, [signal for signal in signals.values() if signal is not target])
    field = getattr(model, "field", model)
    predict = make_predict(model, config.eval_chunk)
    curve: list[dict[str, Any]] = []
    if (variant.phases[0].size or size) != size:  # the initial weights, scored on the photo itself
        curve.append({"step": 0, "time_s": 0.0, "closure_evals": 0, "lr": variant.phases[0].lr, **scored(target, predict)})
    steps, time_s, evals = 0, 0.0, 0
    for phase in variant.phases:
        seconds = budget - time_s if phase.seconds is None else phase.seconds
        if seconds <= 0:
            continue
        signal = signals[phase.size or size]
        options = dataclasses.replace(loop_options(config), time_budget=seconds)
        optimizer = build_optimizer(phase.optim, field, lr=phase.lr)
        follow_optimizer(model, optimizer)  # eager on this phase's curvature steps, not build_components' optimizer's
        outcome = FitLoop(signal, model, optimizer, build_sampler(config, signal), options).run()
        history = outcome.history
        if signal is not target:
            history = [{**history[-1], **scored(target, predict)}]
        start = 1 if curve and history[0]["step"] == 0 else 0  # the next phase's step-0 record repeats the last one
        curve += [{**record, "step": record["step"] + steps, "time_s": record["time_s"] + time_s,
                   "closure_evals": record["closure_evals"] + evals} for record in history[start:]]  # fmt: skip
        steps, time_s, evals = steps + outcome.step, time_s + outcome.time_s, evals + outcome.closure_evals
    return {"steps": steps, "time_s": time_s, "closure_evals": evals, "final_psnr": curve[-1]["psnr"], "curve": curve}


def race(variants: list[Variant], photos: list[str], *, experiment: str, **settings: Any) -> list[dict[str, Any]]:
    """Every variant on every photo (``settings``: ``fit``'s keywords), each run scored against the first variant's
    final PSNR on that photo; a variant's median speed-up counts a photo where it never reaches the target as 0."""
    results = [{"label": variant.label, "phases": [dataclasses.asdict(phase) for phase in variant.phases],
                "peer": variant.peer, "runs": []} for variant in variants]  # fmt: skip
    for name in photos:
        baseline = None
        for variant, result in zip(variants, results):
            print(f"{experiment}: {name} {variant.label}", file=sys.stderr, flush=True)
            run = fit(name, variant, **settings)
            baseline = baseline or run
            target = baseline["final_psnr"]
            reached_s = metrics.first_crossing(run["curve"], "psnr", target, "time_s")
            reached_step = metrics.first_crossing(run["curve"], "psnr", target, "step")
            run.update(photo=name, target_psnr=target,
                       speedup=baseline["time_s"] / reached_s if reached_s else None,
                       iteration_ratio=reached_step / baseline["steps"] if reached_step else None)  # fmt: skip
            result["runs"].append(run)
    for result in results:
        result["median_speedup"] = statistics.median(run["speedup"] or 0.0 for run in result["runs"])
    return results


def verdict(variants: list[dict[str, Any]], reference: str, idea: str) -> str:
    """Keep ``idea`` only if its best variant's median speed-up beats the ``reference`` variant's. The variants
    other than the baseline (the first), the reference and the peers are the idea's; with peers, a second sentence
    says whether ours (the reference or the idea) is ahead of every one of them."""
    by_label = {variant["label"]: variant for variant in variants}
    peers = [variant for variant in variants if variant.get("peer")]
    tried = [variant for variant in variants[1:] if variant["label"] != reference and not variant.get("peer")]
    if reference not in by_label or not tried:
        return f"no {idea} compared with {reference}"
    plain, best = by_label[reference], max(tried, key=lambda variant: variant["median_speedup"])
    if best["median_speedup"] > plain["median_speedup"]:
        judged = f"keep: {best['label']} ({best['median_speedup']:.2f}x) beats {reference} ({plain['median_speedup']:.2f}x)"
    else:
        judged = (f"not kept: no {idea} beats {reference} ({plain['median_speedup']:.2f}x median; best {idea} "
                  f"{best['label']}, {best['median_speedup']:.2f}x)")
    if not peers:
        return judged
    ours = max([plain, best], key=lambda variant: variant["median_speedup"])
    peer = max(peers, key=lambda variant: variant["median_speedup"])
    ahead = "ahead of every peer" if ours["median_speedup"] > peer["median_speedup"] else "NOT ahead of every peer"
    return (f"{judged}. Ours at its best ({ours['label']}, {ours['median_speedup']:.2f}x) is {ahead} "
            f"(best peer {peer['label']}, {peer['median_speedup']:.2f}x)")


def markdown(report: dict[str, Any], title: str, baseline: str) -> str:
    facts = report["machine"]
    field = REGIMES["full"]["field"]
    lines = [
        f"# {title}",
        "",
        f"Race photos {', '.join(report['photos'])} at {report['size']}², {field.layers}x{field.hidden} "
        f"{report['activation']} field, full batch, {report['budget']:g} s of training per run, one thread, "
        f"{'compiled' if report['compile'] else 'eager'}; baseline {baseline}. Speed-up = the baseline's training "
        "time / the variant's time to the baseline's final PSNR ('–': not reached, counted as 0 in the median). "
        f"{facts['cpu']}, torch {facts['torch']}, 1-min load {facts['load_average_1min']}.",
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


def experiment_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every phased experiment takes (it adds its own, then calls ``parse``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--adam-lr", type=float, default=1e-3, help="Adam's lr (the full/sine board's winner)")
    parser.add_argument("--activation", default="sine")
    parser.add_argument("--size", type=int, default=256, help="photo side after resizing")
    parser.add_argument("--compile", default="on", choices=("on", "off"), help="compile the field (before the clock)")
    parser.add_argument("--peers", default="",
                        help="peer optimizers raced beside the idea, NAME@LR,... (their board's sweep winners), e.g. "
                             "soap@3e-4,muon@9.5e-4")
    parser.add_argument("--results-name", help="write benchmarks/results/NAME.{md,json} (default: the experiment's "
                                               "module name), to keep another run's results beside it")
    parser.add_argument("--smoke", action="store_true", help="tiny photos and budget, results to a temporary folder")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, smoke: dict[str, Any]) -> argparse.Namespace:
    """The parsed flags, with ``smoke``'s values in place under --smoke."""
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in smoke.items():
            setattr(args, key, value)
    try:
        args.peers = parse_peers(args.peers)
    except ValueError as error:
        parser.error(str(error))
    return args


def run_experiment(name: str, title: str, args: argparse.Namespace, argv: list[str] | None, variants: list[Variant],
                   idea: str) -> dict[str, Any]:
    """Race ``variants`` and the --peers on the race photos, judge ``idea`` against plain L-BFGS, and write
    ``benchmarks/results/NAME.{md,json}`` (``--results-name`` instead of the module's NAME; a temporary folder under
    --smoke)."""
    variants = [*variants, *args.peers]
    results_name = args.results_name or name
    settings = {"budget": args.budget, "size": args.size, "activation": args.activation, "compile": args.compile == "on"}
    raced = race(variants, list(RACE_PHOTOS), experiment=results_name, **settings)
    command = " ".join([f"python -m benchmarks.{name}", *(argv if argv is not None else sys.argv[1:])])
    report = {"photos": list(RACE_PHOTOS), **settings, "adam_lr": args.adam_lr, "machine": machine_facts(),
              "verdict": verdict(raced, reference="lbfgs", idea=idea), "command": command, "variants": raced}  # fmt: skip
    text = markdown(report, title, f"Adam at lr {args.adam_lr:g}")
    write_results(results_name, report, text,
                  Path(tempfile.mkdtemp(prefix=f"{results_name}-")) if args.smoke else RESULTS)
    print(text)
    return report


__all__ = ["Phase", "Variant", "experiment_parser", "fit", "parse", "parse_peers", "race",
           "run_experiment", "verdict"]
