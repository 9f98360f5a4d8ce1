"""Generate ``REPRODUCTION.md``: every claim of the three papers beside what was measured here.

``python -m benchmarks.reproduction`` reads every ``benchmarks/results/*.json``, checks each against the shape its
writer produces (``READERS``: one reader per known file name pattern), and writes one table row per claim: the
paper's figure, the figure measured here (computed from the results, never typed in), their ratio, whether it
reproduced, the command that reproduces it and a link to its plot. A claim whose results file does not exist yet
says "not built/measured yet". An unknown or malformed results file stops the generator with one line naming the
file and the fix, so REPRODUCTION.md can never silently drift from the measurements.

Rule for "reproduced": a speed-up or saving claim reproduces when the measured figure is at least
``REPRODUCED_FRACTION`` of the paper's and points the same way (a scaled-down CPU run cannot match the paper's
absolute numbers); a qualitative claim (e.g. "no zero eigenvalues") reproduces when every measured case agrees.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitters.metrics import first_crossing
from nf_precond.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
OUTPUT = ROOT / "REPRODUCTION.md"
REPRODUCED_FRACTION = 0.5
NOT_YET = "not built/measured yet"

Results = dict[str, Any]


class ResultsError(ValueError):
    """A results file is unknown or does not have the shape its writer produces."""


# ---------------------------------------------------------------------------------------------------------------
# Readers: one per known results file pattern. Each checks the keys the claims use and fails with the fix.
# ---------------------------------------------------------------------------------------------------------------


def require(data: Any, path: str, kind: type | tuple[type, ...], file: str) -> Any:
    """``data`` at the dotted ``path`` (``runs.0.final``), checked to be of ``kind``; ResultsError otherwise."""
    value = data
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise ResultsError(f"{file}: missing '{path}'; the file is malformed, rerun the command that writes it")
    if isinstance(value, bool) or not isinstance(value, kind):  # JSON true/false is never a number here
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ResultsError(f"{file}: '{path}' should be a {names}, got {type(value).__name__}; rerun its command")
    return value


NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))


def read_nf_bench(data: Results, file: str) -> Results:
    """``nf-bench`` reports (fitters/bench.py): image_*, audio_*, video_*, occupancy_*, kilo_*."""
    for key, kind in (("name", str), ("metric", str), ("target", NUMBER), ("command", str), ("plots", list)):
        require(data, key, kind, file)
    runs = require(data, "runs", list, file)
    if not runs:
        raise ResultsError(f"{file}: 'runs' is empty; rerun its nf-bench command")
    for index in range(len(runs)):
        for key, kind in (("label", str), ("optim", str), ("time_s", NUMBER), ("steps", int), ("curve", list),
                          ("ms_per_step", NUMBER), ("final", dict)):  # fmt: skip
            require(data, f"runs.{index}.{key}", kind, file)
        require(data, f"runs.{index}.final.{data['metric']}", NUMBER, file)
    return data


def read_curvature(data: Results, file: str) -> Results:
    """``nf-curvature`` reports (fitters/curvature.py)."""
    require(data, "command", str, file)
    require(data, "plot", str, file)
    networks = require(data, "networks", list, file)
    for index in range(len(networks)):
        for key, kind in (("activation", str), ("layers", int), ("hidden", int), ("init", str)):
            require(data, f"networks.{index}.{key}", kind, file)
        for key in ("zero_fraction", "smallest_abs", "hvp_sparsity"):
            require(data, f"networks.{index}.summary.{key}", NUMBER, file)
    return data


def read_int_speed(data: Results, file: str) -> Results:
    """``python -m benchmarks.int_speed CASE`` reports: int_image, int_audio, ..., int_table1, int_optimizers."""
    require(data, "case", str, file)
    results = require(data, "results", list, file)
    for r in range(len(results)):
        require(data, f"results.{r}.case", str, file)
        require(data, f"results.{r}.metric", str, file)
        runs = require(data, f"results.{r}.runs", list, file)
        for index in range(len(runs)):
            for key, kind in (("label", str), ("time_s", NUMBER), ("time_saved", NUMBER), ("metric_change", NUMBER)):
                require(data, f"results.{r}.runs.{index}.{key}", kind, file)
    return data


def read_kilo_bench(data: Results, file: str) -> Results:
    """``python -m benchmarks.kilo_bench image|video`` reports: per optimizer run, time to target and speed-up."""
    require(data, "setup", str, file)
    rows = require(data, "rows", dict, file)
    if "lbfgs" not in rows:
        raise ResultsError(f"{file}: no 'lbfgs' row; rerun python -m benchmarks.kilo_bench")
    for label in rows:
        require(data, f"rows.{label}.final_psnr", NUMBER, file)
        require(data, f"rows.{label}.time_to_target_s", OPTIONAL_NUMBER, file)
    return data


def read_nerf_bench(data: Results, file: str) -> Results:
    """``python -m benchmarks.nerf_bench`` reports."""
    require(data, "settings", dict, file)
    rows = require(data, "comparisons", list, file)
    for index in range(len(rows)):
        for key, kind in (("method", str), ("baseline", str), ("iteration_ratio", OPTIONAL_NUMBER),
                          ("time_ratio", OPTIONAL_NUMBER), ("target_train_psnr", NUMBER)):  # fmt: skip
            require(data, f"comparisons.{index}.{key}", kind, file)
    return data


def shallow(*keys: str) -> Callable[[Results, str], Results]:
    """Files no claim row reads (listed under "Other measurements"): only their top-level keys are checked."""

    def read(data: Results, file: str) -> Results:
        for key in keys:
            require(data, key, (dict, list, str, int, float), file)
        return data

    return read


READERS: tuple[tuple[str, Callable[[Results, str], Results]], ...] = (
    ("curvature_*", read_curvature),
    ("int_*", read_int_speed),
    ("nerf_*", read_nerf_bench),
    ("image_*", read_nf_bench),
    ("audio_*", read_nf_bench),
    ("video_*", read_nf_bench),
    ("occupancy_*", read_nf_bench),
    ("kilo_image*", read_kilo_bench),
    ("kilo_video", read_kilo_bench),
    ("kilo_loop", shallow("machine", "rows")),
    ("kilo_profile", shallow("machine", "rows")),
    ("kilo_memory*", shallow("machine", "rows")),
    ("batched_mlp", shallow()),
    ("viewer_overhead", shallow("setup", "summary")),
    ("lbfgs_vs_torch", shallow("meta", "rows")),
    ("esgd_variants", shallow("config", "results")),
    ("optimizer_cost", shallow("setup", "rows")),
    ("roofline*", shallow("machine", "rows")),
    ("bare_commands", shallow("machine", "runs", "targets")),
    ("many_fields", shallow("machine", "runs")),
    ("leaderboard*", shallow("machine", "sweep", "boards")),
    ("adam_then_lbfgs", shallow("machine", "variants", "verdict")),
    ("coarse_to_fine*", shallow("machine", "variants", "verdict")),
    ("equilibrated_lbfgs*", shallow("machine", "variants", "verdict")),
    ("gpu_suite", shallow("machine", "steps")),
)


def load_results(results_dir: Path) -> dict[str, Results]:
    """Every ``*.json`` in ``results_dir`` by stem, each validated by its reader."""
    loaded = {}
    for path in sorted(results_dir.glob("*.json")):
        file = str(path.relative_to(results_dir.parent.parent) if path.is_relative_to(results_dir.parent.parent) else path)
        reader = next((read for pattern, read in READERS if fnmatch.fnmatchcase(path.stem, pattern)), None)
        if reader is None:
            known = ", ".join(pattern for pattern, _ in READERS)
            raise ResultsError(f"{file}: no reader for this results file (known: {known}); add one to READERS in "
                               "benchmarks/reproduction.py or move the file out of benchmarks/results")  # fmt: skip
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ResultsError(f"{file}: not valid JSON ({error}); rerun the command that writes it") from error
        if not isinstance(data, dict):
            raise ResultsError(f"{file}: expected a JSON object at the top level; rerun the command that writes it")
        loaded[path.stem] = reader(data, file)
    return loaded


# ---------------------------------------------------------------------------------------------------------------
# Claims: the papers' figures (typed from the papers) and how to measure each from the results.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    measured: str
    """The figure measured here, as text with its numbers."""
    ratio: float | None
    """Measured / paper for the headline number (None when the paper gives no number)."""
    reproduced: bool
    plots: tuple[str, ...] = ()
    """File names in benchmarks/results/."""
    command: str | None = None
    """The exact command recorded in the results, when the file records one."""


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    claim: str
    paper_figure: str
    sources: tuple[str, ...]
    """Results stems (fnmatch patterns) this claim reads; the first pattern that matches a file is used."""
    command: str
    """How to produce the results (shown when the file does not record its own command)."""
    measure: Callable[[Results, str], Measurement]
    reason: str = ""
    """The most likely reason when it does not reproduce (judged from the setup, not from the numbers)."""


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _time_change(saved: float) -> str:
    return f"{_percent(saved)} less time" if saved >= 0 else f"{_percent(-saved)} more time"


def _speedup_to_baseline_quality(report: Results, method: str, baseline: str) -> tuple[float | None, float]:
    """(method's speed-up to the baseline's final metric, that metric): the baseline's time to reach its own final
    metric over the method's time to reach it, from the logged curves (None: the method never reached it)."""
    metric = report["metric"]
    runs = {run["label"]: run for run in report["runs"]}
    target = runs[baseline]["final"][metric]
    base_time = first_crossing(runs[baseline]["curve"], metric, target, "time_s")
    method_time = first_crossing(runs[method]["curve"], metric, target, "time_s")
    if method_time is None or not base_time:
        return None, target
    return base_time / max(method_time, 1e-9), target


