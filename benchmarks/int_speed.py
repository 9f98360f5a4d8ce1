"""INT (paper 3) against no INT, scaled down to a shared 2-core CPU: wall time to the same number of steps, final
quality, and what one reselection costs.

    python -m benchmarks.int_speed image        # also: audio, megapixel, occupancy (Adam with / without INT)
    python -m benchmarks.int_speed table1       # the ratio x interval grid of Table 1 on two real photos
    python -m benchmarks.int_speed optimizers   # INT + ESGD and INT + L-BFGS (reset / keep history) vs each alone

Each case writes ``benchmarks/results/int_<case>.{md,json}`` and ``int_<case>_<signal>.png`` (metric vs time).

How it is scaled from the paper (5000-10000 steps of 256-512-wide SIRENs on a GPU): 4x64 sine fields (audio 4x128),
signals of 12k-218k samples (several times the field's 13k parameters, as in the paper: a small field that
cannot memorize its signal), 50-500 steps, one torch thread per run (runs are sequential in one process, so machine noise
hits every row alike; compare ratios, not seconds). The interval schedule keeps the paper's shape relative to the
run: 10 stages, and the largest interval scaled by steps/5000 (90 at 5000 steps), so a
run reselects about as often per stage as the paper's. Every fit is full-signal: INT ranks and trains on a subset
of all samples; the baseline trains on all samples every step. Times are training time (evaluation excluded,
selection included). "Overhead" is the mean time of one reselection (error pass over every sample + top-k) over the
mean time of one full-signal training step of the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fitters.build import build_components, loop_options
from fitters.config import FitConfig, resolve, with_log_interval
from fitters.loop import FitLoop
from fitters.run_dir import to_plain
from nf_precond.atomic import atomic_path, atomic_write_text
from fitters.signals import Signal, SignalOptions
from fitters.signals import load_signal

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"
PAPER_STEPS, PAPER_MAX_INTERVAL = 5000, 90
GOAL_TIME_SAVED, GOAL_PSNR_LOSS_DB, GOAL_IOU_LOSS = 0.40, 0.3, 0.005


@dataclass
class Run:
    """One fit of a case: its label and the nf-fit settings that differ from the case's."""

    label: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """One signal and the runs compared on it; the first run is the baseline the ratios refer to."""

    name: str
    path: Path
    base: dict[str, Any]
    runs: list[Run]
    signal: SignalOptions = field(default_factory=SignalOptions)


def int_settings(steps: int, ratio: str = "step", interval: str = "incremental", max_interval: int | None = None) -> dict:
    settings: dict[str, Any] = {"sampler": "int", "int_ratio": ratio, "int_interval": interval}
    if interval != "dense":
        settings["int_max_interval"] = max_interval or max(1, round(PAPER_MAX_INTERVAL * steps / PAPER_STEPS))
    return settings


