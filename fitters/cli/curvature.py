"""``nf-curvature PATH``: Hessian spectra of small fields per activation (see ``fitters.curvature``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fitters.cli import exit_on_interrupt, run_cli

with exit_on_interrupt("nf-curvature"):
    import tyro

    from fitters.curvature import CurvatureConfig, run, summary_table


def study(argv: list[str]) -> int:
    config = tyro.cli(CurvatureConfig, args=argv, prog="nf-curvature")
    report = run(config, argv)
    print(summary_table(report))
    print(f"nf-curvature: wrote {config.out / report['name']}.json and .png", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("nf-curvature", study, argv, interrupted="interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(main())
