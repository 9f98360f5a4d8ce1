"""Scale-out: independent pieces of work run in this process or as Ray tasks, with the same results either way.

Three kinds of work are independent by construction and so can run anywhere: a group of signals of ``nf-fit DIR``
(``fitters.dataset``), a group of tiles of ``nf-fit --kilo ... --kilo-group G`` (``fitters.kilo``) and one run of
``nf-bench`` (``fitters.bench``). Each is a module-level function of picklable arguments; an *engine* runs a list of
such calls and hands back their results in call order:

- ``LocalEngine`` calls them one after the other in this process, only as the caller asks for the next result (a
  caller that stops early, e.g. on divergence, runs no more of them).
- ``RayEngine`` (``--ray`` starts or joins a Ray runtime on this machine, ``--ray ADDRESS`` joins an existing
  cluster) submits every call as a Ray task at once and returns the results in call order. A task whose worker
  dies (killed, out of memory, node lost) is run again, up to ``RETRIES`` times (Ray's ``max_retries``); an error
  the task raises itself (bad input) is not retried and reaches the caller as the same exception.

What runs where: the driver (the ``nf-fit`` / ``nf-bench`` process) validates every input before any task starts,
plans the groups, and writes what sums up the run (the dataset summary, the stitched Kilo reconstruction and
checkpoint, the nf-bench report). A task sets its torch threads to the CPUs it reserved (``--threads``, default 1,
so tasks on one machine do not share cores) and runs on the CPU, or on one GPU of its own with ``--device cuda``.
Results equal a local run's because nothing in a task depends on where or when it runs: its inputs (initial weights
included) are fixed by the driver from the seed and the group's contents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

LOCAL = "local"
"""The ``--ray`` value without an address: start (or join) a Ray runtime on this machine."""
RETRIES = 3
"""Times a task is rerun after its worker died (Ray's ``max_retries``); errors the task raises are not retried."""


class TaskLost(ValueError):
    """A task's worker died more often than ``RETRIES`` allows (the cluster lost nodes, or the task runs out of
    memory every time)."""


def _with_threads(function: Callable[..., Any], threads: int, *args: Any) -> Any:
    """Run ``function(*args)`` with torch limited to the CPUs the task reserved."""
    torch.set_num_threads(threads)
    return function(*args)


class LocalEngine:
    """Runs every call in this process, in order, lazily."""

    remote = False

    def connect(self) -> None:
        """Nothing to join."""

    def map(self, function: Callable[..., Any], calls: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        for args in calls:
            yield function(*args)

    def put(self, value: Any) -> Any:
        """Large arguments shared by many calls: as they are (Ray stores them once; see ``RayEngine.put``)."""
        return value


class RayEngine:
    """Runs every call as a Ray task reserving ``threads`` CPUs (and one GPU with ``device="cuda"``).

    The runtime is joined at the first ``map``: an already initialized one (a test's, a notebook's) as it is,
    otherwise ``ray.init`` on ``address`` (``LOCAL``: a runtime on this machine, started if none is running).
    """

    remote = True

    def __init__(self, address: str = LOCAL, *, threads: int | None = None, device: str = "auto",
                 retries: int = RETRIES) -> None:  # fmt: skip
        try:
            import ray
        except ModuleNotFoundError as error:
            raise ValueError(
                "--ray needs Ray, an optional extra: pip install -e '.[ray]' (or drop --ray to run in this process)"
            ) from error
        self._ray = ray
        self.address, self.threads, self.device, self.retries = address, threads or 1, device, retries

    def connect(self) -> None:
        """Join (or start) the runtime now rather than at the first ``map``."""
        ray = self._ray
        if ray.is_initialized():
            return
        try:
            ray.init(address=None if self.address == LOCAL else self.address, logging_level=logging.WARNING,
                     include_dashboard=False)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"--ray {self.address}: cannot join a Ray cluster there ({str(error).splitlines()[0]}); give the "
                "address `ray start --head` printed (HOST:6379), or --ray alone for one on this machine"
            ) from error

    def put(self, value: Any) -> Any:
        """Store ``value`` once in the object store; tasks given the reference receive the value."""
        self.connect()
        return self._ray.put(value)

    def map(self, function: Callable[..., Any], calls: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        ray = self._ray
        self.connect()
        task = ray.remote(_with_threads).options(
            num_cpus=self.threads, num_gpus=1 if self.device == "cuda" else 0, max_retries=self.retries
        )
        refs = [task.remote(function, self.threads, *args) for args in calls]
        done = 0
        try:
            for index, ref in enumerate(refs):
                yield self._result(ray, ref, index)
                done += 1
        finally:
            for ref in refs[done:]:  # the caller stopped early (divergence, Ctrl-C): drop the rest
                ray.cancel(ref, force=True)

    def _result(self, ray: Any, ref: Any, index: int) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None  # the task's own error (e.g. an unreadable file), as in a local run
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
                ray.exceptions.TaskUnschedulableError, ray.exceptions.ObjectLostError) as error:  # fmt: skip
            raise TaskLost(
                f"Ray task {index} was lost {self.retries + 1} times ({error.__class__.__name__}: "
                f"{str(error).splitlines()[0]})"
            ) from error


def engine_for(address: str | None, *, threads: int | None = None, device: str = "auto") -> LocalEngine | RayEngine:
    """``LocalEngine`` without ``--ray``, else a ``RayEngine`` on ``address``."""
    if address is None:
        return LocalEngine()
    return RayEngine(address, threads=threads, device=device)


def kilo_engine(config: Any) -> dict[str, Any]:
    """For ``nf-fit FILE``: the ``KiloLoop`` keyword that runs its tile groups as Ray tasks under ``--ray`` (none
    without). Refuses the scale-out flags that do not apply to one file."""
    if config.group is not None:
        raise ValueError(
            f"--group {config.group} applies to folders (nf-fit DIR); for tiles of one file use --kilo-group"
        )
    if config.ray is None:
        return {}
    if config.kilo is None or config.kilo_group is None:
        raise ValueError(
            "--ray runs groups as Ray tasks: give a folder (nf-fit DIR --ray) or tiles in groups (--kilo 16x16 "
            "--kilo-group 64 --ray); drop --ray to fit one file here"
        )
    return {"engine": engine_for(config.ray, threads=config.threads, device=config.device)}