def _labels(report: Results, optim: str) -> list[str]:
    return [run["label"] for run in report["runs"] if run["optim"] == optim]


def lbfgs_vs_adam(paper_speedup: float | None) -> Callable[[Results, str], Measurement]:
    """L-BFGS's speed-up to each Adam run's final metric (nf-bench report); the headline is vs the best Adam.
    Without a paper figure (None) the claim is only that L-BFGS is faster."""

    def measure(report: Results, file: str) -> Measurement:
        lbfgs = _labels(report, "lbfgs")
        adams = _labels(report, "adam")
        if not lbfgs or not adams:
            raise ResultsError(f"{file}: needs an lbfgs run and an adam run; rerun with --optims adam,lbfgs")
        metric = report["metric"]
        finals = {run["label"]: run["final"][metric] for run in report["runs"]}
        best_adam = max(adams, key=lambda label: finals[label])
        parts, headline = [], None
        for adam in adams:
            speedup, target = _speedup_to_baseline_quality(report, lbfgs[0], adam)
            text = f"{speedup:.2f}x" if speedup is not None else "never reached"
            parts.append(f"vs {adam}: {text} to its {target:.2f} {metric}")
            if adam == best_adam:
                headline = speedup
        measured = f"L-BFGS {'; '.join(parts)} (final {metric}: " + ", ".join(
            f"{label} {finals[label]:.2f}" for label in finals
        ) + ")"
        ratio = None if headline is None or paper_speedup is None else headline / paper_speedup
        reproduced = headline is not None and headline > 1 and (ratio is None or ratio >= REPRODUCED_FRACTION)
        return Measurement(measured, ratio, reproduced, tuple(report["plots"]), report["command"])

    return measure


