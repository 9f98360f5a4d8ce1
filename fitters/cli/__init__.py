"""The command lines: ``nf-fit`` (``fit``), ``nf-bench`` (``bench``) and ``nf-curvature`` (``curvature``).

Each ``main`` hands its work to ``run_cli``, the one place that turns errors into exit codes: bad input ends with one
``PROG: error: ...`` line on stderr and exit 2, Ctrl-C or SIGTERM (what ``kill`` and job schedulers send) with one
line and exit 130, never a traceback. An entry module imports torch and the rest inside ``exit_on_interrupt``, so
an interrupt during those seconds of imports is one line too.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C while inside (the fit loop turns either into a clean stop);
    the previous handler comes back on leaving. Outside the main thread signals cannot be caught: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def exit_on_interrupt(prog: str) -> Iterator[None]:
    """Around an entry module's imports: Ctrl-C or SIGTERM there ends the process with one line and exit 130.

    The signal is also remembered, not only raised: an imported library that catches every exception would
    otherwise swallow the ``KeyboardInterrupt`` and the command would run on as if never interrupted."""
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    except KeyboardInterrupt:
        received.append(signal.SIGINT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        print(f"{prog}: interrupted while starting; nothing was written", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)


def run_cli(prog: str, command: Callable[[list[str]], int], argv: Sequence[str] | None, *, interrupted: str) -> int:
    """Run ``command(argv)`` (it returns the exit code); ``ValueError`` (bad files, flags, configs: every error this
    project raises for bad input) becomes ``PROG: error: MESSAGE`` and exit 2; Ctrl-C or SIGTERM before the command
    handled it becomes ``PROG: INTERRUPTED`` and exit 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with terminate_as_interrupt():
        try:
            return command(argv)
        except ValueError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{prog}: {interrupted}", file=sys.stderr)
            return EXIT_INTERRUPTED
