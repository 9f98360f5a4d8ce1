"""Improving ours where the leaderboard shows a gap: Adam for the first seconds, then L-BFGS, on full-batch photos.

    python -m benchmarks.adam_then_lbfgs [--switch 0,5,15] [--budget 60] [--activation sine]
    python -m benchmarks.adam_then_lbfgs --smoke     # tiny photos and budget, results to a temporary folder

The full-batch sine board (``leaderboard.md``) has L-BFGS 1.70x sooner than the tuned Adam to Adam's 60-s PSNR, not
the 3x the peer-race issue asks for, with the same step cost: the gap is L-BFGS's iterations, and its first steps
from random weights are the least efficient (the curvature pairs describe a landscape the weights leave fast). The
idea tested here is the common remedy: take Adam's cheap first steps, then switch the same weights to L-BFGS (fresh
history). The variants (raced as ``benchmarks.phased`` describes):

- ``adam``: Adam at ``--adam-lr`` (the full/sine board's sweep winner) for the whole budget: the baseline;
- ``lbfgs``: L-BFGS for the whole budget (switch 0);
- ``adam S s, then lbfgs``: Adam for S seconds, then L-BFGS for the rest.

The switch is kept only if its median speed-up beats plain L-BFGS's. Results go to
``benchmarks/results/adam_then_lbfgs.{md,json}``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.phased import Phase, Variant, experiment_parser, parse, run_experiment

SMOKE = {"budget": 2.0, "size": 16, "switch": "0,0.5", "compile": "off"}
"""--smoke: a few seconds per run on tiny eager fields."""
LBFGS = Phase("lbfgs", 1.0)


def variants(switches: list[float], adam_lr: float) -> list[Variant]:
    adam = Variant("adam", (Phase("adam", adam_lr),))
    return [adam, *(Variant("lbfgs", (LBFGS,)) if switch == 0 else
                    Variant(f"adam {switch:g} s, then lbfgs", (Phase("adam", adam_lr, switch), LBFGS))
                    for switch in switches)]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = experiment_parser(__doc__)
    parser.add_argument("--switch", default="0,5,15", help="seconds of Adam before L-BFGS, comma-separated (0: L-BFGS)")
    args = parse(parser, argv, SMOKE)
    switches = [float(part) for part in args.switch.split(",") if part.strip()]
    if any(not 0 <= switch < args.budget for switch in switches):
        parser.error(f"--switch: every switch must lie in [0, --budget {args.budget:g})")
    return run_experiment("adam_then_lbfgs", "Adam first, then L-BFGS (full batch)", args, argv,
                          variants(switches, args.adam_lr), idea="switch")


if __name__ == "__main__":
    main()
