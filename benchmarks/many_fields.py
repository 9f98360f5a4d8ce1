"""Many fields at once: fields per second of ``nf-fit DIR`` batched, a loop of single fits, and Ray, in one run.

    python -m benchmarks.many_fields [--count 256] [--size 64] [--steps 100] [--optims lbfgs,adam@1e-3] [--threads N]
    python -m benchmarks.many_fields --smoke     # tiny counts, results to a temporary folder: proves it runs

The signals are ``--count`` crops of ``--size`` x ``--size`` pixels cut in raster order, without overlap, from the
color photos bundled with scikit-image (astronaut, coffee, rocket, chelsea, immunohistochemistry: 270 crops of 64²),
written as PNG files into a temporary folder. For every optimizer three modes fit them all, from the same initial
weights (``--seed``) and with the same settings (the batched optimizer's, e.g. L-BFGS with 20 curvature pairs):

- ``batched``: ``fitters.dataset.run_dataset`` in this process, in ``nf-fit DIR``'s default groups (on a CPU, as
  many fields as keep a layer's activations cache-sized: one 64x64 crop with a 64-wide field);
- ``batched-G`` (``--compare-group G``, default 64): the same with ``--group G``, the many-fields-per-product
  grouping a GPU wants, to show what it costs on this machine;
- ``loop``: one ``CoordinateMLP`` per file fitted by ``FitLoop``, one after the other, in this process;
- ``ray``: ``run_dataset`` with its groups as Ray tasks on a local runtime with one CPU per task, as many tasks as
  this process has torch threads (the runtime is started and its workers warmed up before the clock starts).

Each mode is timed on the wall clock from the first file read to the last output written (every mode writes each
field's reconstruction and weights), so fields/s compares whole jobs. The report gives fields/s, the speed-ups
(batched vs loop: the issue's target is >= 5x; Ray vs batched: <= 15 % slower), mean PSNR per mode with the largest
per-signal differences (targets: batched vs loop within 0.1 dB, Ray vs batched within 1e-4 dB) and the peak
resident memory of this process and its children (Ray's included) during each mode. Results go to
``benchmarks/results/many_fields.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import psutil
import torch
from skimage import data

from fitters.build import loop_options
from fitters.config import FitConfig
from fitters.dataset import resolve_dataset, run_dataset
from fitters.distributed import LocalEngine, RayEngine
from fitters.loop import FitLoop, make_predict
from fitters.machine import machine_facts
from fitters.signals import load_signal
from fitters.weights import WEIGHTS_NAME, save_field
from nf_precond.atomic import atomic_write_text
from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import build_optimizer, optimizer_spec
from nf_precond.sampling import FullBatch

RESULTS = Path(__file__).parent / "results"
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry")
"""scikit-image's bundled color photos, in the order their crops are taken."""
MODES = ("batched", "loop", "ray")
"""The modes every run has; ``--compare-group`` adds ``batched-G``."""
SMOKE = {"count": 6, "size": 16, "steps": 4, "hidden": 16, "layers": 2}
"""--smoke: a handful of tiny crops and steps, just enough to run every mode end to end."""


def crops(count: int, size: int) -> Iterator[np.ndarray]:
    """The first ``count`` non-overlapping ``size`` x ``size`` crops of ``PHOTOS``, photo by photo, in raster order."""
    made = 0
    for name in PHOTOS:
        image = getattr(data, name)()
        for top in range(0, image.shape[0] - size + 1, size):
            for left in range(0, image.shape[1] - size + 1, size):
                if made == count:
                    return
                yield image[top : top + size, left : left + size, :3]
                made += 1
    if made < count:
        raise SystemExit(f"many_fields: the photos give only {made} crops of {size}x{size}; lower --count or --size")


