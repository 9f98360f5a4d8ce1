"""``nf-bench PATH --optims adam,adam@1e-3,lbfgs``: race optimizers on one signal (see ``fitters.bench``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fitters.cli import exit_on_interrupt, run_cli

with exit_on_interrupt("nf-bench"):  # torch and the rest import for seconds: Ctrl-C there is one line too
    import argparse
    from pathlib import Path

    import tyro

    from fitters.bench import BenchConfig, bench, markdown
    from fitters.config import load_preset, record_flags


def parse_bench(argv: Sequence[str]) -> BenchConfig:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(list(argv))
    default = load_preset(known.config, BenchConfig) if known.config else BenchConfig()
    return record_flags(tyro.cli(BenchConfig, args=list(argv), default=default, prog="nf-bench"), argv)


def race(argv: list[str]) -> int:
    report = bench(parse_bench(argv), argv)
    print(markdown(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("nf-bench", race, argv, interrupted="interrupted; no results written")


if __name__ == "__main__":
    sys.exit(main())
