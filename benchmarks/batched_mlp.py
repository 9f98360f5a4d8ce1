"""Forward + backward of ``BatchedMLP`` against a Python loop over the same N ``CoordinateMLP``s, in one run.

    python -m benchmarks.batched_mlp [--device cuda] [--threads 1] [--budget-s 10]

Each case builds one BatchedMLP, takes its nets as plain CoordinateMLPs (``.net(i)``), checks both give the same
outputs, then times "MSE loss + backward" alternately for the two so machine noise hits both alike, and reports the
median time of each and their ratio. Results are merged by device and thread count into
``benchmarks/results/batched_mlp.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nf_precond.atomic import atomic_write_text
from nf_precond.nn import BatchedMLP, CoordinateMLP, FieldConfig

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Case:
    """One benchmark shape: N sine nets of ``layers`` x ``hidden`` mapping 2-D points to RGB."""

    name: str
    """What the shape stands for."""
    num_nets: int
    """Number of independent nets (tiles)."""
    layers: int
    """Activated hidden layers per net."""
    hidden: int
    """Hidden width per net."""
    points: int
    """Points per net in one batch."""


CASES = (
    Case("tiny nets, few points (overhead-bound)", num_nets=1000, layers=2, hidden=32, points=100),
    Case("KiloImage nets (4x64), mini-batch per tile", num_nets=1000, layers=4, hidden=64, points=100),
    Case("KiloImage nets (4x64), 1k points per tile", num_nets=100, layers=4, hidden=64, points=1000),
    Case("dataset fields (4x64), a 64x64 image each (nf-fit DIR)", num_nets=64, layers=4, hidden=64, points=4096),
)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - start


def run_case(case: Case, device: torch.device, budget_s: float) -> dict[str, object]:
    torch.manual_seed(0)
    batched = BatchedMLP(case.num_nets, 2, 3, FieldConfig(hidden=case.hidden, layers=case.layers), device=device)
    nets = [batched.net(i) for i in range(case.num_nets)]
    # The floor for eager PyTorch: one net of the same shape on all N*P points does the same FLOPs in one call each.
    single = CoordinateMLP(2, 3, batched.config, device=device)
    coords = torch.rand(case.num_nets, case.points, 2, device=device) * 2 - 1
    targets = torch.rand(case.num_nets, case.points, 3, device=device)

    with torch.no_grad():
        looped = torch.stack([net(coords[i]) for i, net in enumerate(nets)])
        torch.testing.assert_close(batched(coords), looped, rtol=1e-4, atol=1e-5)

    def batched_step() -> None:
        batched.zero_grad(set_to_none=True)
        ((batched(coords) - targets) ** 2).mean().backward()

    def loop_step() -> None:
        for net in nets:
            net.zero_grad(set_to_none=True)
        loss = sum(((net(coords[i]) - targets[i]) ** 2).mean() for i, net in enumerate(nets)) / case.num_nets
        loss.backward()

    def single_step() -> None:
        single.zero_grad(set_to_none=True)
        ((single(coords.reshape(-1, 2)) - targets.reshape(-1, 3)) ** 2).mean().backward()

    steps = {"batched": batched_step, "loop": loop_step, "single_net_same_flops": single_step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up: allocator, thread pool, kernels
        step()
    deadline = time.perf_counter() + budget_s
    while len(times["loop"]) < 3 or (time.perf_counter() < deadline and len(times["loop"]) < 50):
        for name, step in steps.items():
            times[name].append(_timed(step, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        **asdict(case),
        "parameters_per_net": sum(p.numel() for p in nets[0].parameters()),
        "repeats": len(times["loop"]),
        "batched_s": median["batched"],
        "loop_s": median["loop"],
        "single_net_same_flops_s": median["single_net_same_flops"],
        "speedup": median["loop"] / median["batched"],
    }


def _markdown(results: dict[str, dict[str, object]]) -> str:
    lines = [
        "# BatchedMLP vs a Python loop over the same nets",
        "",
        "Forward + backward of an MSE loss over N independent sine MLPs (2-D points -> RGB): one `baddbmm` per layer",
        "(`BatchedMLP`) against a loop over the same nets as `CoordinateMLP`s summed into one loss. Median of",
        "alternating repeats in one process; the ratio is what to read, the absolute times depend on the machine.",
        "\"1 net, same FLOPs\" is one net of the same shape on all N*P points: the floor eager PyTorch reaches, so",
        "BatchedMLP near it means the batching itself costs nothing and the speed-up is all the loop's per-op overhead.",
        "A load average above the core count means the CPU was shared: with more than one thread the loop's small ops",
        "then stall at thread barriers and the ratio inflates, so prefer `--threads 1` numbers there.",
        "Written by `python -m benchmarks.batched_mlp`.",
        "",
    ]
    for key, run in results.items():
        lines += [
            f"## {key}: {run['device_name']}, torch {run['torch']}, {run['cpu_count']} cores, "
            f"1-min load average {run['load_average_1min']:.1f} while measuring",
            "",
            "| case | N | layers x width | points/net | BatchedMLP | loop | 1 net, same FLOPs | speed-up vs loop |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for case in run["cases"]:  # type: ignore[union-attr]
            lines.append(
                f"| {case['name']} | {case['num_nets']} | {case['layers']}x{case['hidden']} | {case['points']} "
                f"| {case['batched_s'] * 1e3:.1f} ms | {case['loop_s'] * 1e3:.1f} ms "
                f"| {case['single_net_same_flops_s'] * 1e3:.1f} ms | {case['speedup']:.1f}x |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device to time on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--budget-s", type=float, default=10.0, help="timing budget per case, seconds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice); 1 is steadier "
        "on a shared CPU, where a descheduled worker stalls every small op at its barrier"
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device; use --device cpu")

    cases = []
    for case in CASES:
        result = run_case(case, device, args.budget_s)
        print(f"{case.name}: batched {result['batched_s'] * 1e3:.1f} ms, loop {result['loop_s'] * 1e3:.1f} ms, "
              f"{result['speedup']:.1f}x")  # fmt: skip
        cases.append(result)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    run = {
        "device": device.type,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # A busy shared machine slows the loop's many small ops more than the batched ones: read this first.
        "load_average_1min": os.getloadavg()[0],
        "cases": cases,
    }

    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "batched_mlp.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results[f"{device.type}, {run['threads']} threads"] = run
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    atomic_write_text(RESULTS / "batched_mlp.md", _markdown(results))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