def resident(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:  # a worker that just exited
        return 0


@contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Sample resident memory every 50 ms: the peak of this process (``driver_gib``) and how far this process and all
    its children (Ray's workers and daemons) rose above their level at the start (``added_gib``)."""
    me, stop = psutil.Process(), threading.Event()
    tree = lambda: resident(me) + sum(resident(child) for child in me.children(recursive=True))  # noqa: E731
    start, result = tree(), {"driver_gib": 0.0, "added_gib": 0.0}

    def sample() -> None:
        while not stop.is_set():
            result["driver_gib"] = max(result["driver_gib"], resident(me) / 2**30)
            result["added_gib"] = max(result["added_gib"], (tree() - start) / 2**30)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()


def single_fits(config: FitConfig, files: list[Path], out: Path) -> list[float]:
    """The baseline: each file fitted alone (``CoordinateMLP`` seeded as nf-fit seeds it, the batched optimizer's
    settings), writing its reconstruction and weights like the dataset runner; returns the PSNRs."""
    config = resolve_dataset(config)
    psnrs = []
    for path in files:
        signal = load_signal(path, config.signal)
        torch.manual_seed(config.seed)
        model = CoordinateMLP(signal.in_features, signal.out_features, config.field)
        settings = {**optimizer_spec(config.optim, batched=True).defaults, "lr": config.lr}
        optimizer = build_optimizer(config.optim, model, **settings)
        outcome = FitLoop(signal, model, optimizer, FullBatch(), loop_options(config)).run()
        folder = out / path.stem
        folder.mkdir(parents=True)
        signal.save_reconstruction(make_predict(model, config.eval_chunk), folder)
        save_field(model, folder / WEIGHTS_NAME)
        atomic_write_text(folder / "summary.json", json.dumps(outcome.final_metrics) + "\n")
        psnrs.append(outcome.final_metrics["psnr"])
    return psnrs


def timed(run: Callable[[], list[float]]) -> dict[str, Any]:
    with peak_memory() as memory:
        started = time.perf_counter()
        psnrs = run()
        wall_s = time.perf_counter() - started
    return {"wall_s": wall_s, "fields_per_s": len(psnrs) / wall_s, "peak_rss_gib": memory["driver_gib"],
            "added_rss_gib": memory["added_gib"], "mean_psnr": statistics.fmean(psnrs), "psnrs": psnrs}  # fmt: skip


def modes(args: argparse.Namespace) -> tuple[str, ...]:
    return (*MODES, f"batched-{args.compare_group}") if args.compare_group else MODES


def race(optim: str, lr: float | None, files: list[Path], field: FieldConfig, args: argparse.Namespace,
         work: Path, ray_engine: RayEngine) -> dict[str, Any]:  # fmt: skip
    """Every mode for one optimizer."""
    base = FitConfig(path=files[0].parent, optim=optim, lr=lr, steps=args.steps, field=field, seed=args.seed,
                     threads=args.threads)  # fmt: skip
    results: dict[str, Any] = {}
    for mode in modes(args):
        out = work / f"{optim}-{mode}"
        print(f"many_fields: {optim} {mode} ({len(files)} fields)", file=sys.stderr)
        if mode == "loop":
            results[mode] = timed(lambda: single_fits(base, files, out))
            results[mode]["groups"] = len(files)
        else:
            group = args.compare_group if mode.startswith("batched-") else None
            config = dataclasses.replace(base, out=out, ray="local" if mode == "ray" else None, group=group)
            engine = ray_engine if mode == "ray" else LocalEngine()
            results[mode] = timed(lambda: [s["psnr"] for s in run_dataset(config, engine).summaries])
            results[mode]["groups"] = len(json.loads((out / ".dataset" / "plan.json").read_text())["groups"])
    batched, loop, remote = (np.array(results[mode]["psnrs"]) for mode in MODES)
    speed = {mode: row["fields_per_s"] / results["loop"]["fields_per_s"] for mode, row in results.items()}
    return {
        "optim": optim, "lr": resolve_dataset(base).lr, "modes": results,
        "speedup_vs_loop": speed, "batched_vs_loop_speedup": speed["batched"],
        "ray_cost_vs_batched": 1 - results["ray"]["fields_per_s"] / results["batched"]["fields_per_s"],
        "max_psnr_diff_batched_vs_loop_db": float(np.abs(batched - loop).max()),
        "within_0.1_db_batched_vs_loop": int((np.abs(batched - loop) <= 0.1).sum()),
        "max_psnr_diff_ray_vs_batched_db": float(np.abs(remote - batched).max()),
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    facts = report["machine"]
    lines = [
        "# Many fields at once: batched vs a loop of single fits vs Ray",
        "",
        f"{report['count']} crops of {report['size']}x{report['size']} pixels from scikit-image's photos; "
        f"{report['field']} sine fields, {report['steps']} steps each, full batch, seed {report['seed']}; "
        f"{report['threads']} torch threads (Ray: {report['ray_tasks']} one-CPU tasks); {facts['cpu']}, "
        f"load {facts['load_average_1min']}. Times are wall clock for the whole job (reading, fitting, writing).",
        "",
        "| optim | mode | groups | fields/s | x loop | wall s | mean PSNR | peak RSS GiB (this process) "
        "| added RSS GiB (with Ray's processes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for mode, row in run["modes"].items():
            lines.append(f"| {run['optim']} (lr {run['lr']:g}) | {mode} | {row['groups']} | "
                         f"{row['fields_per_s']:.3g} | {run['speedup_vs_loop'][mode]:.2f} | {row['wall_s']:.1f} | {row['mean_psnr']:.2f} | {row['peak_rss_gib']:.2f} | "
                         f"{row['added_rss_gib']:.2f} |")  # fmt: skip
    lines += ["", "| optim | batched / loop fields/s (target >= 5) | Ray cost vs batched (target <= 15 %) | "
              "max PSNR diff batched vs loop dB (target <= 0.1) | signals within 0.1 dB | "
              "max PSNR diff Ray vs batched dB (target <= 1e-4) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for run in report["runs"]:
        lines.append(f"| {run['optim']} | {run['batched_vs_loop_speedup']:.2f}x | "
                     f"{100 * run['ray_cost_vs_batched']:.1f} % | {run['max_psnr_diff_batched_vs_loop_db']:.2g} | "
                     f"{run['within_0.1_db_batched_vs_loop']} of {report['count']} | "
                     f"{run['max_psnr_diff_ray_vs_batched_db']:.2g} |")  # fmt: skip
    lines += ["", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def parse_optims(text: str) -> list[tuple[str, float | None]]:
    runs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, lr = item.partition("@")
        runs.append((name, float(lr) if lr else None))
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256, help="signals (crops)")
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per field")
    parser.add_argument("--optims", default="lbfgs,adam@1e-3", help="NAME[@LR],... (optimizers with a batched variant)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-group", type=int, default=64,
                        help="also fit in groups of this many fields (mode batched-G); 0 skips it")  # fmt: skip
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads, and Ray tasks in parallel")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: benchmarks/results (--smoke: a temporary folder)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to prove the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    field = FieldConfig(hidden=args.hidden, layers=args.layers)
    with tempfile.TemporaryDirectory(prefix="many_fields-") as scratch:
        work = Path(scratch)
        photos = work / "photos"
        photos.mkdir()
        for index, crop in enumerate(crops(args.count, args.size)):
            iio.imwrite(photos / f"crop{index:04d}.png", crop)
        files = sorted(photos.iterdir())
        import ray

        ray.init(num_cpus=args.threads, include_dashboard=False, logging_level="WARNING")
        try:
            ray_engine = RayEngine(threads=1)
            # Before any clock starts: one-step fits of a few crops in this process and in every Ray worker (worker
            # start-up, first-use imports of PNG, safetensors and matplotlib).
            few = work / "warm-up"
            few.mkdir()
            for path in files[: args.threads]:
                (few / path.name).write_bytes(path.read_bytes())
            for name, engine in (("local", LocalEngine()), ("ray", ray_engine)):
                run_dataset(FitConfig(path=few, steps=1, field=field, group=1, threads=args.threads,
                                      out=work / f"warm-up-{name}"), engine)  # fmt: skip
            runs = [race(optim, lr, files, field, args, work, ray_engine) for optim, lr in parse_optims(args.optims)]
        finally:
            ray.shutdown()
    report = {
        "count": args.count, "size": args.size, "steps": args.steps, "seed": args.seed, "threads": args.threads,
        "ray_tasks": args.threads, "field": f"{args.layers}x{args.hidden}", "machine": machine_facts(),
        "command": "python -m benchmarks.many_fields " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": runs,
    }  # fmt: skip
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="many_fields-results-")) if args.smoke else RESULTS)
    results_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:  # the per-signal PSNRs stay in the JSON only
        for row in run["modes"].values():
            row["psnrs"] = [round(value, 6) for value in row["psnrs"]]
    atomic_write_text(results_dir / "many_fields.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(results_dir / "many_fields.md", markdown(report))
    print(markdown(report))
    print(f"many_fields: wrote {results_dir / 'many_fields.md'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
