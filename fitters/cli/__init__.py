"""The command lines: ``nf-fit`` (``fit``), ``nf-bench`` (``bench``) and ``nf-curvature`` (``curvature``).

Each ``main`` hands its work to ``run_cli``, the one place that turns errors into exit codes: bad input ends with one
``PROG: error: ...`` line on stderr and exit 2, Ctrl-C with one line and exit 130, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


def run_cli(prog: str, command: Callable[[list[str]], int], argv: Sequence[str] | None, *, interrupted: str) -> int:
    """Run ``command(argv)`` (it returns the exit code); ``ValueError`` (bad files, flags, configs: every error this
    project raises for bad input) becomes ``PROG: error: MESSAGE`` and exit 2; Ctrl-C before the command handled it
    becomes ``PROG: INTERRUPTED`` and exit 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return command(argv)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
