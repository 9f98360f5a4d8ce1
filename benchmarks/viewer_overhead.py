"""What ``nf-fit --viewer`` costs a run, measured two ways with and without the viewer, in one process.

    python -m benchmarks.viewer_overhead [--steps 100] [--repeats 3] [--size 128] [--threads N] [--device cpu]

A 4x64 sine CoordinateMLP fits the bundled astronaut photo resized to ``size``^2 with Adam, full batch, so the loop
logs (evaluates and calls the viewer) every step and a preview image is rendered at most twice a second, as
``nf-fit --viewer`` does.

- *nf-fit end to end*: ``fitters.cli.run`` with ``viewer`` off/on: what a user sees, including the viewer's start-up
  and the preview renders the CLI adds only when the viewer is on.
- *Viewer alone*: ``FitLoop.run`` with previews rendered at the same rate in both arms, the viewer started before
  and closed after the timed part: the cost of ``Viewer.update`` plus its background pushes.

While a viewer runs, a separate process holds a websocket open and drains everything the server sends, standing in
for a browser (without a browser's rendering load on this machine). Runs alternate plain/viewer, swapping the order
each repeat, so machine noise hits both alike; ratios are of medians within this run. Also reported: the viewer's
start+close time, one ``Viewer.update`` call on the training thread, and one background push.
Writes ``benchmarks/results/viewer_overhead.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fitters.build import build_components, loop_options
from fitters.cli.fit import PREVIEW_INTERVAL_S, run
from fitters.config import FitConfig, apply_threads, resolve, with_log_interval
from fitters.loop import FitLoop, FitOutcome, Preview
from fitters.signals import load_signal
from fitters.signals import SignalOptions
from fitters.viewer import Viewer
from nf_precond.atomic import atomic_write_text
from nf_precond.nn import FieldConfig

RESULTS = Path(__file__).parent / "results"
PHOTO = Path(__file__).parent.parent / "examples" / "astronaut_256.png"

# A websocket client in its own process (so it takes no GIL from the fit): say "ready" once imported (the run starts
# only then, so its start-up is not billed to the viewer), connect once the port is up, read until the server
# closes, and print how many bytes arrived.
DRAIN_CLIENT = """
import sys, time
from websockets.sync.client import connect
print("ready", flush=True)
url, received, deadline = sys.argv[1], 0, time.monotonic() + 120
while True:
    try:
        websocket = connect(url, max_size=None, open_timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
try:
    for message in websocket:
        received += len(message)
except Exception:
    pass
print(received)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fit_config(args: argparse.Namespace, out: Path, viewer: bool, port: int) -> FitConfig:
    return FitConfig(
        path=PHOTO, optim="adam", field=FieldConfig(activation="sine", hidden=64, layers=4), batch_size=0, steps=args.steps,
        device=args.device, threads=args.threads, out=out, overwrite=True, viewer=viewer, viewer_port=port,
        signal=SignalOptions(resize=(args.size, args.size)),
    )


def fit_cli(config: FitConfig) -> tuple[float, FitOutcome]:
    """Seconds for one whole ``nf-fit`` run (minus argument parsing): viewer start-up, fit, run directory, close."""
    start = time.perf_counter()
    outcome, _, _ = run(config, progress=False)
    return time.perf_counter() - start, outcome


def fit_loop(config: FitConfig) -> tuple[float, FitOutcome]:
    """Seconds for ``FitLoop.run`` alone, previews rendered at nf-fit's rate in BOTH arms, so the only difference
    between the arms is the Viewer (started before and closed after the timed part)."""
    config = resolve(config)
    apply_threads(config)
    signal = load_signal(config.path, config.signal).to(config.device)
    config = with_log_interval(config, signal.num_samples)
    model, optimizer, sampler = build_components(config, signal)
    viewer = Viewer(signal.target_preview(), port=config.viewer_port) if config.viewer else None
    last_preview = -math.inf

    def on_log(record: dict, preview: Preview) -> None:
        nonlocal last_preview
        image = None
        if time.monotonic() - last_preview >= PREVIEW_INTERVAL_S:
            image, last_preview = preview(), time.monotonic()
        if viewer is not None:
            viewer.update(record["step"], record["time_s"], signal.metric, record[signal.metric], image)

    loop = FitLoop(signal, model, optimizer, sampler, loop_options(config), on_log=on_log)
    try:
        start = time.perf_counter()
        outcome = loop.run()
        return time.perf_counter() - start, outcome
    finally:
        if viewer is not None:
            viewer.close()


def fit_once(args: argparse.Namespace, out: Path, viewer: bool, fit: Callable) -> dict[str, float]:
    """One timed fit; with ``viewer``, a draining client stays connected to the viewer."""
    port = free_port()
    client = None
    if viewer:
        client = subprocess.Popen(
            [sys.executable, "-c", DRAIN_CLIENT, f"ws://127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "ready"
    wall_s, outcome = fit(fit_config(args, out, viewer, port))
    received = 0
    if client is not None:
        stdout, _ = client.communicate(timeout=60)
        received = int(stdout.strip() or 0)
    return {"wall_s": wall_s, "train_s": outcome.time_s, "logs": len(outcome.history), "bytes_to_client": received}


def startup_cost(repeats: int, target: np.ndarray) -> float:
    """Median seconds to start and close a Viewer (the fixed part of the overhead)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        Viewer(target, port=free_port()).close()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def update_and_push_cost(size: int, calls: int = 20_000) -> tuple[float, float]:
    """Median microseconds per ``update`` (with a fresh image each call) and milliseconds per ``push``."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(8)]
    with Viewer(frames[0], port=free_port(), refresh_s=3600.0) as viewer:  # pushes only when asked, below
        start = time.perf_counter()
        for step in range(calls):
            viewer.update(step, 0.01 * step, "psnr", 20.0 + 1e-3 * step, frames[step % len(frames)])
        update_us = (time.perf_counter() - start) / calls * 1e6
        push_ms = []
        for step in range(20):
            viewer.update(calls + step, 0.01 * (calls + step), "psnr", 30.0, frames[step % len(frames)])
            start = time.perf_counter()
            viewer.push()
            push_ms.append((time.perf_counter() - start) * 1e3)
    return update_us, statistics.median(push_ms)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)

    arms = {"cli": fit_cli, "loop": fit_loop}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {arm: {"plain": [], "viewer": []} for arm in arms}
    with tempfile.TemporaryDirectory() as scratch:
        # Warm-up (imports viser and plotly, first torch kernels); not recorded.
        for viewer in (False, True):
            fit_once(args, Path(scratch) / f"warmup-{viewer}", viewer, fit_cli)
        for repeat in range(args.repeats):
            order = ("plain", "viewer") if repeat % 2 == 0 else ("viewer", "plain")
            for arm, fit in arms.items():
                for mode in order:
                    result = fit_once(args, Path(scratch) / f"{arm}-{mode}-{repeat}", mode == "viewer", fit)
                    runs[arm][mode].append(result)
                    print(f"repeat {repeat} {arm:4s} {mode:6s} wall {result['wall_s']:.2f} s  "
                          f"train {result['train_s']:.2f} s", file=sys.stderr)

    rng = np.random.default_rng(1)
    start_close_s = startup_cost(3, rng.integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8))
    update_us, push_ms = update_and_push_cost(args.size)

    def median(arm: str, mode: str, key: str) -> float:
        return statistics.median(result[key] for result in runs[arm][mode])

    def ratio(arm: str, key: str) -> float:
        return median(arm, "viewer", key) / median(arm, "plain", key)

    def pair_ratios(arm: str) -> list[float]:
        """Per-repeat viewer / plain wall-time ratios: their spread shows how far the machine's noise reaches."""
        return [v["wall_s"] / p["wall_s"] for v, p in zip(runs[arm]["viewer"], runs[arm]["plain"])]

    summary = {
        "cli_wall_ratio": ratio("cli", "wall_s"),
        "cli_pair_ratios": pair_ratios("cli"),
        "loop_pair_ratios": pair_ratios("loop"),
        "cli_train_time_ratio": ratio("cli", "train_s"),
        "loop_wall_ratio": ratio("loop", "wall_s"),
        "loop_train_time_ratio": ratio("loop", "train_s"),
        "cli_plain_wall_s": median("cli", "plain", "wall_s"),
        "cli_viewer_wall_s": median("cli", "viewer", "wall_s"),
        "loop_plain_wall_s": median("loop", "plain", "wall_s"),
        "loop_viewer_wall_s": median("loop", "viewer", "wall_s"),
        "viewer_start_close_s": start_close_s,
        "update_us_per_call": update_us,
        "push_ms": push_ms,
        "viewer_logs_per_run": median("cli", "viewer", "logs"),
        "bytes_to_client_per_run": median("cli", "viewer", "bytes_to_client"),
    }
    setup = {
        "steps": args.steps, "repeats": args.repeats, "image": f"astronaut {args.size}x{args.size}",
        "model": "CoordinateMLP sine 4x64", "optim": "adam, full batch", "device": args.device,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0], "platform": platform.platform(),
    }
    write_results({"setup": setup, "summary": summary, "runs": runs})