SMOOTH_ACTIVATIONS, RELU_ACTIVATIONS = ("sine", "gauss"), ("relu", "relu-pe")
MUCH_FASTER = 2.0
"""What "converge significantly faster" is taken to mean: at least this speed-up."""


def activations_under_lbfgs(report: Results, file: str) -> Measurement:
    """Supp. Fig. 6: under L-BFGS, sine and Gaussian fields converge much faster than ReLU and ReLU-PE. Measured as
    each smooth field's speed-up to the best ReLU-family field's final metric (equal time budgets, one nf-bench run)."""
    metric = report["metric"]
    runs = {run.get("act"): run for run in report["runs"] if run["optim"] == "lbfgs"}
    if not set(SMOOTH_ACTIVATIONS + RELU_ACTIVATIONS) <= set(runs):
        raise ResultsError(f"{file}: needs an lbfgs run per activation; rerun with "
                           "--optims lbfgs:sine,lbfgs:gauss,lbfgs:relu,lbfgs:relu-pe")  # fmt: skip
    finals = {act: run["final"][metric] for act, run in runs.items()}
    best_relu = max(RELU_ACTIVATIONS, key=lambda act: finals[act])
    target = finals[best_relu]
    relu_time = first_crossing(runs[best_relu]["curve"], metric, target, "time_s")
    parts, speedups = [], []
    for act in SMOOTH_ACTIVATIONS:
        reached = first_crossing(runs[act]["curve"], metric, target, "time_s")
        speedup = relu_time / max(reached, 1e-9) if reached is not None and relu_time else None
        speedups.append(speedup)
        parts.append(f"{act} {speedup:.1f}x faster" if speedup is not None else f"{act} never reached it")
    measured = (f"to {best_relu}'s final {target:.2f} {metric}: {', '.join(parts)} (final {metric} at equal time: "
                + ", ".join(f"{act} {finals[act]:.2f}" for act in SMOOTH_ACTIVATIONS + RELU_ACTIVATIONS) + ")")  # fmt: skip
    reproduced = all(speedup is not None and speedup >= MUCH_FASTER for speedup in speedups)
    return Measurement(measured, None, reproduced, tuple(report["plots"]), report["command"])


def kilo_vs_adam(paper_speedup: float) -> Callable[[Results, str], Measurement]:
    """Batched L-BFGS's speed-up to the target over each Adam run (kilo_bench report); headline vs the best Adam."""

    def measure(report: Results, file: str) -> Measurement:
        rows = report["rows"]
        adams = [label for label in rows if label.startswith("adam")]
        if not adams:
            raise ResultsError(f"{file}: needs an adam row; rerun python -m benchmarks.kilo_bench")
        lbfgs_time = rows["lbfgs"]["time_to_target_s"]
        finals = ", ".join(f"{label} {row['final_psnr']:.2f}" for label, row in rows.items())
        if lbfgs_time is None:
            return Measurement(f"L-BFGS did not reach the target within the budget (final psnr at equal time: {finals})",
                               None, False)  # fmt: skip
        best_adam = max(adams, key=lambda label: rows[label]["final_psnr"])
        parts, headline = [], None
        for adam in adams:
            adam_time = rows[adam]["time_to_target_s"]
            if adam_time is None:
                speedup = None
                text = f"> {rows[adam]['final_time_s'] / lbfgs_time:.1f}x ({adam} never reached the target)"
            else:
                speedup = adam_time / lbfgs_time
                text = f"{speedup:.2f}x vs {adam}"
            parts.append(text)
            if adam == best_adam:
                headline = speedup
        measured = f"time to target: {'; '.join(parts)} (final psnr: {finals})"
        ratio = None if headline is None else headline / paper_speedup
        reproduced = ratio is not None and ratio >= REPRODUCED_FRACTION
        return Measurement(measured, ratio, reproduced)

    return measure


