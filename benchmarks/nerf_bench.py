"""NeRF benchmarks of the nerfstudio plugin on a rendered LLFF-layout scene (CPU-sized; larger on a GPU).

For each pair (method vs its Adam baseline, same field, same ray batches' sizes) it trains both in one process with
the plugin's `ClosureTrainer` and records, per step, the train PSNR (from the batch's MSE, smoothed with an EMA of
0.9 as the papers' TensorBoard curves were) and the wall time of the optimizer step. It reports:

- iterations and time for the method to reach the baseline's final smoothed train PSNR, as ratios to the baseline's;
- the held-out view's PSNR at the end;
- per-iteration cost of every method relative to gauss-adam.

Run: `python -m benchmarks.nerf_bench [--steps N] [--device cpu|cuda]`; writes benchmarks/results/nerf_bench.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nerfstudio_plugin.methods import configure
from nerfstudio_plugin.scene import render_llff

RESULTS = Path(__file__).resolve().parent / "results"
PAIRS = (("gauss-esgd", "gauss-adam"), ("tinynerf-lbfgs", "tinynerf-adam"), ("kilonerf-lbfgs", "kilonerf-adam"))
EMA = 0.9


@dataclass
class Run:
    method: str
    steps: int
    step_seconds: list[float]
    train_psnr: list[float]
    """EMA-smoothed train PSNR after each step."""
    heldout_psnr: float

    @property
    def mean_step_seconds(self) -> float:
        timed = self.step_seconds[1:] or self.step_seconds  # the first step pays one-off allocations
        return sum(timed) / len(timed)


def train(method: str, data: Path, output_dir: Path, steps: int, device: str, rays: int, samples: int) -> Run:
    torch.manual_seed(0)
    config = configure(method, data, output_dir, device=device, rays=rays, samples=samples, iterations=steps)
    config.set_timestamp()
    trainer = config.setup()
    trainer.setup()
    trainer.pipeline.train()
    seconds, smoothed, ema = [], [], None
    for step in range(steps):
        start = time.perf_counter()
        loss, _, _ = trainer.train_iteration(step)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        mse = float(loss)
        ema = mse if ema is None else EMA * ema + (1 - EMA) * mse
        smoothed.append(-10.0 * math.log10(max(ema, 1e-12)))
    trainer.pipeline.eval()
    heldout = trainer.pipeline.get_average_eval_image_metrics(step=steps)["psnr"]
    return Run(method, steps, seconds, smoothed, float(heldout))


def first_reaching(run: Run, target: float) -> int | None:
    """1-based step count at which the smoothed train PSNR first reaches `target` (None: never)."""
    return next((index + 1 for index, psnr in enumerate(run.train_psnr) if psnr >= target), None)


def compare(method: Run, baseline: Run) -> dict:
    target = baseline.train_psnr[-1]
    reached = first_reaching(method, target)
    row = {"method": method.method, "baseline": baseline.method, "target_train_psnr": target,
           "method_final_train_psnr": method.train_psnr[-1], "baseline_steps": baseline.steps,
           "method_steps_to_target": reached, "iteration_ratio": None, "time_ratio": None,
           "method_heldout_psnr": method.heldout_psnr, "baseline_heldout_psnr": baseline.heldout_psnr}  # fmt: skip
    if reached is not None:
        row["iteration_ratio"] = reached / baseline.steps
        row["time_ratio"] = sum(method.step_seconds[:reached]) / sum(baseline.step_seconds)
    return row


def write_atomic(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temp, path)


def markdown(settings: dict, rows: list[dict], costs: dict[str, float]) -> str:
    lines = ["# NeRF benchmarks (nerfstudio plugin)", "", f"Settings: `{json.dumps(settings)}`", "",
             "Iterations/time for the method to reach the Adam baseline's final smoothed train PSNR (ratios < 1: "
             "the method is faster; '-' = never reached within the steps).", "",
             "| method | baseline | target train PSNR | method final | iter ratio | time ratio | held-out PSNR "
             "(method / baseline) |", "|---|---|---|---|---|---|---|"]  # fmt: skip

    def fmt(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        lines.append(f"| {row['method']} | {row['baseline']} | {fmt(row['target_train_psnr'])} | "
                     f"{fmt(row['method_final_train_psnr'])} | {fmt(row['iteration_ratio'])} | "
                     f"{fmt(row['time_ratio'])} | {fmt(row['method_heldout_psnr'])} / "
                     f"{fmt(row['baseline_heldout_psnr'])} |")  # fmt: skip
    lines += ["", "Per-iteration cost relative to gauss-adam (same run, mean over steps after the first):", "",
              "| method | s/iteration | x gauss-adam |", "|---|---|---|"]  # fmt: skip
    for name, seconds in costs.items():
        lines.append(f"| {name} | {seconds:.3f} | {seconds / costs['gauss-adam']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per method")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rays", type=int, default=128, help="rays per batch")
    parser.add_argument("--samples", type=int, default=32, help="samples per ray (TinyNeRF/KiloNeRF use these too)")
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--name", default="nerf_bench", help="results file stem")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {key: value for key, value in vars(args).items() if key != "name"}
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory() as workdir:
        scene = render_llff(Path(workdir) / "scene", num_views=args.views, height=args.height, width=args.width,
                            downscale_factors=())  # fmt: skip
        for method, baseline in PAIRS:
            for name in (baseline, method):
                runs[name] = train(name, scene.root, Path(workdir) / "runs", args.steps, args.device, args.rays,
                                   args.samples)  # fmt: skip
                print(f"{name}: final smoothed train PSNR {runs[name].train_psnr[-1]:.2f}, "
                      f"{runs[name].mean_step_seconds:.3f} s/it, held-out {runs[name].heldout_psnr:.2f}", flush=True)
    rows = [compare(runs[method], runs[baseline]) for method, baseline in PAIRS]
    costs = {name: run.mean_step_seconds for name, run in runs.items()}
    RESULTS.mkdir(exist_ok=True)
    payload = {"settings": settings, "comparisons": rows, "seconds_per_iteration": costs,
               "runs": {name: asdict(run) for name, run in runs.items()}}  # fmt: skip
    write_atomic(RESULTS / f"{args.name}.json", json.dumps(payload, indent=1))
    write_atomic(RESULTS / f"{args.name}.md", markdown(settings, rows, costs))
    print(markdown(settings, rows, costs))


if __name__ == "__main__":
    main()
