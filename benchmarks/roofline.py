"""Roofline of the project's fields: achieved FLOP/s of one training closure against what the machine can do.

``python -m benchmarks.roofline`` (``--smoke`` for a seconds-long check; ``--device cuda`` on a GPU).

For each field shape the project trains (4x64 sine on a 256² photo, full batch; 4x256 Gaussian on batches of 512;
Kilo: 1024 4x64 sine tiles of 64 points; the NeRF 8x256 Gaussian field on 2048 rays x 64 samples) it times, in
steady state (after warm-up, median of repeats):

- one closure (forward + backward), eager and compiled (``CompiledField``);
- one curvature step (closure with ``create_graph`` + a Hessian-vector product), eager;
- the same matrix products without the activations (forward X·W, backward dY·Wᵀ and Xᵀ·dY): the rate the field's
  shapes allow;
- a large square matmul: the machine's peak.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products only), so "achieved" means
matmul FLOPs per second of the whole step; the gap to the same-shape rate is the cost of everything else
(activations, memory traffic, launches). A ``torch.profiler`` pass over each closure says what that is: the share
of the operators' self time in matrix products, and the largest other operators (in a compiled closure the fused
elementwise kernels are one "compiled region"). Writes ``benchmarks/results/roofline[_DEVICE].md/.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import machine_facts, write_results
from nf_precond.curvature import hvp, rademacher_like
from nf_precond.nn import BatchedMLP, CompiledField, CoordinateMLP, FieldConfig

PEAK_SIZE = 2048
"""Side of the square matmul that measures the machine's peak."""


@dataclass(frozen=True)
class Case:
    name: str
    field: FieldConfig
    in_features: int
    out_features: int
    points: int
    nets: int = 0
    """0: one CoordinateMLP over ``points``; N: a BatchedMLP of N nets with ``points`` each."""


CASES = [
    Case("4x64 sine, 256² full batch", FieldConfig(hidden=64, layers=4), 2, 3, 256 * 256),
    Case("4x256 Gaussian, batch 512", FieldConfig(hidden=256, layers=4, activation="gauss"), 2, 3, 512),
    Case("Kilo 1024 x 4x64 sine, 64 points", FieldConfig(hidden=64, layers=4), 2, 3, 64, nets=1024),
    Case("NeRF 8x256 Gaussian, 2048x64 samples", FieldConfig(hidden=256, layers=8, activation="gauss", sigma=0.1),
         3, 4, 2048 * 64),  # fmt: skip
]


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})
"""Operators that are matrix products (their self time is the kernel's)."""


def operator_group(name: str) -> str:
    """A profiler event's name, with a compiled graph's generated kernels under one name (their own names are
    content hashes) and its guards and autograd wrappers under another."""
    if "CompiledFxGraph" in name:
        return "compiled kernels (fused elementwise)"
    if name.startswith(("CompiledFunction", "Torch-Compiled Region", "TorchDynamo Cache Lookup")):
        return "compiled graph's dispatch (guards, autograd wrapper)"
    return name


def time_shares(fn: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, Any]:
    """Where a warmed-up ``fn`` spends its operators' self time: the matrix products' share and the three largest
    other operators' shares."""
    fn()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times: dict[str, float] = {}
    for event in profile.key_averages():
        name = operator_group(event.key)
        times[name] = times.get(name, 0.0) + getattr(event, attribute)
    total = sum(times.values()) or 1.0
    others = sorted(((name, t / total) for name, t in times.items() if name not in MATMUL_OPS), key=lambda x: -x[1])
    return {"matmul_share": sum(t for name, t in times.items() if name in MATMUL_OPS) / total, "top_others": others[:3]}


def flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build(case: Case, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if case.nets:
        model = BatchedMLP(case.nets, case.in_features, case.out_features, case.field, device=device)
        shape = (case.nets, case.points)
    else:
        model = CoordinateMLP(case.in_features, case.out_features, case.field, device=device)
        shape = (case.points,)
    coords = torch.rand(*shape, case.in_features, device=device) * 2 - 1
    return model, coords, torch.rand(*shape, case.out_features, device=device)


def closure_of(model: torch.nn.Module, coords: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    params = list(model.parameters())

    def closure() -> None:
        for param in params:
            param.grad = None
        ((model(coords) - targets) ** 2).mean().backward()

    return closure


def curvature_step_of(model: torch.nn.Module, coords: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    params = list(model.parameters())

    def step() -> None:
        loss = ((model(coords) - targets) ** 2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hvp(list(grads), params, rademacher_like(params))

    return step


def matmuls_of(model: torch.nn.Module, coords: torch.Tensor) -> Callable[[], None]:
    """The field's forward and backward matrix products with the same shapes, nothing else."""
    if isinstance(model, BatchedMLP):
        weights = [w.detach() for w in model.weights]
        x0 = coords if model.encoding is None else model.encoding(coords)
        inputs = [x0] + [torch.empty(*coords.shape[:-1], w.shape[-1], device=coords.device) for w in weights[:-1]]

        def run() -> None:
            for x, w in zip(inputs, weights):
                y = torch.bmm(x, w)
                torch.bmm(y, w.transpose(1, 2))
                torch.bmm(x.transpose(1, 2), y)
    else:
        weights = [linear.weight.detach() for linear in model.linears]
        x0 = coords if model.config.encoding(model.in_features) is None else model.net[0](coords)
        inputs = [x0] + [torch.empty(coords.shape[0], w.shape[0], device=coords.device) for w in weights[:-1]]

        def run() -> None:
            for x, w in zip(inputs, weights):
                y = x @ w.t()
                y @ w
                x.t() @ y

    return run


def measure_case(case: Case, device: torch.device, repeats: int) -> dict[str, Any]:
    model, coords, targets = build(case, device)
    eager = closure_of(model, coords, targets)
    compiled_model = CompiledField(model)
    compiled = closure_of(compiled_model, coords, targets)
    curvature = curvature_step_of(model, coords, targets)
    matmuls = matmuls_of(model, coords)
    compile_start = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - compile_start
    row: dict[str, Any] = {"case": case.name, "compile_s": compile_s}
    for name, fn in (("eager", eager), ("compiled", compiled), ("curvature_step", curvature), ("matmuls", matmuls)):
        seconds = timed(fn, repeats, device)
        count = flops(fn) if name != "compiled" else flops(eager)
        row[name] = {"s": seconds, "gflop": count / 1e9, "gflops": count / seconds / 1e9}
    row["compiled_speedup"] = row["eager"]["s"] / row["compiled"]["s"]
    row["compiled_share_of_matmul_rate"] = row["compiled"]["gflops"] / row["matmuls"]["gflops"]
    row["eager_share_of_matmul_rate"] = row["eager"]["gflops"] / row["matmuls"]["gflops"]
    row["curvature_step_over_closure"] = row["curvature_step"]["s"] / row["eager"]["s"]
    row["profile"] = {name: time_shares(fn, device, repeats) for name, fn in (("eager", eager), ("compiled", compiled))}
    return row


def peak_gflops(device: torch.device, size: int, repeats: int) -> float:
    a, b = torch.rand(size, size, device=device), torch.rand(size, size, device=device)
    return 2 * size**3 / timed(lambda: a @ b, repeats, device) / 1e9


def markdown(report: dict[str, Any]) -> str:
    facts = report["machine"]
    lines = [
        f"# Roofline on {report['device']}", "",
        f"Machine: {facts['cpu']} ({facts['cores']} cores), torch {facts['torch']}, {facts['threads']} threads, "
        f"device {facts['device']}, 1-min load {facts['load_average_1min']}"
        + ("" if facts["quiet"] else " (**busy machine: not evidence**)") + ". "
        f"Peak ({PEAK_SIZE}² matmul): **{report['peak_gflops']:.1f} GFLOP/s**. Median of {report['repeats']} "
        "steady-state repeats; FLOPs are matrix-product FLOPs (FlopCounterMode).", "",
        "| field | eager closure | compiled closure | compiled / eager | same-shape matmuls | compiled share of "
        "matmul rate | share of peak | curvature step / closure | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in report["rows"]:
        lines.append(
            f"| {row['case']} | {row['eager']['s'] * 1e3:.1f} ms, {row['eager']['gflops']:.1f} GFLOP/s | "
            f"{row['compiled']['s'] * 1e3:.1f} ms, {row['compiled']['gflops']:.1f} GFLOP/s | "
            f"{row['compiled_speedup']:.2f}x | {row['matmuls']['gflops']:.1f} GFLOP/s | "
            f"{100 * row['compiled_share_of_matmul_rate']:.0f} % | "
            f"{100 * row['compiled']['gflops'] / report['peak_gflops']:.0f} % | "
            f"{row['curvature_step_over_closure']:.2f}x | {row['compile_s']:.1f} |"
        )
    lines += ["", "Where a closure's time goes (torch.profiler, operators' self time): matrix products, then the "
              "largest other operators.", "",
              "| field | eager: matmuls | eager: largest others | compiled: matmuls | compiled: largest others |",
              "|---|---|---|---|---|"]  # fmt: skip

    def others(shares: dict[str, Any]) -> str:
        return ", ".join(f"`{name}` {100 * share:.0f} %" for name, share in shares["top_others"])

    for row in report["rows"]:
        eager, compiled = row["profile"]["eager"], row["profile"]["compiled"]
        lines.append(f"| {row['case']} | {100 * eager['matmul_share']:.0f} % | {others(eager)} | "
                     f"{100 * compiled['matmul_share']:.0f} % | {others(compiled)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats, results not written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = CASES
    if args.smoke:
        cases = [Case(c.name + " (smoke)", c.field, c.in_features, c.out_features, 64, min(c.nets, 4)) for c in CASES]
        args.repeats = 2
    rows = []
    for case in cases:
        print(f"roofline: {case.name}", file=sys.stderr, flush=True)
        rows.append(measure_case(case, device, args.repeats))
    report = {"device": str(device), "repeats": args.repeats, "machine": machine_facts(),
              "peak_gflops": peak_gflops(device, 256 if args.smoke else PEAK_SIZE, args.repeats), "rows": rows}
    text = markdown(report)
    if not args.smoke:
        write_results("roofline" if device.type == "cpu" else f"roofline_{device.type}", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