def esgd_vs_adam(paper_iteration_ratio: float | None) -> Callable[[Results, str], Measurement]:
    """ESGD's iterations to Adam's final metric as a fraction of Adam's, and its per-step cost (nf-bench report)."""

    def measure(report: Results, file: str) -> Measurement:
        adams, esgds = _labels(report, "adam"), _labels(report, "esgd") + _labels(report, "esgd-max")
        if not adams or not esgds:
            raise ResultsError(f"{file}: needs an adam run and an esgd run; rerun with --optims adam,esgd")
        metric = report["metric"]
        runs = {run["label"]: run for run in report["runs"]}
        adam = runs[adams[0]]
        target = adam["final"][metric]
        adam_steps = first_crossing(adam["curve"], metric, target, "step")
        parts, headline = [], None
        for label in esgds:
            steps = first_crossing(runs[label]["curve"], metric, target, "step")
            fraction = None if steps is None or not adam_steps else steps / adam_steps
            cost = runs[label]["ms_per_step"] / adam["ms_per_step"]
            reached = f"{fraction:.2f}x Adam's iterations" if fraction is not None else "never reached"
            parts.append(f"{label}: {reached} to Adam's {target:.2f} {metric}, {cost:.2f}x Adam's time/step, "
                         f"final {runs[label]['final'][metric]:.2f}")  # fmt: skip
            headline = fraction if headline is None else headline
        ratio = None if headline is None or paper_iteration_ratio is None else headline / paper_iteration_ratio
        reproduced = headline is not None and headline < 1
        return Measurement("; ".join(parts), ratio, reproduced, tuple(report["plots"]), report["command"])

    return measure


def adam_beats_esgd(report: Results, file: str) -> Measurement:
    """ReLU-PE (paper 2): Adam should reach a better metric than ESGD."""
    inverse = esgd_vs_adam(None)(report, file)
    return Measurement(inverse.measured, None, not inverse.reproduced, inverse.plots, inverse.command)


def nerf_pair(method: str, paper_time_ratio: float) -> Callable[[Results, str], Measurement]:
    """A nerf_bench comparison row: the method's time (and iterations) to the Adam baseline's final train PSNR."""

    def measure(report: Results, file: str) -> Measurement:
        rows = [row for row in report["comparisons"] if row["method"] == method]
        if not rows:
            raise ResultsError(f"{file}: no comparison for {method}; rerun python -m benchmarks.nerf_bench")
        row = rows[0]
        if row["time_ratio"] is None:
            measured = (f"{method} never reached {row['baseline']}'s final train PSNR {row['target_train_psnr']:.2f} "
                        f"(its final: {row['method_final_train_psnr']:.2f})")  # fmt: skip
            return Measurement(measured, None, False, (), report["settings"].get("command"))
        measured = (f"{method}: {row['time_ratio']:.2f}x the time and {row['iteration_ratio']:.2f}x the iterations of "
                    f"{row['baseline']} to its final train PSNR {row['target_train_psnr']:.2f}")  # fmt: skip
        ratio = row["time_ratio"] / paper_time_ratio
        reproduced = row["time_ratio"] < 1 and paper_time_ratio / row["time_ratio"] >= REPRODUCED_FRACTION
        return Measurement(measured, ratio, reproduced)

    return measure


def _networks(report: Results, layers: int, hidden: int, init: Callable[[str, str], bool]) -> dict[str, Results]:
    return {
        n["activation"]: n for n in report["networks"]
        if n["layers"] == layers and n["hidden"] == hidden and init(n["activation"], n["init"])
    }  # fmt: skip


def paper_init(activation: str, init: str) -> bool:
    return init == ("siren" if activation == "sine" else "kaiming")


def hessian_spectrum(layers: int, hidden: int, init: Callable[[str, str], bool],
                     paper_relu_zero: float | None) -> Callable[[Results, str], Measurement]:  # fmt: skip
    """Paper 1's prediction: ReLU/ReLU-PE Hessians have zero eigenvalues, sine/Gaussian ones none."""

    def measure(report: Results, file: str) -> Measurement:
        networks = _networks(report, layers, hidden, init)
        if not networks:
            raise _MissingCase(f"no {layers}x{hidden} networks in {file}")
        parts = [
            f"{act}: {_percent(n['summary']['zero_fraction'])} zero, min |λ| {n['summary']['smallest_abs']:.1e}"
            for act, n in networks.items()
        ]
        relu_like = [n for act, n in networks.items() if act in ("relu", "relu-pe")]
        smooth = [n for act, n in networks.items() if act in ("sine", "gauss", "wavelet")]
        reproduced = bool(relu_like and smooth) and all(n["summary"]["zero_fraction"] > 0 for n in relu_like) and all(
            n["summary"]["zero_fraction"] == 0 for n in smooth
        )
        ratio = None
        if paper_relu_zero is not None and "relu" in networks:
            ratio = networks["relu"]["summary"]["zero_fraction"] / paper_relu_zero
        return Measurement("; ".join(parts), ratio, reproduced, (report["plot"],), report["command"])

    return measure


