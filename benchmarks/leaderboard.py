"""The optimizer leaderboard: ours and the peers, each at its best-tuned learning rate, on real photos.

``python -m benchmarks.leaderboard`` (``--smoke`` for a seconds-long check that everything runs).

1. **Sweep** (tuning photo only): every optimizer runs at each learning rate of its grid for the budget; the lr
   with the highest PSNR at the end of the budget wins. Line-search and damped methods (L-BFGS, torch's L-BFGS,
   Levenberg–Marquardt) choose their own step, so their "lr" is the initial trial step and is not swept.
2. **Race** (other photos): every optimizer at its winning lr, same budget, same seed and initial weights. The
   baseline is Adam at its best lr: each optimizer's time and iterations to Adam's final PSNR, and its PSNR at
   equal time (Adam's training time).

Regimes: ``full`` (4x64 field, full batch: paper 1's image setting) and ``minibatch`` (4x256 field, batches of
512: paper 2's), each for the activations sine, Gaussian, wavelet and ReLU-PE. Full-batch-only optimizers
(L-BFGS, LM) run only in the full regime. Writes ``benchmarks/results/leaderboard.md/.json``,
``leaderboard_sweep.md/.json`` and a PSNR-vs-time plot per regime and activation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import skimage.data

from benchmarks.common import RESULTS, machine_facts, write_results
from fitters.run_dir import json_text
from fitters import metrics
from fitters.bench import BenchConfig, RunSpec, analyse, fit_one, run_config
from fitters.build import check_fits
from fitters.config import apply_threads, fit_to_signal
from fitters.signals import Signal, SignalOptions, load_signal
from nf_precond.atomic import atomic_path
from nf_precond.nn import FieldConfig
from nf_precond.optim import OPTIMIZERS

PHOTOS = Path(skimage.data.__file__).parent
"""scikit-image's bundled photos (installed with the package, no download)."""
TUNE_PHOTO = "camera.png"
RACE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")
ACTIVATIONS = ("sine", "gauss", "wavelet", "relu-pe")
REGIMES: dict[str, dict[str, Any]] = {
    "full": {"field": FieldConfig(hidden=64, layers=4), "batch_size": 0},
    "minibatch": {"field": FieldConfig(hidden=256, layers=4), "batch_size": 512},
}
LR_GRIDS: dict[str, tuple[float | None, ...]] = {
    "adam": (1e-4, 3e-4, 1e-3, 3e-3),
    "muon": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),  # the sine boards' Muon won at 9.5e-4, below the first grid's end
    "soap": (1e-4, 3e-4, 1e-3, 3e-3),
    "psgd": (1e-4, 3e-4, 1e-3, 3e-3),
    "esgd": (0.05, 0.15, 0.5),
    "lbfgs": (None,),
    "lbfgs-eq": (None,),  # added after the committed boards; equilibrated_lbfgs_gauss_peers.md races it with peers
    "torch-lbfgs": (None,),
    "lm": (None,),
}
"""Learning rates swept per optimizer (None: the registry default, for methods that choose their own step)."""
EDGE_STEPS = 2
"""Half-decade steps a sweep may take past its grid's end (a winner at 3.2e-5 on the mini-batch sine board showed
that one step is not always enough)."""
BASELINE = "adam"
TIE_DB = 0.1
"""Optimizers whose mean PSNR at Adam's time is within this of the winner's share the verdict (run-to-run noise)."""
STEADY_FROM_STEP = 100
"""Step costs are compared from this step on, after ESGD's warm-up (50 steps that each estimate curvature)."""
OURS = ("lbfgs", "lbfgs-eq", "esgd")
"""This project's optimizers in the race; the verdict table names the best of the others beside the winner."""


def photo(name: str, size: int) -> Signal:
    return load_signal(PHOTOS / name, SignalOptions(resize=(size, size)))


def optimizers_for(regime: str) -> list[str]:
    """Every optimizer of the grid that the regime admits (full-batch-only methods need the full batch)."""
    names = [name for name in LR_GRIDS if name in OPTIMIZERS]
    return names if regime == "full" else [name for name in names if not OPTIMIZERS[name].full_batch]


