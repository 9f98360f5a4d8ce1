"""KiloImage / KiloVideo benchmarks (paper 1 §5.2, supp. §4.4-4.5), scaled down to a shared 2-core CPU.

    python -m benchmarks.kilo_bench image|loop|memory|video|all [--threads 1] [--budget-s 90]

- ``image``: KiloImage L-BFGS vs Adam (paper lr 1e-4 and a tuned 1e-3) on scikit-image's astronaut photo, same
  tiles and per-tile 4x64 sine MLPs, equal time budget each: time and steps to 30 dB, PSNR at equal time.
- ``loop``: the whole training of all tiles at once (BatchedMLP + BatchedLBFGS) against a Python loop of one
  CoordinateMLP + LBFGS per tile, same steps, same initial weights: wall time ratio and both PSNRs.
- ``memory``: peak RSS of grouped streaming (``--kilo-group``) on a synthetic upscaled photo, one subprocess per
  group size, so each peak is its own.
- ``video``: KiloVideo L-BFGS vs Adam on tests/data/bikes.mp4 (3x64 sine per tile).

Every comparison runs in one process, alternating nothing but sharing the machine's load at the time; ratios are
what to read. Results: ``benchmarks/results/kilo_<part>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage import data
from skimage.transform import resize

from benchmarks.common import RESULTS, machine_facts, write_results
from fitters import metrics
from fitters.kilo import KiloLoop, KiloSignal, initial_field, make_grid
from fitters.loop import LoopOptions
from fitters.signals import SignalOptions
from fitters.signals.image import ImageSignal
from fitters.signals.image import load as load_image
from fitters.signals.video import load as load_video
from nf_precond.nn import FieldConfig
from nf_precond.optim.lbfgs import LBFGS

REPO = Path(__file__).resolve().parents[1]
TARGET_DB = 30.0


def astronaut(size: int) -> ImageSignal:
    pixels = data.astronaut().astype(np.float32) / 255.0
    if size != pixels.shape[0]:
        pixels = np.clip(resize(pixels, (size, size, 3), anti_aliasing=size < pixels.shape[0]), 0, 1).astype(np.float32)
    return ImageSignal(pixels, name=f"astronaut{size}")


def write(results_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    write_results(name, payload, markdown, results_dir)
    print(markdown)


def fit_curve(signal: Any, tiles: str, field: FieldConfig, optim: str, lr: float, budget_s: float,
              log_every: int, compile: bool) -> list[dict[str, Any]]:  # fmt: skip
    options = LoopOptions(steps=10**6, log_every=log_every, time_budget=budget_s)
    loop = KiloLoop(signal, make_grid(signal, tiles), field, options, optim=optim, lr=lr, compile=compile)
    return loop.run().history


def race(signal: Any, tiles: str, hidden_layers: tuple[int, int], budget_s: float, compile: bool) -> dict[str, Any]:
    """L-BFGS vs Adam (two lrs) on the same tiles, each for ``budget_s`` of training time (compile time excluded,
    as in ``nf-fit``)."""
    hidden, layers = hidden_layers
    runs = {"lbfgs": ("lbfgs", 1.0, 1), "adam@1e-4": ("adam", 1e-4, 10), "adam@1e-3": ("adam", 1e-3, 10)}
    curves = {}
    for name, (optim, lr, log_every) in runs.items():
        field = FieldConfig(hidden=hidden, layers=layers)
        curves[name] = fit_curve(signal, tiles, field, optim, lr, budget_s, log_every, compile)
    rows = {}
    lbfgs_end = curves["lbfgs"][-1]["time_s"]
    for name, curve in curves.items():
        rows[name] = {
            "time_to_target_s": metrics.first_crossing(curve, "psnr", TARGET_DB, "time_s"),
            "steps_to_target": metrics.first_crossing(curve, "psnr", TARGET_DB, "step"),
            "final_psnr": curve[-1]["psnr"], "final_time_s": curve[-1]["time_s"], "steps": curve[-1]["step"],
            "psnr_at_lbfgs_time_to_target": None,
        }  # fmt: skip
    t_lbfgs = rows["lbfgs"]["time_to_target_s"]
    for name, curve in curves.items():
        if t_lbfgs is not None:
            rows[name]["psnr_at_lbfgs_time_to_target"] = metrics.value_at(curve, "psnr", "time_s", t_lbfgs)
        reached = rows[name]["time_to_target_s"]
        # Adam not at the target within the budget: the speed-up is at least budget / L-BFGS's time.
        rows[name]["speedup_of_lbfgs"] = (
            None if t_lbfgs is None else (reached / t_lbfgs if reached is not None else f"> {curve[-1]['time_s'] / t_lbfgs:.1f}")
        )
    return {"rows": rows, "curves": curves, "lbfgs_end_s": lbfgs_end}


def race_markdown(title: str, setup: str, result: dict[str, Any], machine_info: dict[str, Any]) -> str:
    lines = [f"# {title}", "", setup, "", f"Machine: {machine_info}", "",
             f"| run | time to {TARGET_DB:.0f} dB | steps to {TARGET_DB:.0f} dB | PSNR at L-BFGS's time to {TARGET_DB:.0f} dB "
             "| final PSNR (time, steps) | L-BFGS speed-up (time to target) |", "|---|---|---|---|---|---|"]  # fmt: skip
    fmt = lambda v, spec, unit="": "not reached" if v is None else format(v, spec) + unit  # noqa: E731
    for name, row in result["rows"].items():
        speedup = row["speedup_of_lbfgs"]  # None: L-BFGS missed the target; "> N": Adam did
        if speedup is None:
            speedup_cell = "– (L-BFGS did not reach it)"
        else:
            speedup_cell = f"{speedup}x" if isinstance(speedup, str) else f"{speedup:.1f}x"
        psnr_then = "–" if row["psnr_at_lbfgs_time_to_target"] is None else f"{row['psnr_at_lbfgs_time_to_target']:.2f} dB"
        lines.append(
            f"| {name} | {fmt(row['time_to_target_s'], '.2f', ' s')} | {fmt(row['steps_to_target'], '.0f')} | {psnr_then} | "
            f"{row['final_psnr']:.2f} dB ({row['final_time_s']:.1f} s, {row['steps']}) | {speedup_cell} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def part_image(args: argparse.Namespace) -> None:
    signal = (load_image(args.photo, SignalOptions()) if args.photo else astronaut(args.size)).to(args.device)
    result = race(signal, args.tiles, (64, 4), args.budget_s, args.compile == "on")
    setup = (f"KiloImage: {signal.name} {signal.height}x{signal.width} RGB, --kilo {args.tiles} "
             f"({make_grid(signal, args.tiles).points_per_tile} points per tile), 4x64 sine (ω0 30) per tile, full batch per tile, "
             f"{args.budget_s:.0f} s training budget per run (evaluation excluded), field compiled: {args.compile}. Paper 1: 100x100-pixel tiles on "
             "1800x900 to 4000x4000 photos, ~14x (Fig. 6) and 4-6x (supp. Fig. 9-13) time to a PSNR vs Adam. "
             "Scaled down to fit a shared 2-core CPU.")  # fmt: skip
    info = machine_facts()
    write(args.results_dir, args.image_name, {"setup": setup, "machine": info, **result}, race_markdown("KiloImage: L-BFGS vs Adam", setup, result, info))


def part_video(args: argparse.Namespace) -> None:
    signal = load_video(REPO / "tests" / "data" / "bikes.mp4", SignalOptions())
    tiles = "2x4x8"
    result = race(signal, tiles, (64, 3), args.budget_s, args.compile == "on")
    grid = make_grid(signal, tiles)
    setup = (f"KiloVideo: tests/data/bikes.mp4 ({signal.frame_shape[0]} frames of {signal.frame_shape[1]}x"
             f"{signal.frame_shape[2]}), --kilo {tiles} ({grid.points_per_tile} points per tile), 3x64 sine per tile, "
             f"full batch, {args.budget_s:.0f} s per run, field compiled: {args.compile}. PSNR = mean per-frame PSNR. Paper 1 supp. 4.5: 100 frames of "
             "700x1200 in 8400 tiles of 10k points, ~4x vs Adam. Scaled down.")  # fmt: skip
    info = machine_facts()
    write(args.results_dir, "kilo_video", {"setup": setup, "machine": info, **result}, race_markdown("KiloVideo: L-BFGS vs Adam", setup, result, info))


def loop_of_tiles(signal: KiloSignal, field: FieldConfig, steps: int) -> tuple[float, torch.Tensor]:
    """Reference: one CoordinateMLP + LBFGS per tile, trained one after the other; returns (seconds, outputs)."""
    initial = initial_field(field, signal.grid.num_tiles, signal.in_features, signal.out_features, seed=0)
    outputs = []
    seconds = 0.0
    for index in range(signal.grid.num_tiles):
        net = initial.net(index).to(signal.coords.device)
        optimizer = LBFGS(net.parameters(), lr=1.0, history_size=20)
        coords, target = signal.coords[index], signal.targets[index]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (net(coords) - target).square().mean()
            loss.backward()
            return loss.detach()

        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step(closure)
        seconds += time.perf_counter() - start
        with torch.no_grad():
            outputs.append(net(coords))
    return seconds, torch.stack(outputs)


def part_loop(args: argparse.Namespace) -> None:
    signal = astronaut(args.size).to(args.device)
    rows = []
    for tiles, hidden, layers in (("32x32", 64, 4), ("16x16", 64, 4), ("4x4", 64, 4)):
        grid = make_grid(signal, tiles)
        field = FieldConfig(hidden=hidden, layers=layers)
        kilo = KiloLoop(signal, grid, field, LoopOptions(steps=args.steps, log_every=args.steps), optim="lbfgs")
        start = time.perf_counter()
        outcome = kilo.run()
        batched_s = outcome.time_s
        wall = time.perf_counter() - start
        loop_s, outputs = loop_of_tiles(KiloSignal(signal, grid), field, args.steps)
        loop_psnr = metrics.psnr(grid.stitch(outputs).clamp(0, 1), signal.targets)
        rows.append({"tiles": tiles, "num_tiles": grid.num_tiles, "points_per_tile": grid.points_per_tile,
                     "field": f"{layers}x{hidden}", "steps": args.steps, "batched_s": batched_s, "batched_wall_s": wall,
                     "loop_s": loop_s, "speedup": loop_s / batched_s, "batched_psnr": outcome.final_metrics["psnr"],
                     "loop_psnr": loop_psnr})  # fmt: skip
        print(rows[-1], flush=True)
    lines = [
        "# Kilo training: all tiles at once vs a Python loop over tiles", "",
        f"astronaut {args.size}x{args.size} RGB, {args.steps} L-BFGS iterations per tile, same initial weights. "
        "Batched: one BatchedMLP + BatchedLBFGS (history 20) over all tiles (training time of the fit loop, "
        "evaluation excluded). Loop: one CoordinateMLP + LBFGS (history 20) per tile, trained one after the other "
        "(optimizer steps only). Both should end at the same PSNR (same algorithm per tile).", "",
        f"Machine: {machine_facts()}", "",
        "| tiles | points/tile | field | batched | loop | speed-up | PSNR batched | PSNR loop |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['tiles']} ({r['num_tiles']}) | {r['points_per_tile']} | {r['field']} | {r['batched_s']:.2f} s | "
                     f"{r['loop_s']:.2f} s | {r['speedup']:.1f}x | {r['batched_psnr']:.2f} dB | {r['loop_psnr']:.2f} dB |")  # fmt: skip
    write(args.results_dir, args.loop_name, {"machine": machine_facts(), "rows": rows}, "\n".join(lines) + "\n")


def memory_child(size: int, tiles: str, group: int | None, steps: int) -> dict[str, Any]:
    """Runs in a subprocess: load (upscale) the photo, fit it in groups, report peak RSS and timing."""
    signal = astronaut(size)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grid = make_grid(signal, tiles)
    loop = KiloLoop(signal, grid, FieldConfig(), LoopOptions(steps=steps, log_every=steps), optim="lbfgs", group=group)
    start = time.perf_counter()
    outcome = loop.run()
    return {"size": size, "tiles": tiles, "group": group or grid.num_tiles, "num_tiles": grid.num_tiles,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "after_load_rss_mib": after_load / 1024,
            "signal_mib": signal.targets.numel() * 4 / 2**20, "psnr": outcome.final_metrics.get("psnr"),
            "wall_s": time.perf_counter() - start, "steps_per_group": steps}  # fmt: skip


def part_memory(args: argparse.Namespace) -> None:
    rows = []
    for group in args.memory_groups:
        command = [sys.executable, "-m", "benchmarks.kilo_bench", "memory-child", "--size", str(args.memory_size),
                   "--tiles", args.memory_tiles, "--group", str(group), "--steps", "2", "--threads", str(args.threads)]  # fmt: skip
        # Large blocks through mmap: freed groups go back to the OS. With glibc's default heap the same runs peaked at
        # 2.1-4.1 GiB here, unordered by group size: fragmentation across groups, not live memory.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True, env=env)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    tiles = rows[0]["num_tiles"]
    lines = [
        "# Kilo grouped streaming: peak memory against group size", "",
        f"astronaut upscaled to {args.memory_size}x{args.memory_size} RGB (synthetic: bilinear upscaling of the 512² photo, scikit-image resize order 1), "
        f"--kilo {args.memory_tiles} ({tiles} tiles), 4x64 sine per tile, L-BFGS (history 20), 2 steps per group "
        "(memory, not quality, is measured). One subprocess per group size; peak = the process's maximum RSS "
        "(includes Python, torch, the signal with its coordinates, and the stitched reconstruction). Children run with "
        "MALLOC_MMAP_THRESHOLD_=65536: with glibc's default heap the same runs peaked at 2.1-4.1 GiB, unordered by "
        "group size (heap fragmentation across groups, not live memory).", "",
        f"Machine: {machine_facts()}", "",
        "| tiles at once | peak RSS | RSS after loading the signal | signal targets alone | wall |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['group']} of {r['num_tiles']} | {r['peak_rss_mib']:.0f} MiB | {r['after_load_rss_mib']:.0f} MiB | "
                     f"{r['signal_mib']:.0f} MiB | {r['wall_s']:.0f} s |")  # fmt: skip
    write(args.results_dir, args.memory_name, {"machine": machine_facts(), "rows": rows}, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["image", "loop", "memory", "video", "all", "memory-child"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=90.0, help="training seconds per run (image, video)")
    parser.add_argument("--size", type=int, default=256, help="photo side for image/loop")
    parser.add_argument("--tiles", default="4x4", help="--kilo for the image race")
    parser.add_argument("--photo", type=Path, default=None,
                        help="image race on this photo instead of the astronaut at --size, e.g. benchmarks/data/kleiber_2048.jpg")
    parser.add_argument("--image-name", default="kilo_image", help="results file name for the image part")
    parser.add_argument("--steps", type=int, default=10, help="L-BFGS steps (loop; memory-child)")
    parser.add_argument("--memory-size", type=int, default=2048)
    parser.add_argument("--memory-tiles", default="16x16")
    parser.add_argument("--memory-groups", type=int, nargs="+", default=[4, 16, 64], help="tiles at once, one run each")
    parser.add_argument("--memory-name", default="kilo_memory", help="results file name for the memory part")
    parser.add_argument("--group", type=int, default=None)
    parser.add_argument("--compile", choices=["on", "off"], default="on",
                        help="image and video races: compile each run's field, as nf-fit --compile auto does for them")
    parser.add_argument("--device", default="cpu", help="image and loop parts: cpu or cuda")
    parser.add_argument("--loop-name", default="kilo_loop", help="results file name for the loop part")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part == "memory-child":
        print(json.dumps(memory_child(args.size, args.tiles, args.group, args.steps)))
        return
    parts = {"image": part_image, "loop": part_loop, "memory": part_memory, "video": part_video}
    for name in parts if args.part == "all" else [args.part]:
        parts[name](args)


if __name__ == "__main__":
    main()