def hvp_sparsity(report: Results, file: str) -> Measurement:
    """Paper 2, Theorems 4.2/4.3: HVPs are sparse for ReLU/ReLU-PE and dense for sine/Gaussian/wavelet."""
    networks = [n for n in report["networks"] if paper_init(n["activation"], n["init"])]
    parts = [f"{n['label']}: {_percent(n['summary']['hvp_sparsity'])} zeros" for n in networks]
    relu_like = [n for n in networks if n["activation"] in ("relu", "relu-pe")]
    smooth = [n for n in networks if n["activation"] in ("sine", "gauss", "wavelet")]
    reproduced = bool(relu_like and smooth) and all(n["summary"]["hvp_sparsity"] > 0 for n in relu_like) and all(
        n["summary"]["hvp_sparsity"] == 0 for n in smooth
    )
    return Measurement("; ".join(parts), None, reproduced, (report["plot"],), report["command"])


def int_row(label_match: str, paper_saved: float, min_change: float) -> Callable[[Results, str], Measurement]:
    """An INT run against the no-INT baseline of the same case (int_speed report): wall time saved, metric change.
    It reproduces when the saving is as the paper's (see the module docstring) and the metric changed by at least
    ``min_change`` (dB, or IoU as a fraction) in every case."""

    def measure(report: Results, file: str) -> Measurement:
        cases = report["results"]
        parts, saved_all, change_all, plots = [], [], [], []
        for case in cases:
            runs = [run for run in case["runs"] if run["label"] == label_match]
            if not runs:
                raise _MissingCase(f"no run labeled {label_match!r} in {file}")
            run = runs[0]
            change = f"{run['metric_change']:+.2f} dB" if case["metric"] == "psnr" else (
                f"{100 * run['metric_change']:+.2f} % {case['metric']}"  # IoU is a fraction in the results
            )
            parts.append(f"{case['case']}: {_time_change(run['time_saved'])}, {change}")
            saved_all.append(run["time_saved"])
            change_all.append(run["metric_change"])
            plots.append(f"int_{report['case']}_{case['case']}.png")
        saved = sum(saved_all) / len(saved_all)
        ratio = saved / paper_saved if paper_saved else None
        same_sign = (saved > 0) == (paper_saved > 0)
        kept_quality = all(change >= min_change for change in change_all)
        reproduced = same_sign and (ratio is None or ratio >= REPRODUCED_FRACTION) and kept_quality
        return Measurement("; ".join(parts), ratio, reproduced, tuple(plots),
                           f"python -m benchmarks.int_speed {report['case']}")

    return measure


class _MissingCase(LookupError):
    """The results file exists but does not (yet) contain the case this claim needs."""


# Paper 2, Table 1 (LLFF, Gaussian NeRF): ESGD's total iterations and update time over Adam's, all 8 scenes.
P2_NERF_ITERATION_RATIO = (120 + 120 + 120 + 120 + 140 + 140 + 120 + 120) / (200 + 200 + 60 + 200 + 110 + 140 + 200 + 80)
P2_NERF_TIME_RATIO = (270.81 + 263.93 + 227.58 + 269.01 + 201.88 + 334.56 + 271.25 + 209.25) / (
    368.43 + 469.31 + 130.82 + 501.90 + 194.05 + 333.70 + 482.34 + 164.96
)
# INT paper, Table 1 (Kodak): time and PSNR of each strategy against no INT (345.22 s, 35.95 dB).
INT_TABLE1 = {
    "cosine / dense": (337.00, 36.394), "cosine / incremental": (227.84, 36.61), "rcosine / dense": (346.64, 35.18),
    "rcosine / decremental": (225.30, 33.56), "step / dense": (468.01, 36.84), "step / incremental": (211.04, 37.04),
}  # fmt: skip
INT_BASE = (345.22, 35.95)
PAPER_QUALITY_TOLERANCE_DB, PAPER_QUALITY_TOLERANCE_IOU = 1.0, 0.01
"""INT paper, Sec. 5: "minimal degradation in performance (< 1dB PSNR or < 1% IoU)"."""
FIT = "nf-bench"
CURVATURE = "nf-curvature camera.png --size 50 50 --shapes {shape} --inits {init} --iterations 50 --out benchmarks/results"