def base_config(path: Path, regime: str, activation: str, budget: float, size: int) -> BenchConfig:
    settings = REGIMES[regime]
    field = dataclasses.replace(settings["field"], activation=activation)
    return BenchConfig(path=path, field=field, batch_size=settings["batch_size"], steps=10**7, time_budget=budget,
                       threads=1, signal=SignalOptions(resize=(size, size)))  # fmt: skip


class FinishedRuns:
    """Runs already finished by an interrupted leaderboard with the same settings, one JSON line each in
    ``.leaderboard_runs.jsonl`` beside the results: a rerun takes them instead of racing them again (one run takes a
    minute, the whole leaderboard hours). The file is removed once the results are written."""

    def __init__(self, results_dir: Path) -> None:
        self.path = results_dir / ".leaderboard_runs.jsonl"
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.runs[entry["key"]] = entry["run"]

    @staticmethod
    def key(base: BenchConfig, label: str) -> str:
        field = base.field
        return json.dumps([base.path.name, field.activation, field.hidden, field.layers, base.batch_size,
                           base.time_budget, list(base.signal.resize or ()), label])  # fmt: skip

    def add(self, key: str, run: dict[str, Any]) -> None:
        self.runs[key] = run
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json_text({"key": key, "run": run}) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def race(signal: Signal, base: BenchConfig, runs: list[tuple[str, float | None]],
         finished: FinishedRuns) -> list[dict[str, Any]]:  # fmt: skip
    """Each (optimizer, lr) on ``signal`` for the budget; a run that diverges is kept with its status."""
    results = []
    for name, lr in runs:
        label = name if lr is None else f"{name}@{lr:g}"
        key = finished.key(base, label)
        if key in finished.runs:
            results.append(finished.runs[key])
            continue
        config = fit_to_signal(run_config(base, RunSpec(label, name, lr)), signal)
        try:
            check_fits(config, signal)
        except ValueError as error:  # e.g. Levenberg–Marquardt on a problem too large for it: recorded, not raced
            results.append({"label": label, "optim": name, "lr": lr, "status": "refused", "reason": str(error)})
            continue
        print(f"leaderboard: {base.path.name} {base.field.activation} {label}", file=sys.stderr, flush=True)
        apply_threads(config)  # one thread per run, as nf-bench does: the machine's load stays below 2
        results.append({"label": label, **fit_one(config, signal, target=None)})
        finished.add(key, results[-1])
    return results


def final_psnr(run: dict[str, Any]) -> float:
    """A sweep run's score: its final PSNR (-inf when it diverged or never measured one)."""
    psnr = run["final"].get("psnr") if run["status"] != "diverged" else None
    return float("-inf") if psnr is None else psnr


def edge_lr(grid: tuple[float | None, ...], winner: float | None) -> float | None:
    """The next lr beyond the grid's end when the winner sits there (×/÷ 3.16, half a decade), else None."""
    if winner is None or len(grid) < 2 or winner not in (min(grid), max(grid)):
        return None
    return winner / 10**0.5 if winner == min(grid) else winner * 10**0.5


