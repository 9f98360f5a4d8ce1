"""Which ESGD form to default to, by measurement (see "Measurements behind the defaults" in benchmarks/README.md).

Fits the astronaut photo (resized) with Gaussian and sine coordinate MLPs, mini-batches of 512 reshuffled every
epoch, seed 0 for the init and the batch order of every method; Adam (lr 1e-4, paper 2) is the first row. Reports
PSNR (full image) against steps, the steps each method needs to reach Adam's final PSNR (as a ratio to Adam's), and
the amortized wall time per step as a ratio to Adam's (same process, same thread count).

    python -m benchmarks.esgd_variants            # writes benchmarks/results/esgd_variants.{md,json}
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from fitters.metrics import first_crossing, psnr
from nf_precond.atomic import atomic_write_text
from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import NonFiniteLossError, build_optimizer, make_closure
from nf_precond.sampling import RandomBatches

RESULTS = Path(__file__).parent / "results"

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "Adam (lr 1e-4)": ("adam", {}),
    "ESGD p=½, bias over t (released code)": ("esgd", {"preconditioner_power": 0.5, "bias_correction": "steps"}),
    "ESGD p=½, bias over k": ("esgd", {"preconditioner_power": 0.5, "bias_correction": "updates"}),
    "ESGD p=¼, bias over t": ("esgd", {"preconditioner_power": 0.25, "bias_correction": "steps"}),
    "ESGD p=¼, bias over k (Eq. 6)": ("esgd", {"preconditioner_power": 0.25, "bias_correction": "updates"}),
    "ESGD-max p=½": ("esgd-max", {"preconditioner_power": 0.5}),
    "ESGD-max p=¼": ("esgd-max", {"preconditioner_power": 0.25}),
    "AdaHessian(E), power 1": ("adahessian-e", {"hessian_power": 1.0}),
    "AdaHessian(J), power ½": ("adahessian-j", {"hessian_power": 0.5}),
    "AdaHessian(J), power 1": ("adahessian-j", {"hessian_power": 1.0}),
}
"""Row label -> (registered optimizer name, overrides of its registered defaults)."""


@dataclass(frozen=True)
class BenchConfig:
    """What to fit and for how long; the defaults keep the run under ~10 minutes on 2 shared CPU cores."""

    size: int = 128
    """The astronaut photo is resized to size x size pixels (RGB in [0, 1], coordinates in [-1, 1])."""
    hidden: int = 128
    """Width of the 4 activated hidden layers (+ a Linear output layer: paper 2's "5-layer" network)."""
    activations: tuple[str, ...] = ("gauss", "sine")
    """Activations to compare on (Gaussian with sigma, sine with SIREN init and omega0 = 30)."""
    sigma: float = 0.05
    """Gaussian width, paper 2's image setting."""
    steps: int = 1000
    """Optimizer steps per method (each on one mini-batch)."""
    batch_size: int = 512
    """Pixels per step (paper 2)."""
    eval_every: int = 250
    """Full-image PSNR every this many steps (evaluation time is excluded from the timing)."""
    methods: tuple[str, ...] = tuple(METHODS)
    """Row labels of METHODS to run, Adam first (the reference of every ratio)."""
    threads: int = 1
    """torch CPU threads (1 keeps timings comparable on a shared machine)."""
    device: str = "cpu"
    """Torch device for the fit ("cuda" on a GPU machine)."""
    seed: int = 0
    """Seed for the init (identical across methods) and the Rademacher draws; the batch order uses it too."""
    out: Path = field(default=RESULTS / "esgd_variants")
    """Results are written to OUT.md and OUT.json."""


def astronaut(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo as (coords [size², 2] in [-1, 1], rgb [size², 3] in [0, 1])."""
    from skimage import data, transform

    image = transform.resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    coords = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    return coords.to(device), torch.from_numpy(image).reshape(-1, 3).to(device)


class Run:
    """One method fitting one activation: its model, optimizer, batch order, PSNR curve and split wall time."""

    def __init__(self, config: BenchConfig, activation: str, label: str, coords: torch.Tensor, rgb: torch.Tensor):
        optimizer_name, overrides = METHODS[label]
        torch.manual_seed(config.seed)  # the same init for every method
        field = FieldConfig(hidden=config.hidden, layers=4, activation=activation, sigma=config.sigma)
        self.model = CoordinateMLP(2, 3, field, device=coords.device)
        self.optimizer = build_optimizer(optimizer_name, self.model, **overrides)
        self.batches = RandomBatches(coords.shape[0], config.batch_size, coords.device, seed=config.seed)
        self.coords, self.rgb = coords, rgb
        self.batch = torch.empty(0, dtype=torch.long)
        self.closure = make_closure(
            self.optimizer, lambda: torch.nn.functional.mse_loss(self.model(coords[self.batch]), rgb[self.batch])
        )
        self.curve = [{"step": 0, "time_s": 0.0, "psnr": self.evaluate()}]
        self.elapsed = {"curvature": 0.0, "plain": 0.0}
        self.counts = {"curvature": 0, "plain": 0}
        self.diverged_at: int | None = None

    def evaluate(self) -> float:
        with torch.no_grad():
            return psnr(self.model(self.coords).clamp(0, 1), self.rgb)

    def step(self, step: int) -> None:
        self.batch = self.batches.next_indices(step, errors=lambda: torch.empty(0))
        kind = "curvature" if getattr(self.optimizer, "needs_graph", False) else "plain"
        start = time.perf_counter()
        try:
            loss = float(self.optimizer.step(self.closure))  # float() syncs a GPU, so the timing is honest
        except NonFiniteLossError:
            loss = math.nan
        self.elapsed[kind] += time.perf_counter() - start
        self.counts[kind] += 1
        if not math.isfinite(loss):  # Adam has no finite-loss guard: stop either way rather than log NaNs
            self.diverged_at = step

    def log(self, step: int) -> None:
        self.curve.append({"step": step, "time_s": sum(self.elapsed.values()), "psnr": self.evaluate()})

    def summary(self) -> dict[str, Any]:
        per_kind = {kind: self.elapsed[kind] / self.counts[kind] if self.counts[kind] else None for kind in self.counts}
        return {
            "curve": self.curve,
            "seconds_per_step": sum(self.elapsed.values()) / max(1, sum(self.counts.values())),
            "seconds_per_plain_step": per_kind["plain"],
            "seconds_per_curvature_step": per_kind["curvature"],
            "curvature_steps": self.counts["curvature"],
            "diverged_at": self.diverged_at,
        }


def fit_all(config: BenchConfig, activation: str, coords: torch.Tensor, rgb: torch.Tensor) -> dict[str, dict]:
    """Every method on one activation, in lockstep (one step of each per round), so a load change on a shared
    machine hits all methods alike and the time ratios stay fair."""
    runs = {label: Run(config, activation, label, coords, rgb) for label in config.methods}
    for step in range(1, config.steps + 1):
        for run in runs.values():
            if run.diverged_at is None:
                run.step(step)
                if step % config.eval_every == 0 or step == config.steps:
                    run.log(step)
    return {label: run.summary() for label, run in runs.items()}


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}{suffix}"


def report(config: BenchConfig, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "# ESGD variants vs Adam (image fitting)",
        "",
        f"Astronaut {config.size}², 4x{config.hidden} MLP + Linear, batch {config.batch_size} reshuffled per epoch, "
        f"{config.steps} steps, seed {config.seed}, device {config.device}, {config.threads} thread(s). "
        "ESGD: curvature on steps < 50, then every 100; lr 0.15 for all curvature methods. "
        "Written by `python -m benchmarks.esgd_variants`.",
        "",
        "Columns: full-image PSNR (dB) at each step; *steps to Adam*: steps to reach Adam's final PSNR, as a ratio "
        "to Adam's steps (< 1 is faster; – = never reached); *time/step*: amortized wall time per step / Adam's "
        "(same process); *HVP step*: a curvature step's time / a plain step's.",
    ]
    for activation, per_method in results.items():
        reference = per_method[config.methods[0]]
        target = reference["curve"][-1]["psnr"]
        adam_steps = first_crossing(reference["curve"], "psnr", target, "step")
        steps_logged = [record["step"] for record in reference["curve"]][1:]
        header = "| method | " + " | ".join(str(s) for s in steps_logged) + " | steps to Adam | time/step | HVP step |"
        lines += ["", f"## {activation}" + (f" (σ = {config.sigma})" if activation == "gauss" else " (ω0 = 30)"), ""]
        lines += [header, "|" + "---|" * (len(steps_logged) + 4)]
        for label, result in per_method.items():
            by_step = {record["step"]: record["psnr"] for record in result["curve"]}
            crossing = first_crossing(result["curve"], "psnr", target, "step")
            steps_ratio = crossing / adam_steps if crossing is not None and adam_steps else None
            time_ratio = result["seconds_per_step"] / reference["seconds_per_step"]
            hvp_ratio = (
                result["seconds_per_curvature_step"] / result["seconds_per_plain_step"]
                if result["seconds_per_curvature_step"] and result["seconds_per_plain_step"]
                else None
            )
            cells = [_fmt(by_step.get(s)) for s in steps_logged]
            if result["diverged_at"] is not None:
                cells.append(f"diverged at {result['diverged_at']}")
            else:
                cells.append(_fmt(steps_ratio, 2, "x"))
            cells += [_fmt(time_ratio, 2, "x"), _fmt(hvp_ratio, 1, "x")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def repo_relative(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it, so results name no machine's folders."""
    root = Path(__file__).resolve().parent.parent
    resolved = path.resolve()
    return str(resolved.relative_to(root) if resolved.is_relative_to(root) else path)


def main(config: BenchConfig) -> dict[str, Any]:
    unknown = [label for label in config.methods if label not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    coords, rgb = astronaut(config.size, device)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for activation in config.activations:
        results[activation] = fit_all(config, activation, coords, rgb)
        for label, result in results[activation].items():
            print(f"{activation:6s} {label:40s} final PSNR {result['curve'][-1]['psnr']:6.2f}  "
                  f"{result['seconds_per_step'] * 1e3:6.2f} ms/step", flush=True)  # fmt: skip
    payload = {"config": {k: repo_relative(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
               "methods": {label: {"optimizer": METHODS[label][0], "overrides": METHODS[label][1]}
                           for label in config.methods},
               "results": results}  # fmt: skip
    atomic_write_text(config.out.with_suffix(".json"), json.dumps(payload, indent=1, allow_nan=True) + "\n")
    atomic_write_text(config.out.with_suffix(".md"), report(config, results))
    return payload


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