def _claims() -> list[Claim]:
    claims = [
        Claim("p1-image", "1", "L-BFGS vs Adam, image (4x64 sine, full batch)",
              "~5x faster to convergence (Sec. 5.1, Fig. 4)", ("image_paper1_*",),
              f"{FIT} camera.png --config configs/image/paper1-sine-lbfgs.yaml --optims adam@1e-4,adam@1e-3,lbfgs",
              lbfgs_vs_adam(5.0),
              "the paper compares against Adam at lr 1e-4 only (the headline here is against the best-tuned Adam "
              "lr, 1e-3)"),
        Claim("p1-audio", "1", "L-BFGS vs Adam, audio (4x256 sine ω0 3000/30)",
              "sine converges fastest with L-BFGS (supp. Fig. 6; no Adam figure)", ("audio_paper1*",),
              f"{FIT} tests/data/front_center.wav --config configs/audio/paper1-sine-lbfgs.yaml --optims adam,lbfgs",
              lbfgs_vs_adam(None), "the paper gives no L-BFGS vs Adam number for audio; the clip here is 0.25 s"),
        Claim("p1-audio-activations", "1", "Audio under L-BFGS: sine and Gaussian vs ReLU and ReLU-PE (4x256)",
              "sine/Gaussian converge significantly faster (supp. Fig. 6; no number)", ("audio_activations_lbfgs",),
              f"{FIT} tests/data/front_center.wav --config configs/audio/paper1-sine-lbfgs.yaml "
              "--optims lbfgs:sine,lbfgs:gauss,lbfgs:relu,lbfgs:relu-pe --sigma 0.01", activations_under_lbfgs,
              f"sine does ('significantly faster' read as >= {MUCH_FASTER:g}x); the Gaussian field at the paper's σ = 0.01 "
              "barely trains on this clip (time axis in [-1, 1]; the paper does not state its audio coordinate scale)"),
        Claim("p1-video", "1", "L-BFGS vs Adam, video (4x64 sine, 90x160)", "~2x faster (supp. Fig. 7)", ("video_paper1*",),
              f"{FIT} tests/data/bikes.mp4 --config configs/video/paper1-sine-lbfgs.yaml --optims adam,lbfgs",
              lbfgs_vs_adam(2.0), "a few low-resolution frames instead of the Lion King clip"),
        Claim("p1-occupancy", "1", "L-BFGS vs Adam, occupancy (4x64 sine, 100k points)", "~2x faster (supp. Fig. 8)",
              ("occupancy_paper1*",),
              f"{FIT} tests/data/bone.ply --config configs/occupancy/paper1-sine-lbfgs.yaml --optims adam,lbfgs",
              lbfgs_vs_adam(2.0), "a different, smaller mesh (bone) than the paper's bird"),
        Claim("p1-kiloimage", "1", "KiloImage: L-BFGS vs Adam on tiles of tiny 4x64 sine MLPs",
              "~14x faster (Fig. 6, gigapixel)", ("kilo_image",), "python -m benchmarks.kilo_bench image",
              kilo_vs_adam(14.0), "a far smaller image than the paper's gigapixel one, on 2 CPU cores"),
        Claim("p1-kiloimage-2048", "1", "KiloImage on a >= 2048² photo: L-BFGS vs Adam, 4x64 sine tiles of ~10k points",
              "~14x faster (Fig. 6, gigapixel)", ("kilo_image_2048",),
              "python -m benchmarks.kilo_bench image --photo benchmarks/data/kleiber_2048.jpg --tiles 20x20 "
              "--budget-s 900 --image-name kilo_image_2048", kilo_vs_adam(14.0),
              "L-BFGS leads Adam at equal time, but one full-batch step over 4.2M points takes ~30 s on one CPU "
              "core: the budget covers about 30 steps, where the paper's runs take thousands on a GPU"),
        Claim("p1-kilovideo", "1", "KiloVideo: L-BFGS vs Adam on tiles of 3x64 sine MLPs", "~4x faster (supp. Sec. 4.5)",
              ("kilo_video",), "python -m benchmarks.kilo_bench video", kilo_vs_adam(4.0),
              "a few frames of bikes.mp4 instead of 100 frames at 700x1200"),
        Claim("p1-tinynerf", "1", "TinyNeRF: L-BFGS vs Adam (4x128 Gaussian)", "~2x faster to 24 dB (Fig. 7)",
              ("nerf_bench",), "python -m benchmarks.nerf_bench", nerf_pair("tinynerf-lbfgs", 0.5),
              "a small rendered scene and few iterations on CPU instead of LLFF fern"),
        Claim("p1-kilonerf", "1", "KiloNeRF: L-BFGS vs Adam (2x32 sine tiles)",
              "~6x faster (Table 1: 890 s vs 5324 s)", ("nerf_bench",), "python -m benchmarks.nerf_bench",
              nerf_pair("kilonerf-lbfgs", 889.97 / 5324.48),
              "a small rendered scene and few iterations on CPU instead of Blender scenes"),
    ]
    spectra = (
        ("4x16", 4, 16, paper_init, 0.28, "ReLU 28% / ReLU-PE 45% zero; sine min 5e-4, Gauss 1e-12 (supp. Fig. 1)"),
        ("4x64", 4, 64, paper_init, 0.31, "ReLU 31% / ReLU-PE 21% zero; sine min 5e-9, Gauss 1e-18 (supp. Fig. 2)"),
        ("1x512", 1, 512, paper_init, 0.12, "ReLU 12% zero; ReLU-PE min 3e-14, sine 5e-8, Gauss 1e-12 (supp. Fig. 3)"),
        ("4x16 Xavier", 4, 16, lambda act, init: init == "xavier", 0.24,
         "ReLU 24% / ReLU-PE 5% zero; sine min 1e-4, Gauss 1e-12 (supp. Fig. 4)"),
    )
    for name, layers, hidden, init, relu_zero, figure in spectra:
        claims.append(Claim(
            f"p1-hessian-{name.replace(' ', '-').lower()}", "1", f"Hessian spectrum, {name}: ReLU/ReLU-PE have zero "
            "eigenvalues, sine/Gaussian none", figure, (f"curvature_*_{layers}x{hidden}", "curvature_*"),
            CURVATURE.format(shape=f"{layers}x{hidden}", init="xavier" if "Xavier" in name else "paper"),
            hessian_spectrum(layers, hidden, init, relu_zero),
            "an eigenvalue counts as zero below float64 round-off (n·eps·max|λ|); the paper's Gaussian minima "
            "(1e-12 to 1e-18) would also fall below it, so its 'no zero eigenvalues' uses a looser notion of zero",
        ))  # fmt: skip
    claims += [
        Claim("p2-hvp-sparsity", "2", "HVP sparsity: sparse for ReLU/ReLU-PE, dense for sine/Gaussian",
              "ReLU-PE sparse, Gaussian dense (Fig. 4, Thms. 4.2/4.3)", ("curvature_*",),
              CURVATURE.format(shape="4x16", init="paper"), hvp_sparsity,
              "full-batch HVPs: only units dead on every pixel give exact zeros (the paper used mini-batches)"),
        Claim("p2-image-gauss", "2", "ESGD vs Adam, image (5-layer 256 Gaussian σ 0.05, batch 512)",
              "faster convergence, comparable time/step (Fig. 5)", ("image_paper2_gauss",),
              f"{FIT} examples/astronaut_256.png --config configs/image/gauss-adam.yaml --optims adam,esgd --steps 3000",
              esgd_vs_adam(None), "a shorter run on a 256² photo instead of DIV2K lion"),
    ]
    for act in ("sine", "wavelet"):
        claims.append(Claim(
            f"p2-image-{act}", "2", f"ESGD vs Adam, image, {act}", "ESGD converges faster (supp. Figs. 2-3)",
            (f"image_paper2_{act}",),
            f"{FIT} examples/astronaut_256.png --config configs/image/{act}-adam.yaml --optims adam,esgd",
            esgd_vs_adam(None), "a shorter run on a 256² photo instead of the 14 DIV2K images",
        ))  # fmt: skip
    claims += [
        Claim("p2-image-relu-pe", "2", "ESGD vs Adam, image, ReLU-PE", "Adam is better (Fig. 1, Sec. 4.4)",
              ("image_paper2_relu-pe", "image_paper2_relu_pe"),
              f"{FIT} examples/astronaut_256.png --config configs/image/relu-pe-adam.yaml --optims adam@1e-3,esgd",
              adam_beats_esgd, "a shorter run on a 256² photo"),
        Claim("p2-image-esgd-max", "2", "ESGD-max vs Adam, image", "ESGD-max converges (Sec. 5 remark, supp. Fig. 10)",
              ("image_paper2_esgd_max", "image_paper2_esgd-max"),
              f"{FIT} examples/astronaut_256.png --config configs/image/gauss-adam.yaml --optims adam,esgd-max",
              esgd_vs_adam(None), "the released code's ESGD-max image path could not run"),
        Claim("p2-occupancy", "2", "ESGD vs Adam, occupancy (5-layer 256 Gaussian σ 0.09, BCE, batch 50k)",
              "ESGD converges faster (Fig. 6, supp. Fig. 8)", ("occupancy_paper2*",),
              f"{FIT} tests/data/bone.ply --config configs/occupancy/gauss-adam.yaml --optims adam,esgd",
              esgd_vs_adam(None), "a smaller mesh and fewer points than the paper's armadillo with 1M points"),
        Claim("p2-nerf", "2", "ESGD vs Adam, NeRF (8x256 Gaussian σ 0.1)",
              f"{P2_NERF_TIME_RATIO:.2f}x Adam's update time to the same train PSNR (Table 1, LLFF total)",
              ("nerf_bench",), "python -m benchmarks.nerf_bench", nerf_pair("gauss-esgd", P2_NERF_TIME_RATIO),
              "a small rendered scene and a few hundred iterations on CPU instead of 200k iterations on LLFF"),
    ]
    base_time, base_psnr = INT_BASE
    for label, (time, psnr) in INT_TABLE1.items():
        claims.append(Claim(
            f"int-table1-{label.replace(' / ', '-')}", "INT", f"INT Table 1: ratio / interval = {label}",
            f"{_time_change(1 - time / base_time)}, {psnr - base_psnr:+.2f} dB", ("int_table1",),
            "python -m benchmarks.int_speed table1", int_row(label, 1 - time / base_time, psnr - base_psnr - PAPER_QUALITY_TOLERANCE_DB),
            "tiny photos and 200 steps: the selection pass costs a larger share of each step than on Kodak, and fewer "
            "steps leave less time to recover the quality lost to training on a subset",
        ))  # fmt: skip
    table2 = (("audio", 23.05, 15.76, 48.38, 48.15, "dB"), ("image", 345.22, 211.04, 36.09, 36.97, "dB"),
              ("megapixel", 16780, 11870, 31.82, 33.01, "dB"), ("occupancy", 144.58, 93.19, 97.07, 96.68, "% iou"))
    for case, before, after, metric_before, metric_after, unit in table2:
        claims.append(Claim(
            f"int-table2-{case}", "INT", f"INT Table 2: {case}, step-incremental INT vs none",
            f"{_time_change(1 - after / before)}, {metric_after - metric_before:+.2f} {unit}", (f"int_{case}",),
            f"python -m benchmarks.int_speed {case}",
            int_row("INT step-dense" if case == "megapixel" else "INT step-incremental", 1 - after / before,
                    -PAPER_QUALITY_TOLERANCE_IOU if case == "occupancy" else -PAPER_QUALITY_TOLERANCE_DB),
            "a scaled-down signal and step count on 2 shared CPU cores: fewer steps leave less time to recover the "
            "quality lost to training on a subset, and the selection pass is relatively dearer",
        ))  # fmt: skip
    return claims