def extend_past_edge(runs: list[dict[str, Any]], grid: tuple[float | None, ...],
                     run_at: Callable[[float], dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """``runs`` (one per lr of ``grid``) plus runs half a decade past the grid's end while the best run sits at the
    end of what was tried, at most ``EDGE_STEPS`` of them: no optimizer is judged at an lr its grid merely cut off."""
    tried = tuple(grid)
    for _ in range(EDGE_STEPS):
        beyond = edge_lr(tried, max(runs, key=final_psnr)["lr"])
        if beyond is None:
            break
        runs = [*runs, run_at(beyond)]
        tried += (beyond,)
    return runs


def sweep(args: argparse.Namespace, finished: FinishedRuns) -> dict[str, Any]:
    """Best lr per (regime, activation, optimizer) on the tuning photo (grids extended by ``extend_past_edge``)."""
    signal = photo(TUNE_PHOTO, args.size)
    best: dict[str, Any] = {}
    for regime in args.regimes:
        for activation in args.activations:
            base = base_config(PHOTOS / TUNE_PHOTO, regime, activation, args.budget, args.size)
            runs = race(signal, base, [(name, lr) for name in optimizers_for(regime) for lr in LR_GRIDS[name]],
                        finished)
            table = {}
            for name in optimizers_for(regime):
                mine = [run for run in runs if run["optim"] == name]
                if all(run["status"] == "refused" for run in mine):
                    table[name] = {"lr": None, "psnr": None, "refused": mine[0]["reason"], "tried": {}}
                    continue
                mine = extend_past_edge([run for run in mine if run["status"] != "refused"], LR_GRIDS[name],
                                        lambda lr, name=name: race(signal, base, [(name, lr)], finished)[0])
                winner = max(mine, key=final_psnr)
                score = final_psnr(winner)
                table[name] = {"lr": winner["lr"], "psnr": score if score > float("-inf") else None,
                               "tried": {run["label"]: run["final"].get("psnr") for run in mine}}  # fmt: skip
            best[f"{regime}/{activation}"] = table
    return best


def speedup(run: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """Baseline's training time / this run's time to the baseline's final PSNR (None: never got there)."""
    reached = run["time_to_target_s"]
    return baseline["time_s"] / reached if reached else None


def race_all(args: argparse.Namespace, best: dict[str, Any], finished: FinishedRuns) -> dict[str, Any]:
    boards: dict[str, Any] = {}
    for regime in args.regimes:
        for activation in args.activations:
            key = f"{regime}/{activation}"
            runs_spec = [(BASELINE, best[key][BASELINE]["lr"])] + [
                (name, best[key][name]["lr"]) for name in optimizers_for(regime)
                if name != BASELINE and "refused" not in best[key][name]
            ]
            photos = []
            for name in args.photos:
                signal = photo(name, args.size)
                base = base_config(PHOTOS / name, regime, activation, args.budget, args.size)
                runs = race(signal, base, runs_spec, finished)
                target = runs[0]["final"]["psnr"]
                analyse(runs, "psnr", target)
                equal_time = runs[0]["time_s"]
                for run in runs:
                    run["psnr_at_baseline_time"] = metrics.value_at(run["curve"], "psnr", "time_s", equal_time)
                    run["speedup_vs_baseline"] = speedup(run, runs[0])
                photos.append({"photo": name, "target": target, "runs": runs})
            boards[key] = {"photos": photos, "verdict": verdict(photos)}
            plot(key, photos, args.results_dir)
    return boards


def steady_step_s(run: dict[str, Any]) -> float | None:
    """Seconds per step from the first logged step >= ``STEADY_FROM_STEP`` to the end (None: too few logged)."""
    points = [point for point in run.get("curve", []) if point["step"] >= STEADY_FROM_STEP]
    if len(points) < 2 or points[-1]["step"] == points[0]["step"]:
        return None
    return (points[-1]["time_s"] - points[0]["time_s"]) / (points[-1]["step"] - points[0]["step"])


def verdict(photos: list[dict[str, Any]]) -> dict[str, Any]:
    """The optimizer with the best mean PSNR at the baseline's time; each optimizer's median speed-up, median
    iterations to the baseline's final PSNR as a share of the baseline's iterations (None: not reached on every
    photo), and median step cost after warm-up (``steady_step_s``) relative to the baseline's."""
    names = [run["optim"] for run in photos[0]["runs"]]

    def per_photo(name: str, value: Callable[[dict[str, Any], dict[str, Any]], float | None]) -> list[float | None]:
        return [value(next(r for r in p["runs"] if r["optim"] == name), p["runs"][0]) for p in photos]

    def iterations(run: dict[str, Any], baseline: dict[str, Any]) -> float | None:
        reached = run.get("steps_to_target")
        return reached / baseline["steps"] if reached is not None and baseline["steps"] else None

    def step_cost(run: dict[str, Any], baseline: dict[str, Any]) -> float | None:
        mine, theirs = steady_step_s(run), steady_step_s(baseline)
        return mine / theirs if mine is not None and theirs else None

    mean_psnr, speedups, iteration_shares, step_costs = {}, {}, {}, {}
    for name in names:
        values = per_photo(name, lambda run, _: run.get("psnr_at_baseline_time"))
        mean_psnr[name] = statistics.fmean(values) if all(v is not None for v in values) else None
        values = per_photo(name, lambda run, _: run.get("speedup_vs_baseline"))
        speedups[name] = statistics.median(values) if all(v is not None for v in values) else None
        values = per_photo(name, iterations)
        iteration_shares[name] = statistics.median(values) if all(v is not None for v in values) else None
        values = per_photo(name, step_cost)
        step_costs[name] = statistics.median(values) if all(v is not None for v in values) else None
    winner = max(names, key=lambda name: mean_psnr[name] if mean_psnr[name] is not None else float("-inf"))
    tied = [name for name in names if name != winner and mean_psnr[name] is not None and mean_psnr[winner] is not None
            and mean_psnr[winner] - mean_psnr[name] <= TIE_DB]  # fmt: skip
    return {"winner": winner, "tied": tied, "mean_psnr_at_baseline_time": mean_psnr, "median_speedup": speedups,
            "median_iterations_share": iteration_shares, "median_step_cost": step_costs}  # fmt: skip


def plot(key: str, photos: list[dict[str, Any]], results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(photos), figsize=(5 * len(photos), 4), dpi=110, squeeze=False)
    for axis, entry in zip(axes[0], photos):
        for run in entry["runs"]:
            points = [(r["time_s"], r["psnr"]) for r in run["curve"] if r.get("psnr") is not None]
            axis.plot(*zip(*points), label=run["label"])
        axis.axhline(entry["target"], color="gray", linestyle=":", linewidth=1)
        axis.set_title(f"{key}: {entry['photo']}")
        axis.set_xlabel("training time (s)")
        axis.set_ylabel("PSNR (dB)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(results_dir / f"leaderboard_{key.replace('/', '_')}.png") as temporary:
        figure.savefig(temporary)
    plt.close(figure)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None or value != value else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    facts = report["machine"]
    verdicts = {key: verdict(board["photos"]) for key, board in report["boards"].items()}
    lines = [
        "# Optimizer leaderboard", "",
        f"Photos: tuning `{TUNE_PHOTO}`, race {', '.join(f'`{p}`' for p in report['photos'])} (scikit-image's "
        f"bundled photos, resized to {report['size']}²). Budget {report['budget_s']:.0f} s of training time per run, "
        f"one thread, torch {facts['torch']}; each board gives the machine and 1-min load of its run (ratios are within a board).",
        "Speed-up = best-tuned Adam's training time / the optimizer's time to Adam's final PSNR; iterations = its "
        "iterations to Adam's final PSNR / Adam's iterations (medians over photos; – = not reached on every photo). "
        "PSNR at Adam's time: mean over photos. Step cost = seconds per step from step "
        f"{STEADY_FROM_STEP} to the end / Adam's (median over photos): ESGD's 50 warm-up steps all estimate "
        "curvature, later ones one in 100.", "",
        "| regime / activation | use | its PSNR at Adam's time | Adam's (best lr) | its speed-up | best peer |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key, result in verdicts.items():
        psnr, winner = result["mean_psnr_at_baseline_time"], result["winner"]
        peers = [name for name in psnr if name not in OURS and name != BASELINE and psnr[name] is not None]
        peer = max(peers, key=lambda name: psnr[name]) if peers else None
        gain = result["median_speedup"][winner]
        use = " = ".join(f"**{name}**" for name in [winner, *result["tied"]]) + (" (tie)" if result["tied"] else "")
        lines.append(f"| {key} | {use} | {fmt(psnr[winner])} | {fmt(psnr[BASELINE])} "
                     f"({fmt(report['sweep'][key][BASELINE]['lr'], 'g')}) | {fmt(gain) + 'x' if gain else '–'} | "
                     + (f"{peer} ({fmt(psnr[peer])})" if peer else "–") + " |")  # fmt: skip
    lines.append("")
    for key, board in report["boards"].items():
        sweep_row, result = report["sweep"][key], verdicts[key]
        load = board["machine"]["load_average_1min"]
        busy = "" if board["machine"]["quiet"] else " (**busy machine: not evidence**)"
        lines += [f"## {key}", "", f"Machine: {board['machine']['cpu']}, 1-min load {load}{busy}.", "",
                  "| optimizer | best lr | mean PSNR at Adam's time | median speed-up | median iterations | "
                  f"step cost from step {STEADY_FROM_STEP} |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, psnr in result["mean_psnr_at_baseline_time"].items():
            gain, share = result["median_speedup"][name], result["median_iterations_share"][name]
            cost = result["median_step_cost"][name]
            lines.append(f"| {name} | {fmt(sweep_row[name]['lr'], 'g')} | {fmt(psnr)} | "
                         f"{fmt(gain) + 'x' if gain else '–'} | {fmt(share) + 'x' if share else '–'} | "
                         f"{fmt(cost) + 'x' if cost else '–'} |")  # fmt: skip
        tie = f" (within {TIE_DB:g} dB: {', '.join(result['tied'])})" if result["tied"] else ""
        lines += ["", f"Verdict: **{result['winner']}**{tie}", "", "Sweep on the tuning photo (final PSNR per lr):", ""]
        for name, entry in sweep_row.items():
            tried = ", ".join(f"{label} {fmt(value)}" for label, value in entry["tried"].items())
            lines.append(f"- {name}: " + (f"refused ({entry['refused']})" if "refused" in entry else tried))
        lines.append("")
    return "\n".join(lines)


def merged(previous_path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` plus the boards of an earlier run with the same budget, size and photos that this run did not redo.

    The whole leaderboard takes hours on a 2-core CPU, so it runs regime by regime and activation by activation
    (``--regimes``/``--activations``); each board keeps the machine facts of the run that produced it.
    """
    for board in report["boards"].values():
        board["machine"] = report["machine"]
    if not previous_path.exists():
        return report
    previous = json.loads(previous_path.read_text())
    if any(previous.get(key) != report[key] for key in ("budget_s", "size", "photos")):
        return report
    boards = {key: board for key, board in previous["boards"].items() if key not in report["boards"]}
    sweep_rows = {key: row for key, row in previous["sweep"].items() if key not in report["sweep"]}
    return {**report, "sweep": {**sweep_rows, **report["sweep"]}, "boards": {**boards, **report["boards"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run (default 60)")
    parser.add_argument("--size", type=int, default=256, help="photos are resized to SIZE x SIZE (default 256)")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=list(ACTIVATIONS))
    parser.add_argument("--photos", nargs="+", default=list(RACE_PHOTOS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run that checks the pipeline")
    parser.add_argument("--rewrite", action="store_true", help="only re-render leaderboard.md from leaderboard.json")
    args = parser.parse_args(argv)
    if args.rewrite:
        report = json.loads((args.results_dir / "leaderboard.json").read_text())
        for board in report["boards"].values():
            board["verdict"] = verdict(board["photos"])
        write_results("leaderboard", report, markdown(report), args.results_dir)
        return 0
    if args.smoke:
        args.budget, args.size, args.activations, args.photos = 1.0, 32, ["sine"], args.photos[:1]
    finished = FinishedRuns(args.results_dir)
    best = sweep(args, finished)
    boards = race_all(args, best, finished)
    report = {"budget_s": args.budget, "size": args.size, "photos": args.photos, "machine": machine_facts(),
              "sweep": best, "boards": boards}  # fmt: skip
    name = "leaderboard_smoke" if args.smoke else "leaderboard"
    report = merged(args.results_dir / f"{name}.json", report)
    write_results(name, report, markdown(report), args.results_dir)
    finished.clear()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
