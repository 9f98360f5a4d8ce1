"""Per-iteration time and peak memory of every registered optimizer, as ratios to Adam (paper 1, Fig. 9 setting).

A 4-hidden-layer, 64-wide Gaussian MLP (σ = 0.05) fits the bundled 256² photo. Every optimizer takes the same
number of steps on the same data; steps are timed round-robin (a block of steps per optimizer, cycling through all
of them several times) so machine load hits every optimizer alike, and the median block time per step is reported.
Every optimizer first takes ``--warmup`` untimed steps, so ESGD's every-step curvature warm-up is behind it and
the timed steps show its amortized cost (one HVP every 100 steps). Memory is measured in a fresh subprocess per
optimizer: peak resident memory above the level just before training (sampled every millisecond, with glibc
returning large blocks to the system so freed memory shows), or peak allocated device memory (CUDA), plus the
exact bytes of optimizer state. Full batch for L-BFGS (as it is used),
mini-batches of 512 for the rest (paper 2) — and, for a like-for-like row, L-BFGS on the same 512 batch too.

    python -m benchmarks.optimizer_cost [--device cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from nf_precond.atomic import atomic_write_text
from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import OPTIMIZERS, build_optimizer, make_closure

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PHOTO = ROOT / "examples" / "astronaut_256.png"
BATCH = 512
RUNS = [(name, None) for name in OPTIMIZERS] + [("lbfgs", BATCH)]
"""(optimizer, batch size); None = the optimizer's own setting (full batch for L-BFGS, 512 otherwise)."""


def label(name: str, batch: int | None) -> str:
    return f"{name} (batch {BATCH})" if batch is not None and OPTIMIZERS[name].full_batch else name


def photo(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    image = iio.imread(PHOTO)[..., :3].astype(np.float32) / 255.0
    h, w, _ = image.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    coords = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    return coords.to(device), torch.from_numpy(image).reshape(-1, 3).to(device)


def setup(name: str, batch: int | None, device: torch.device, seed: int = 0):
    """Model, optimizer and closure for one run; the batch is fixed so every step costs the same."""
    coords, colors = photo(device)
    if batch is None and not OPTIMIZERS[name].full_batch:
        batch = BATCH
    if batch is not None:
        index = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(seed))[:batch].to(device)
        coords, colors = coords[index], colors[index]
    torch.manual_seed(seed)
    model = CoordinateMLP(2, 3, FieldConfig(hidden=64, layers=4, activation="gauss", sigma=0.05)).to(device)
    optimizer = build_optimizer(name, model)
    closure = make_closure(optimizer, lambda: torch.nn.functional.mse_loss(model(coords), colors))
    return model, optimizer, closure


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(device: torch.device, warmup: int, steps_per_block: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each run after ``warmup`` untimed steps, one sample per block, blocks interleaved."""
    runs = {label(name, batch): setup(name, batch, device) for name, batch in RUNS}
    for _, optimizer, closure in runs.values():
        for _ in range(warmup):
            optimizer.step(closure)
    samples: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (_, optimizer, closure) in runs.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps_per_block):
                optimizer.step(closure)
            synchronize(device)
            samples[key].append((time.perf_counter() - start) / steps_per_block)
    return samples


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class PeakResident:
    """Samples the process's current resident memory every millisecond in a thread; ``peak`` is the highest seen."""

    def __enter__(self) -> "PeakResident":
        self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


def measure_memory(name: str, batch: int | None, device: torch.device, steps: int) -> dict[str, float]:
    """Run in a fresh process: peak memory grown by training, and the optimizer's state."""
    model, optimizer, closure = setup(name, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            optimizer.step(closure)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        before = resident_bytes()
        with PeakResident() as resident:
            for _ in range(steps):
                optimizer.step(closure)
        peak = resident.peak - before
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak_growth_bytes": float(max(peak, 0)), "state_bytes": float(state_bytes(optimizer)),
            "parameter_bytes": float(parameters)}  # fmt: skip


def child_memory(name: str, batch: int | None, device: str, threads: int, steps: int) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.optimizer_cost", "--memory-child", name,
               "--child-batch", str(batch or 0), "--device", device, "--threads", str(threads), "--steps", str(steps)]  # fmt: skip
    # Large blocks from mmap go back to the system when freed, so resident memory tracks live tensors.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def write(results: dict, name: str) -> None:
    rows = results["rows"]
    adam = rows["adam"]
    lines = [
        f"# {name}: per-iteration cost and memory of every optimizer",
        "",
        f"{results['setup']}",
        "",
        "| optimizer | batch | ms/step | ratio to Adam | peak memory growth MiB | ratio to Adam | optimizer state KiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        lines.append(
            f"| {key} | {row['batch']} | {row['ms_per_step']:.2f} | {row['ms_per_step'] / adam['ms_per_step']:.2f}x | "
            f"{row['peak_growth_bytes'] / 2**20:.1f} | "
            f"{row['peak_growth_bytes'] / max(adam['peak_growth_bytes'], 1):.2f}x | {row['state_bytes'] / 1024:.1f} |"
        )
    lines += ["", f"Reproduce: `{results['command']}`", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=60, help="untimed steps first (past ESGD's curvature warm-up)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block (and per memory run)")
    parser.add_argument("--rounds", type=int, default=5, help="timed blocks per optimizer, interleaved")
    parser.add_argument("--name", default="optimizer_cost")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--child-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_child:
        print(json.dumps(measure_memory(args.memory_child, args.child_batch or None, device, args.steps)))
        return

    samples = time_steps(device, args.warmup, args.steps, args.rounds)
    rows = {}
    for name, batch in RUNS:
        key = label(name, batch)
        effective = batch or ("full" if OPTIMIZERS[name].full_batch else BATCH)
        rows[key] = {
            "optimizer": name,
            "batch": effective,
            "ms_per_step": 1000 * statistics.median(samples[key]),
            "ms_per_step_samples": [1000 * s for s in samples[key]],
            **child_memory(name, batch, args.device, args.threads, args.steps),
        }
    results = {
        "setup": (f"4x64 Gaussian MLP (σ 0.05) on the bundled 256² photo, device {args.device}, {args.threads} "
                  f"thread(s), torch {torch.__version__}; {args.warmup} untimed steps, then {args.rounds} interleaved "
                  f"blocks of {args.steps} steps per optimizer (median block); memory: a fresh process per optimizer, "
                  + ("peak allocated CUDA memory" if device.type == "cuda" else "peak RSS growth")
                  + f" over {args.steps} steps. L-BFGS steps are one iteration each (line search included)."),
        "command": " ".join(["python -m benchmarks.optimizer_cost", *(argv if argv is not None else sys.argv[1:])]),
        "rows": rows,
    }  # fmt: skip
    write(results, args.name)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
