"""What ``nf-fit --viewer`` costs a run: the same short fit through ``fitters.cli.run`` with and without the viewer.

    python -m benchmarks.viewer_overhead [--steps 150] [--repeats 3] [--size 128] [--threads N] [--device cpu]

A 4x64 sine CoordinateMLP fits the bundled astronaut photo resized to ``size``^2 with Adam, full batch, so the loop
logs (evaluates and calls the viewer) every step and renders a preview image at most twice a second, exactly as
``nf-fit --viewer`` does. While the viewer runs, a separate process holds a websocket open and drains everything
the server sends, standing in for a browser (without a browser's rendering load on this machine). Runs alternate
plain/viewer, swapping the order each repeat, so machine noise hits both alike; the ratio of the medians of the
whole-run wall time (start-up, fit and close) is the headline number. Also reported: the viewer's start+close cost on
its own, the cost of one ``Viewer.update`` call on the training thread, and of one background push.
Writes ``benchmarks/results/viewer_overhead.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fitters.cli import run
from fitters.config import FitConfig
from fitters.signal import SignalOptions
from fitters.viewer import Viewer

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


def fit_once(args: argparse.Namespace, out: Path, viewer: bool) -> dict[str, float]:
    """One full ``nf-fit`` run (minus argument parsing); with ``viewer``, a draining client stays connected."""
    port = free_port()
    config = FitConfig(
        path=PHOTO, optim="adam", act="sine", hidden=64, layers=4, batch_size=0, steps=args.steps,
        device=args.device, threads=args.threads, out=out, overwrite=True, viewer=viewer, viewer_port=port,
        signal=SignalOptions(resize=(args.size, args.size)),
    )
    client = None
    if viewer:
        client = subprocess.Popen(
            [sys.executable, "-c", DRAIN_CLIENT, f"ws://127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    outcome, _, _ = run(config, progress=False)
    wall_s = time.perf_counter() - start
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
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)

    runs: dict[str, list[dict[str, float]]] = {"plain": [], "viewer": []}
    with tempfile.TemporaryDirectory() as scratch:
        # Warm-up (imports viser and plotly, first torch kernels); not recorded.
        for viewer in (False, True):
            fit_once(args, Path(scratch) / f"warmup-{viewer}", viewer)
        for repeat in range(args.repeats):
            order = ("plain", "viewer") if repeat % 2 == 0 else ("viewer", "plain")
            for mode in order:
                result = fit_once(args, Path(scratch) / f"{mode}-{repeat}", mode == "viewer")
                runs[mode].append(result)
                print(f"repeat {repeat} {mode:6s} wall {result['wall_s']:.2f} s  train {result['train_s']:.2f} s",
                      file=sys.stderr)

    rng = np.random.default_rng(1)
    start_close_s = startup_cost(3, rng.integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8))
    update_us, push_ms = update_and_push_cost(args.size)

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    plain_wall, viewer_wall = median("plain", "wall_s"), median("viewer", "wall_s")
    summary = {
        "wall_ratio": viewer_wall / plain_wall,
        "wall_ratio_without_start_close": (viewer_wall - start_close_s) / plain_wall,
        "train_time_ratio": median("viewer", "train_s") / median("plain", "train_s"),
        "plain_wall_s": plain_wall,
        "viewer_wall_s": viewer_wall,
        "viewer_start_close_s": start_close_s,
        "update_us_per_call": update_us,
        "push_ms": push_ms,
        "viewer_logs_per_run": median("viewer", "logs"),
        "bytes_to_client_per_run": median("viewer", "bytes_to_client"),
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
        f"| whole-run wall time, viewer / plain | **{s['wall_ratio']:.3f}** |",
        f"| same, viewer start+close subtracted | {s['wall_ratio_without_start_close']:.3f} |",
        f"| training time (`time_s`, logging excluded), viewer / plain | {s['train_time_ratio']:.3f} |",
        f"| plain run wall time | {s['plain_wall_s']:.2f} s |",
        f"| viewer run wall time | {s['viewer_wall_s']:.2f} s |",
        f"| viewer start + close | {s['viewer_start_close_s']:.3f} s |",
        f"| `Viewer.update` on the training thread | {s['update_us_per_call']:.1f} µs/call |",
        f"| one background push (text, plot, new image) | {s['push_ms']:.1f} ms |",
        f"| logs (viewer updates) per run | {s['viewer_logs_per_run']:.0f} |",
        f"| bytes sent to the connected client per run | {s['bytes_to_client_per_run']:.0f} |",
        "",
    ]
    for name, text in (("viewer_overhead.json", json.dumps(results, indent=2) + "\n"),
                       ("viewer_overhead.md", "\n".join(lines))):
        with tempfile.NamedTemporaryFile("w", dir=RESULTS, delete=False, suffix=".tmp") as handle:
            handle.write(text)
        os.replace(handle.name, RESULTS / name)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