CLAIMS: tuple[Claim, ...] = tuple(_claims())


# ---------------------------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------------------------


def _source(claim: Claim, results: dict[str, Results]) -> str | None:
    for pattern in claim.sources:
        matches = sorted(stem for stem in results if fnmatch.fnmatchcase(stem, pattern))
        if matches:
            return matches[0]
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def row(claim: Claim, results: dict[str, Results], results_link: str) -> str:
    source = _source(claim, results)
    measurement = None
    if source is not None:
        try:
            measurement = claim.measure(results[source], f"benchmarks/results/{source}.json")
        except _MissingCase:
            measurement = None
    if measurement is None:
        cells = [claim.paper, claim.claim, claim.paper_figure, NOT_YET, "–", NOT_YET, f"`{claim.command}`", "–"]
    else:
        status = "reproduced" if measurement.reproduced else f"**did not reproduce**: {claim.reason}"
        ratio = "–" if measurement.ratio is None else f"{measurement.ratio:.2f}"
        plots = " ".join(f"[{name}]({results_link}/{name})" for name in measurement.plots) or "–"
        data = f" ([{source}.json]({results_link}/{source}.json))"
        cells = [claim.paper, claim.claim, claim.paper_figure, measurement.measured + data, ratio, status,
                 f"`{measurement.command or claim.command}`", plots]  # fmt: skip
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def other_measurements(results: dict[str, Results], results_link: str) -> list[str]:
    used = {pattern for claim in CLAIMS for pattern in claim.sources}
    lines = []
    for stem in sorted(results):
        if not any(fnmatch.fnmatchcase(stem, pattern) for pattern in used):
            lines.append(f"- [{stem}.md]({results_link}/{stem}.md) ([json]({results_link}/{stem}.json))")
    return lines


