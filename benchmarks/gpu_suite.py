"""The GPU suite: every figure the project needs from one GPU, in one command of at most ~8 minutes on an H200.

``python -m benchmarks.gpu_suite`` on a machine with CUDA; ``--reduced`` runs every step with tiny settings on
the CPU (what the tests check). Steps, each a subprocess with its own time cap, so one failure or overrun does not
stop the others:

1. the CUDA-only tests (the tests that skip without a GPU);
2. L-BFGS vs Adam (lr 1e-3) on a 256² and a 1024² photo, full batch (nf-bench);
3. Kilo, all tiles at once vs a loop over tiles, 1024 tiles of 64 points (kilo_bench loop);
4. KiloImage on the 2048² photo, 20x20 tiles, L-BFGS vs Adam 1e-3 (nf-bench --kilo);
5. gauss-esgd vs gauss-adam NeRF at paper 2's 2048 rays x 128 samples (nerf_bench);
6. the roofline on CUDA.

Results: each step writes its own ``benchmarks/results/gpu_*.md/.json``; the suite writes ``gpu_suite.md/.json``
with the device name, every step's command, exit status and wall time. On a bare GPU machine (a CUDA torch but not
this project's venv) install the carried wheels first: ``--wheels .whl`` (``make gpu-wheels`` fills ``.whl``
here with the few pure-Python packages such a machine lacks; see benchmarks/README.md). The NeRF step needs
nerfstudio, too large to carry: without it the step is reported as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skimage.data

from benchmarks.common import RESULTS, machine_facts, write_results

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(skimage.data.__file__).parent
BIG_PHOTO = REPO / "benchmarks" / "data" / "kleiber_2048.jpg"


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    """Arguments after ``python``."""
    timeout_s: float
    needs: str | None = None
    """A module the step imports that a bare GPU machine may lack: without it the step is reported as skipped."""


def steps(device: str, reduced: bool, results: Path) -> list[Step]:
    """The suite; ``reduced`` keeps every step but shrinks sizes and budgets to seconds."""
    small, large, big, budget = (16, 32, 64, 1.0) if reduced else (256, 1024, 2048, 45.0)

    def bench(name: str, photo: Path, resize: int, optims: str, budget: float, *extra: str) -> list[str]:
        return ["-m", "fitters.cli.bench", str(photo), "--signal.resize", str(resize), str(resize), "--optims",
                optims, "--batch-size", "0", "--time-budget", str(budget), "--device", device, "--name", name,
                "--results-dir", str(results), *extra]  # fmt: skip

    tests = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests/nf_precond", "tests/fitters"]
    return [
        Step("cuda_tests", tests + (["--collect-only"] if reduced else []), 120),
        Step("lbfgs_vs_adam_256", bench("gpu_lbfgs_vs_adam_256", PHOTOS / "astronaut.png", small, "adam@1e-3,lbfgs",
                                        budget), 90),  # fmt: skip
        Step("lbfgs_vs_adam_1024", bench("gpu_lbfgs_vs_adam_1024", PHOTOS / "hubble_deep_field.jpg", large,
                                         "adam@1e-3,lbfgs", budget), 90),  # fmt: skip
        Step("kilo_loop_1024_tiles", ["-m", "benchmarks.kilo_bench", "loop", "--device", device, "--size",
                                      "64" if reduced else "256", "--steps", "2" if reduced else "20", "--loop-name",
                                      "gpu_kilo_loop", "--results-dir", str(results)], 90),  # fmt: skip
        Step("kilo_image_2048", bench("gpu_kilo_image_2048", BIG_PHOTO, big, "adam@1e-3,lbfgs", 2 * budget,
                                      "--kilo", "4x4" if reduced else "20x20"), 150),  # fmt: skip
        # Paper 2's NeRF setting (2048 rays x 128 uniform samples), every method for 20 s of wall time.
        Step("nerf_gauss_esgd_vs_adam", ["-m", "benchmarks.nerf_bench", "--device", device, "--out", str(results),
                                         "--name", "gpu_nerf"] + (["--smoke"] if reduced else
                                         ["--minutes", "0.33", "--rays", "2048", "--samples", "128",
                                          "--importance-samples", "0"]), 240, needs="nerfstudio"),  # fmt: skip
        Step("roofline", ["-m", "benchmarks.roofline", "--device", device] + (["--smoke"] if reduced else []), 60),
    ]


def run_step(step: Step) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"gpu_suite: {step.name}", file=sys.stderr, flush=True)
    if step.needs is not None and importlib.util.find_spec(step.needs) is None:
        return {"name": step.name, "command": "python " + " ".join(step.argv), "status": f"skipped: no {step.needs}",
                "wall_s": 0.0, "output_tail": ""}  # fmt: skip
    try:
        result = subprocess.run([sys.executable, *step.argv], cwd=REPO, capture_output=True, text=True,
                                timeout=step.timeout_s)  # fmt: skip
        status, tail = result.returncode, (result.stdout + result.stderr)[-2000:]
    except subprocess.TimeoutExpired as error:
        status, tail = "timeout", str(error)[-2000:]
    return {"name": step.name, "command": "python " + " ".join(step.argv), "status": status,
            "wall_s": round(time.perf_counter() - started, 1), "output_tail": tail}  # fmt: skip


def install_wheels(folder: Path) -> None:
    """Install the carried wheels (``make gpu-wheels``: the pure-Python packages the suite needs beyond a CUDA
    machine's usual stack) without an index or their dependencies, keeping the machine's own torch; the project
    itself runs from this checkout."""
    wheels = sorted(str(path) for path in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu_suite: error: no wheels in {folder}; fill it with make gpu-wheels")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *wheels], check=True)


def markdown(report: dict[str, Any]) -> str:
    facts = report["machine"]
    lines = [f"# GPU suite on {facts['device']}", "",
             f"torch {facts['torch']}, {facts['cpu']} ({facts['cores']} cores). Total wall {report['wall_s']:.0f} s"
             + (" (reduced mode: sizes and budgets cut to seconds, not figures)" if report["reduced"] else "") + ".",
             "", "| step | status | wall s | command |", "|---|---|---|---|"]  # fmt: skip
    for row in report["steps"]:
        lines.append(f"| {row['name']} | {row['status']} | {row['wall_s']} | `{row['command']}` |")
    lines += ["", "Each step's figures are in its own `gpu_*.md` (and `roofline_cuda.md`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="tiny sizes and budgets on the CPU (for the tests)")
    parser.add_argument("--only", nargs="+", help="run only these steps (by name)")
    parser.add_argument("--wheels", type=Path, help="install the project from carried wheels in this folder first")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where every step writes its results")
    args = parser.parse_args(argv)
    import torch

    if not args.reduced and not torch.cuda.is_available():
        print("gpu_suite: error: no CUDA device here; run it on a GPU machine, or use --reduced on the CPU",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.wheels is not None:
        install_wheels(args.wheels)
    device = "cpu" if args.reduced else "cuda"
    chosen = [step for step in steps(device, args.reduced, args.results_dir)
              if not args.only or step.name in args.only]  # fmt: skip
    started = time.perf_counter()
    rows = [run_step(step) for step in chosen]
    report = {"reduced": args.reduced, "machine": machine_facts(), "wall_s": time.perf_counter() - started,
              "steps": rows}  # fmt: skip
    write_results("gpu_suite", report, markdown(report), args.results_dir)
    print(markdown(report))
    return 0 if all(row["status"] == 0 or str(row["status"]).startswith("skipped") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