def write_results(results: dict) -> None:
    """Write the JSON and a short markdown table atomically (temp file in the same folder, then replace)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    s, setup = results["summary"], results["setup"]
    lines = [
        "# Viewer overhead (`python -m benchmarks.viewer_overhead`)",
        "",
        f"{setup['model']}, {setup['optim']}, {setup['image']}, {setup['steps']} steps logged every step, "
        f"{setup['repeats']} interleaved repeats on {setup['device']} ({setup['torch_threads']} torch threads, "
        f"1-min load average {setup['load_avg_1min']:.1f} on {setup['cpu_count']} cores). Medians; ratios are "
        "viewer / plain within this run.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| **nf-fit end to end** (viewer start, fit, run directory, close): wall time, viewer / plain "
        f"| **{s['cli_wall_ratio']:.3f}** ({s['cli_viewer_wall_s']:.2f} s / {s['cli_plain_wall_s']:.2f} s) |",
        f"| same runs, training time (`time_s`, logging excluded), viewer / plain | {s['cli_train_time_ratio']:.3f} |",
        f"| **Viewer alone** (`FitLoop.run`, previews rendered in both arms): wall time, viewer / plain "
        f"| **{s['loop_wall_ratio']:.3f}** ({s['loop_viewer_wall_s']:.2f} s / {s['loop_plain_wall_s']:.2f} s) |",
        f"| same runs, training time, viewer / plain | {s['loop_train_time_ratio']:.3f} |",
        "| per-repeat wall ratios, nf-fit end to end / Viewer alone (noise) | "
        + ", ".join(f"{r:.2f}" for r in s["cli_pair_ratios"]) + " / "
        + ", ".join(f"{r:.2f}" for r in s["loop_pair_ratios"]) + " |",
        f"| viewer start + close | {s['viewer_start_close_s']:.3f} s |",
        f"| `Viewer.update` on the training thread | {s['update_us_per_call']:.1f} µs/call |",
        f"| one background push (text, plot, new image) | {s['push_ms']:.1f} ms |",
        f"| logs (viewer updates) per run | {s['viewer_logs_per_run']:.0f} |",
        f"| bytes sent to the connected client per run | {s['bytes_to_client_per_run']:.0f} |",
        "",
    ]
    for name, text in (("viewer_overhead.json", json.dumps(results, indent=2) + "\n"),
                       ("viewer_overhead.md", "\n".join(lines))):
        atomic_write_text(RESULTS / name, text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