def sine_field(steps: int, lr: float, omega0: tuple[float, ...] = (30.0,), hidden: int = 64, optim: str = "adam") -> dict:
    """Paper 3 trains with Adam and a cosine-annealed lr (to 1e-6); ESGD and L-BFGS keep theirs constant."""
    schedule = {"lr_schedule": "cosine", "lr_min": 1e-6} if optim == "adam" else {}
    return {"optim": optim, "field": {"activation": "sine", "hidden": hidden, "layers": 4, "omega0": omega0}, "lr": lr, "steps": steps,
            "log_every": max(1, steps // 20), "threads": 1, "sampler": "full", **schedule}


def photo(name: str) -> Path:
    return SKIMAGE_DATA / name


def image_cases() -> list[Case]:
    steps = 500
    return [Case("image", photo("coffee.png"), sine_field(steps, 1e-3),
                 [Run("no INT"), Run("INT step-incremental", int_settings(steps))], SignalOptions(resize=(96, 144)))]


def audio_cases() -> list[Case]:
    steps = 300
    return [Case("audio", REPO / "tests/data/front_center.wav", sine_field(steps, 1e-4, (3000.0, 30.0, 30.0, 30.0), 128),
                 [Run("no INT"), Run("INT step-incremental", int_settings(steps))])]


def megapixel_cases() -> list[Case]:
    # The paper's megapixel interval rises to 10 over 64k steps: at 50 steps that is an interval of 1 (dense).
    steps = 50
    return [Case("megapixel", photo("hubble_deep_field.jpg"), sine_field(steps, 1e-3),
                 [Run("no INT"), Run("INT step-dense", int_settings(steps, interval="dense"))],
                 SignalOptions(resize=(436, 500)))]


def occupancy_cases() -> list[Case]:
    steps = 300
    return [Case("occupancy", REPO / "tests/data/bone.ply", sine_field(steps, 1e-3),
                 [Run("no INT"), Run("INT step-incremental", int_settings(steps))], SignalOptions(num_points=50_000))]


TABLE1_ROWS = [("cosine", "dense"), ("cosine", "incremental"), ("rcosine", "dense"), ("rcosine", "decremental"),
               ("step", "dense"), ("step", "incremental")]


def table1_cases() -> list[Case]:
    steps = 200
    runs = [Run("no INT")] + [Run(f"{ratio} / {interval}", int_settings(steps, ratio, interval)) for ratio, interval in TABLE1_ROWS]
    return [
        Case("camera", photo("camera.png"), sine_field(steps, 1e-3), runs, SignalOptions(resize=(128, 128))),
        Case("chelsea", photo("chelsea.png"), sine_field(steps, 1e-3), runs, SignalOptions(resize=(96, 144))),
    ]


def optimizer_cases() -> list[Case]:
    first_order_steps, lbfgs_steps = 300, 150
    path, options = photo("coffee.png"), SignalOptions(resize=(96, 144))
    return [
        Case("image-adam", path, sine_field(first_order_steps, 1e-3),
             [Run("Adam"), Run("Adam + INT", int_settings(first_order_steps))], options),
        Case("image-esgd", path, sine_field(first_order_steps, 0.15, optim="esgd"),
             [Run("ESGD"), Run("ESGD + INT", int_settings(first_order_steps))], options),
        Case("image-lbfgs", path, sine_field(lbfgs_steps, 1.0, optim="lbfgs"),
             [Run("L-BFGS"),
              Run("L-BFGS + INT, reset history", {**int_settings(lbfgs_steps), "lbfgs_on_reselect": "reset"}),
              Run("L-BFGS + INT, keep history", {**int_settings(lbfgs_steps), "lbfgs_on_reselect": "keep"})],
             options),
    ]


CASES = {"image": image_cases, "audio": audio_cases, "megapixel": megapixel_cases, "occupancy": occupancy_cases,
         "table1": table1_cases, "optimizers": optimizer_cases}


def fit(case: Case, run: Run, signal: Signal) -> dict[str, Any]:
    settings = {**case.base, **run.settings}
    config = resolve(FitConfig(path=case.path, out=Path("unused"), signal=case.signal, **settings))
    config = with_log_interval(config, signal.num_samples)
    torch.set_num_threads(config.threads)
    model, optimizer, sampler = build_components(config, signal)
    outcome = FitLoop(signal, model, optimizer, sampler, loop_options(config)).run()
    totals = sampler.stats()  # INT's running totals; the baseline's full batch reports none
    return {
        "label": run.label,
        "settings": to_plain(settings),
        "steps": outcome.step,
        "status": outcome.status,
        "time_s": outcome.time_s,
        "ms_per_step": 1000 * outcome.time_s / max(outcome.step, 1),
        "closure_evals_per_step": outcome.closure_evals / max(outcome.step, 1),
        "final": outcome.final_metrics,
        "reselections": totals.get("int_reselections", 0),
        "select_s": totals.get("int_select_total_s", 0.0),
        "curve": [{k: r[k] for k in ("step", "time_s", signal.metric) if k in r} for r in outcome.history],
    }


def averaged(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The first repeat's fit (same seed: same curve and metric) with the mean training and selection time."""
    run = dict(repeats[0])
    run["time_s_repeats"] = [r["time_s"] for r in repeats]
    run["time_s"] = statistics.mean(run["time_s_repeats"])
    run["select_s"] = statistics.mean(r["select_s"] for r in repeats)
    run["ms_per_step"] = 1000 * run["time_s"] / max(run["steps"], 1)
    return run


def analyse(runs: list[dict[str, Any]], metric: str) -> None:
    """Ratios to the first run (the baseline), the selection overhead, and whether the issue's goal is met."""
    base = runs[0]
    full_step_s = base["time_s"] / max(base["steps"], 1)
    tolerance = GOAL_PSNR_LOSS_DB if metric == "psnr" else GOAL_IOU_LOSS
    for run in runs:
        run["time_ratio"] = run["time_s"] / base["time_s"]
        run["time_saved"] = 1 - run["time_ratio"]
        run["metric_change"] = run["final"][metric] - base["final"][metric]
        per_reselection = run["select_s"] / run["reselections"] if run["reselections"] else None
        run["select_ms_per_reselection"] = None if per_reselection is None else 1000 * per_reselection
        run["overhead_per_reselection"] = None if per_reselection is None else per_reselection / full_step_s
        run["selection_share_of_time"] = run["select_s"] / run["time_s"] if run["time_s"] else None
        run["meets_goal"] = run["time_saved"] >= GOAL_TIME_SAVED and run["metric_change"] >= -tolerance


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(result: dict[str, Any]) -> list[str]:
    metric = result["metric"]
    unit = "dB" if metric == "psnr" else ""
    lines = [
        f"### {result['case']}: `{result['path']}` ({result['samples']} samples)",
        "",
        f"| run | steps | time s | time vs first | final {metric} | Δ{metric} {unit} | reselections | ms per reselection "
        "| reselection / full step | selection share of time | closure evals/step | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['label']} | {run['steps']} | {run['time_s']:.1f} | {run['time_ratio']:.2f} "
            f"({-100 * run['time_saved']:+.0f} %) | {run['final'][result['metric']]:.3f} | {run['metric_change']:+.3f} | "
            f"{run['reselections']} | {_fmt(run['select_ms_per_reselection'], '.1f')} | "
            f"{_fmt(run['overhead_per_reselection'], '.2f')} | {_fmt(run['selection_share_of_time'], '.1%')} | "
            f"{run['closure_evals_per_step']:.2f} | {'yes' if run['meets_goal'] else 'no'} |"
        )
    return lines + [""]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=110)
    for run in result["runs"]:
        points = [(r["time_s"], r[result["metric"]]) for r in run["curve"] if r.get(result["metric"]) is not None]
        axes.plot(*zip(*points), label=run["label"])
    axes.set_xlabel("training time (s)")
    axes.set_ylabel(result["metric"].upper())
    axes.set_title(f"INT: {result['case']}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def table1_summary(results: list[dict[str, Any]]) -> list[str]:
    """Mean over the photos per strategy, the layout of the paper's Table 1."""
    lines = ["### Mean over the photos (paper's Table 1 layout)", "",
             "| ratio / interval | time vs no INT | PSNR dB (mean) | ΔPSNR dB |", "|---|---|---|---|"]
    for index, run in enumerate(results[0]["runs"]):
        rows = [result["runs"][index] for result in results]
        lines.append(
            f"| {run['label']} | {statistics.mean(r['time_ratio'] for r in rows):.2f} | "
            f"{statistics.mean(r['final']['psnr'] for r in rows):.2f} | "
            f"{statistics.mean(r['metric_change'] for r in rows):+.2f} |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=2,
                        help="run the list forwards, then backwards, ...; times are averaged (load drift hits all runs)")
    args = parser.parse_args()
    results = []
    for case in CASES[args.case]():
        signal = load_signal(case.path, case.signal)
        print(f"int_speed {args.case}: {case.name} ({signal.num_samples} samples)", flush=True)
        repeats: dict[str, list[dict[str, Any]]] = {run.label: [] for run in case.runs}
        for repeat in range(args.repeats):
            for run in case.runs if repeat % 2 == 0 else reversed(case.runs):
                repeats[run.label].append(fit(case, run, signal))
                print(f"  {run.label}: {repeats[run.label][-1]['time_s']:.1f} s, "
                      f"{signal.metric} {repeats[run.label][-1]['final'][signal.metric]:.3f}", flush=True)
        runs = [averaged(repeats[run.label]) for run in case.runs]
        analyse(runs, signal.metric)
        result = {"case": case.name, "path": str(case.path.relative_to(REPO) if case.path.is_relative_to(REPO)
                  else f"$SKIMAGE_DATA/{case.path.name}"), "samples": signal.num_samples, "metric": signal.metric,
                  "signal_options": to_plain(case.signal.__dict__), "runs": runs}
        plot(result, RESULTS / f"int_{args.case}_{case.name}.png")
        results.append(result)
    # Machine facts, not the host name: what the numbers depend on, read after the runs.
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "load_average_1min": round(os.getloadavg()[0], 1)}  # fmt: skip
    lines = [f"# INT benchmark: {args.case}", "",
             f"`python -m benchmarks.int_speed {args.case}` on {info['cpu']} ({info['cores']} cores, load average "
             f"{info['load_average_1min']}, torch {info['torch']}, "
             f"1 thread per run, runs sequential in one process, {args.repeats} repeats in alternating order with "
             "times averaged). Goal (issue 6): >= 40 % less time at <= 0.3 dB "
             "PSNR (<= 0.5 % IoU) loss. Scaling and column meanings: see the module docstring.", ""]
    for result in results:
        lines += table(result)
    if args.case == "table1":
        lines += table1_summary(results)
    report = {"case": args.case, "torch": torch.__version__, "machine": info, "results": results}
    atomic_write_text(RESULTS / f"int_{args.case}.json", json.dumps(to_plain(report), indent=1) + "\n")
    atomic_write_text(RESULTS / f"int_{args.case}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
