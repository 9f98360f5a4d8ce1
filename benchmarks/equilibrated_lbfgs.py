"""Improving ours where the leaderboard shows a gap: L-BFGS whose initial inverse Hessian is ESGD's equilibration
diagonal instead of one scale for every parameter.

    python -m benchmarks.equilibrated_lbfgs [--refresh 0,15] [--activation sine] [--adam-lr 1e-3]
    python -m benchmarks.equilibrated_lbfgs --smoke     # tiny photos and budget, results to a temporary folder

L-BFGS starts each two-loop recursion from H₀ = γI, one scale for all parameters, while the optimizers that beat it
on the full-batch Gaussian board (Adam, SOAP) scale every parameter (or block) by its own statistics. The registered
optimizer ``lbfgs-eq`` (``nf_precond.optim.equilibrated_lbfgs``) starts from ESGD's equilibration diagonal D instead,
estimated at its first step (on the clock) from 10 Hessian-vector products; this experiment decides whether it earns
its place.

The variants (raced as ``benchmarks.phased`` describes):

- ``adam``: Adam at ``--adam-lr`` (the board's sweep winner for the activation) for the whole budget: the baseline;
- ``lbfgs``: L-BFGS for the whole budget;
- ``equilibrated``: ``lbfgs-eq`` for the whole budget (D from the initial weights);
- ``equilibrated, D every R s``: a fresh ``lbfgs-eq`` (D and history) from the current weights every R seconds
  (``--refresh``).

Kept only if its median speed-up beats plain L-BFGS's. Results go to
``benchmarks/results/equilibrated_lbfgs.{md,json}`` (``--results-name`` for another activation's run).
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.phased import Phase, Variant, experiment_parser, parse, run_experiment
from nf_precond.optim import OPTIMIZERS

SMOKE = {"budget": 2.0, "size": 16, "refresh": "0,1", "compile": "off"}
"""--smoke: a few seconds per run on tiny eager fields."""
LBFGS_STEP = 1.0
"""L-BFGS's initial trial step (its registry default; the line search picks the step)."""


def variants(refreshes: list[float], budget: float, adam_lr: float) -> list[Variant]:
    def every(seconds: float) -> tuple[Phase, ...]:
        fixed = math.ceil(budget / seconds) - 1
        return (*(Phase("lbfgs-eq", LBFGS_STEP, seconds) for _ in range(fixed)), Phase("lbfgs-eq", LBFGS_STEP))

    return [Variant("adam", (Phase("adam", adam_lr),)), Variant("lbfgs", (Phase("lbfgs", LBFGS_STEP),)),
            *(Variant("equilibrated" if refresh == 0 else f"equilibrated, D every {refresh:g} s",
                      (Phase("lbfgs-eq", LBFGS_STEP),) if refresh == 0 else every(refresh))
              for refresh in refreshes)]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = experiment_parser(__doc__)
    parser.add_argument("--refresh", default="0,15",
                        help="seconds between fresh diagonals, comma-separated (0: D from the initial weights only)")
    args = parse(parser, argv, SMOKE)
    refreshes = [float(part) for part in args.refresh.split(",") if part.strip()]
    if any(not 0 <= refresh < args.budget for refresh in refreshes):
        parser.error(f"--refresh: every value must lie in [0, --budget {args.budget:g})")
    defaults = OPTIMIZERS["lbfgs-eq"].defaults
    title = (f"L-BFGS with ESGD's equilibration diagonal as its initial inverse Hessian ({args.activation}, full "
             f"batch; D from {defaults['samples']} Hessian-vector products, λ = {defaults['damping']:g} x mean D)")
    return run_experiment("equilibrated_lbfgs", title, args, argv, variants(refreshes, args.budget, args.adam_lr),
                          idea="diagonal")


if __name__ == "__main__":
    main()