def render(results: dict[str, Results], results_link: str = "benchmarks/results") -> str:
    lines = [
        "# Reproduction: every claim of the three papers, measured here",
        "",
        "Generated by `python -m benchmarks.reproduction` from `benchmarks/results/*.json`; do not edit by hand.",
        "Papers: **1** = Curvature-Aware Training for Coordinate Networks (L-BFGS); **2** = Preconditioners for the "
        "Stochastic Training of Neural Fields (ESGD); **INT** = Nonparametric Teaching of Implicit Neural "
        "Representations.",
        "",
        "Measurements are scaled down to a shared 2-core CPU, so speed figures are ratios between methods in the same "
        "run. *Ratio* = measured / paper for the headline number (speed-ups, time fractions, savings; for the "
        f"Hessian rows the ReLU zero-eigenvalue fraction). A speed claim counts as reproduced when the measured "
        f"figure points the same way and is at least {REPRODUCED_FRACTION:g} of the paper's; a qualitative claim "
        "when every measured case agrees. L-BFGS speed-ups are to each Adam run's own final metric, taken from the "
        "logged curves; the headline is against the best-tuned Adam. `$SKIMAGE_DATA` in a command is the folder of "
        "the images bundled with scikit-image (the `skimage.data` package; see `benchmarks/README.md`).",
        "",
        *(["**No GPU figures yet**: every measurement below is from a CPU. `python -m benchmarks.gpu_suite` on a CUDA "
           "machine writes the project's GPU results (`gpu_suite.md` and `gpu_*.md`; see `benchmarks/README.md`).", ""]
          if "gpu_suite" not in results else []),
        "| paper | claim | paper's figure | measured here | ratio | status | command | plot |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(claim, results, results_link) for claim in CLAIMS]
    others = other_measurements(results, results_link)
    if others:
        lines += ["", "## Other measurements (no paper claim)", "", *others]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reproduction", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of results JSON files")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="the markdown file to write")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
    except ResultsError as error:
        print(f"reproduction: error: {error}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, render(results))
    print(f"reproduction: wrote {args.out} ({len(CLAIMS)} claims, {len(results)} results files)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
