"""Where a batched Kilo L-BFGS iteration spends its time, and what training the tiles in cache-sized groups changes.

    python -m benchmarks.kilo_profile [--steps 10] [--groups 0 64 16 4]

For each tile layout of the Kilo-vs-loop benchmark (astronaut 256², 4x64 sine per tile, L-BFGS history 20), every
tile is trained for ``--steps`` iterations from the same initial weights:

- all tiles at once (group 0) and in groups of G tiles trained one group after the other (what ``--kilo-group G``
  does; the nets are independent, so the result is the same up to rounding);
- the per-tile loop of ``kilo_bench loop`` (one ``CoordinateMLP`` + ``LBFGS`` per tile), the reference.

The closure is the one ``nf-fit --kilo`` builds: line-search trials that only some tiles still need evaluate just
those tiles.

Per run: seconds per iteration over all tiles, closure evaluations per iteration (line-search trials), the seconds of
one closure over all tiles (forward + backward, timed apart), and the rest: the L-BFGS algebra (history update,
direction, parameter writes) and the line search's own arithmetic. The curvature history alone is
``2 * history * parameters`` floats, so with thousands of over-parameterized tiles the algebra streams gigabytes per
iteration through memory, while one tile's (or a small group's) state stays in the CPU's caches. Results:
``benchmarks/results/kilo_profile.{md,json}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine_facts, write_results
from benchmarks.kilo_bench import astronaut, loop_of_tiles
from fitters import metrics
from fitters.kilo import KiloSignal, initial_field, make_grid
from nf_precond.nn import BatchedMLP, FieldConfig
from nf_precond.optim import make_closure
from nf_precond.optim.batched_lbfgs import BatchedLBFGS

LAYOUTS = (("32x32", 1024), ("16x16", 256), ("4x4", 16))
"""Tile counts per axis on the 256² photo (and the tiles they make): 64, 256 and 4096 points per tile."""
HISTORY = 20


def train_group(signal: KiloSignal, model: BatchedMLP, coords: torch.Tensor, targets: torch.Tensor,
                steps: int) -> tuple[float, int, float]:  # fmt: skip
    """``steps`` L-BFGS iterations of every net of ``model``: (seconds, closure calls, seconds of one closure)."""
    optimizer = BatchedLBFGS(model.parameters(), num_nets=model.num_nets, history_size=HISTORY)
    # As nf-fit --kilo builds it: later line-search trials evaluate only the tiles still searching.
    closure = make_closure(
        optimizer,
        lambda: signal.loss(model(coords), targets),
        compute_net_losses=lambda nets: signal.loss(model(coords[nets], nets=nets), targets[nets]),
    )

    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step(closure)
    seconds = time.perf_counter() - start
    repeats = 3
    closure_start = time.perf_counter()
    for _ in range(repeats):
        closure()
    return seconds, optimizer.closure_evals, (time.perf_counter() - closure_start) / repeats


def grouped(signal: KiloSignal, field: FieldConfig, group: int, steps: int) -> dict[str, Any]:
    """Every tile trained ``steps`` iterations, ``group`` tiles at a time (0: all at once)."""
    initial = initial_field(field, signal.grid.num_tiles, signal.in_features, signal.out_features, seed=0)
    size = group or signal.grid.num_tiles
    seconds = closure_s = 0.0
    evals = 0
    outputs = []
    for ids in torch.arange(signal.grid.num_tiles).split(size):
        model = initial.select(ids)
        group_s, group_evals, group_closure_s = train_group(signal, model, signal.coords[ids], signal.targets[ids], steps)
        seconds, evals, closure_s = seconds + group_s, evals + group_evals, closure_s + group_closure_s
        with torch.no_grad():
            outputs.append(model(signal.coords[ids]))
    groups = -(-signal.grid.num_tiles // size)
    evals_per_iteration = evals / (groups * steps)
    iteration_s = seconds / steps
    parameters = field.num_parameters(signal.in_features, signal.out_features)
    return {
        "group": size, "iteration_s": iteration_s, "evals_per_iteration": evals_per_iteration,
        "closure_s": closure_s, "closure_share": min(1.0, evals_per_iteration * closure_s / iteration_s),
        "state_mib_per_group": size * parameters * (2 * HISTORY + 4) * 4 / 2**20,
        "psnr": metrics.psnr(signal.grid.stitch(torch.cat(outputs)).clamp(0, 1), signal.base.targets),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="L-BFGS iterations per tile")
    parser.add_argument("--groups", type=int, nargs="+", default=[0, 64, 16, 4], help="tiles at once (0 = all)")
    parser.add_argument("--size", type=int, default=256, help="photo side")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    signal = astronaut(args.size)
    field = FieldConfig(hidden=64, layers=4)
    rows = []
    for tiles, count in LAYOUTS:
        kilo = KiloSignal(signal, make_grid(signal, tiles))
        loop_s, outputs = loop_of_tiles(kilo, field, args.steps)
        loop = {"iteration_s": loop_s / args.steps,
                "psnr": metrics.psnr(kilo.grid.stitch(outputs).clamp(0, 1), signal.targets)}  # fmt: skip
        for group in args.groups:
            if group >= count:
                continue
            row = {"tiles": tiles, "num_tiles": count, "points_per_tile": kilo.grid.points_per_tile, "loop": loop,
                   **grouped(kilo, field, group, args.steps)}  # fmt: skip
            row["speedup_vs_loop"] = loop["iteration_s"] / row["iteration_s"]
            rows.append(row)
            print(row, flush=True)
    facts = machine_facts()
    lines = [
        "# Kilo L-BFGS: where an iteration's time goes, and cache-sized groups", "",
        f"astronaut {args.size}² RGB, 4x64 sine per tile, L-BFGS history {HISTORY}, {args.steps} iterations per tile "
        "from the same initial weights, one thread. Group G: G tiles in one BatchedMLP + BatchedLBFGS, groups trained "
        "one after the other (`--kilo-group G`); all: every tile at once. Loop: one CoordinateMLP + LBFGS per tile. "
        "Closure share = evaluations per iteration x one closure's time / iteration time; the rest is the L-BFGS "
        "algebra and line-search arithmetic. State = curvature history and its working copies per group.", "",
        f"Machine: {facts['cpu']}, torch {facts['torch']}, 1-min load {facts['load_average_1min']}"
        + ("" if facts["quiet"] else " (**busy machine: not evidence**)") + ".", "",
        "| tiles | points/tile | tiles at once | state MiB | s/iteration | evals/iteration | closure share | loop s/iteration "
        "| speed-up vs loop | PSNR | loop PSNR |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['tiles']} ({r['num_tiles']}) | {r['points_per_tile']} | {r['group']} | {r['state_mib_per_group']:.0f} | "
            f"{r['iteration_s']:.3f} | {r['evals_per_iteration']:.2f} | {100 * r['closure_share']:.0f} % | "
            f"{r['loop']['iteration_s']:.3f} | {r['speedup_vs_loop']:.2f}x | {r['psnr']:.2f} | {r['loop']['psnr']:.2f} |"
        )  # fmt: skip
    write_results("kilo_profile", {"machine": facts, "steps": args.steps, "rows": rows}, "\n".join(lines) + "\n",
                  args.results_dir)  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
