"""The run directory of one fit: what a run writes, and how runs share, resume and replace a folder.

Nothing is ever half-written: every file goes through ``nf_precond.atomic``. ``metrics.jsonl`` is the exception by
design: it grows one complete line per ``write`` call. Beside a run folder ``NAME`` live, only while needed:

- ``.NAME.lock``: the running process's pid under an exclusive ``flock``. A second run into the same folder stops
  at once; the kernel drops the lock of a process that dies, so a lock file left by a killed run is taken over.
- ``.NAME.new/``: an ``--overwrite`` run is written here and replaces ``NAME`` only once its summary is written;
- ``.NAME.old/``: the replaced run, for the moment of the swap. Whoever takes the lock next settles what a killed
  swap left (``RunDir.settle``), so at any moment the old run or the new one is intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from nf_precond.atomic import atomic_torch_save, atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CONFIG, METRICS, SUMMARY, CHECKPOINT)
RECONSTRUCTION_PREFIX = "reconstruction."
RUN_KEY = "run"
"""The checkpoint entry holding the run's identity (signal, field, optimizer) that ``--resume`` checks."""


class RunDirError(ValueError):
    """The output folder cannot be used as asked (exists without --overwrite, nothing to resume, in use, ...)."""


def to_plain(value: Any) -> Any:
    """Paths, tuples and dataclass-asdict output as YAML/JSON-friendly builtins."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """Strict JSON of ``to_plain(value)``: NaN and infinities (a perfect PSNR, a diverged loss) become null, since
    JSON has neither and other readers reject Python's ``NaN``/``Infinity``."""

    def finite(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(entry) for key, entry in item.items()}
        if isinstance(item, list):
            return [finite(entry) for entry in item]
        return item

    return json.dumps(finite(to_plain(value)), indent=indent, allow_nan=False)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def is_run_entry(name: str) -> bool:
    """A file a run writes (or the temporary of one, left by a killed write); anything else in the folder is the
    user's and survives --overwrite."""
    stems = [Path(file).stem for file in RUN_FILES] + [RECONSTRUCTION_PREFIX.rstrip(".")]
    return name in RUN_FILES or name.startswith(RECONSTRUCTION_PREFIX) or any(name.startswith(f".{s}-") for s in stems)


def check_out(out: Path) -> None:
    """Refuse, without touching anything, an --out that cannot become a writable folder."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose another --out")
    parent = path.absolute().parent if path.name in ("", ".", "..") else path.parent  # the lock goes beside the folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"--out {out} lies below {parent}, which is a file; choose another --out")
    for folder in (parent, path):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise RunDirError(f"--out {out}: cannot write in {folder} (permission denied); choose a folder you can write to")


def describe_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``KEY NOW (the run used THEN)`` for every identity entry that changed (keys are flags, or words)."""

    def show(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    keys = dict.fromkeys([*recorded, *current])
    changed = [key for key in keys if recorded.get(key) != current.get(key)]
    return [f"{key} {show(current.get(key))} (the run used {show(recorded.get(key))})" for key in changed]


class RunDir:
    """One fit's output folder: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` and the
    reconstruction.

    ``out`` is the folder the user named; ``path`` is where files are written now: ``out``, or ``.NAME.new`` while an
    --overwrite run has not finished (``commit`` then swaps it in). ``nf-fit`` holds :meth:`claim` around a run and
    calls :meth:`prepare` only after the config and signal were validated, so bad input never leaves a folder behind.
    """

    def __init__(self, path: Path):
        self.out = Path(path)
        self.path = self.out
        self.identity: dict[str, Any] | None = None
        """What the run fits and how (signal, field, optimizer), saved in every checkpoint for ``check_resume``."""
        self._lock_fd: int | None = None
        self._made: list[Path] = []

    def _beside(self, suffix: str) -> Path:
        absolute = Path(os.path.abspath(self.out))
        return absolute.parent / f".{absolute.name}{suffix}"

    @property
    def lock_path(self) -> Path:
        return self._beside(".lock")

    @property
    def staging_path(self) -> Path:
        return self._beside(".new")

    @property
    def previous_path(self) -> Path:
        return self._beside(".old")

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @staticmethod
    def owns(name: str) -> bool:
        """Whether an entry of the folder is the run's (replaced by --overwrite) rather than the user's (kept)."""
        return is_run_entry(name)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @classmethod
    def check(cls, path: Path) -> "RunDir":
        """Refuse an --out that cannot be a writable folder, before any work is done (no side effects)."""
        check_out(path)
        return cls(path)

    # -- sharing the folder --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def claim(self, *, overwrite: bool, resume: bool) -> Iterator["RunDir"]:
        """Hold the folder's lock for a run: settle what a killed run left, refuse a folder that is in use, exists
        without --overwrite or has nothing to --resume. On leaving, an --overwrite run that did not commit is dropped
        (the old run stays), and folders made only for the lock are removed again."""
        self._lock()
        try:
            self.settle()
            if resume and not self.checkpoint_path.is_file():
                raise RunDirError(f"nothing to resume: {self.checkpoint_path} does not exist; drop --resume")
            if not resume and not overwrite and self.out.is_dir() and any(self.out.iterdir()):
                raise RunDirError(f"--out {self.out} already exists; pass --overwrite to replace it or --resume to continue")
            yield self
        finally:
            try:
                self.settle()
            finally:
                self._unlock()

    def _lock(self) -> None:
        lock = self.lock_path
        missing = [folder for folder in (lock.parent, *lock.parent.parents) if not folder.exists()]
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            self._made = missing
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise RunDirError(
                        f"--out {self.out} is in use by another run (pid {owner}); wait for it to end or choose another --out"
                    ) from None
                try:
                    if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)  # the previous owner removed the file as we opened it: lock the new one
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
        except OSError as error:
            self._remove_made()
            raise RunDirError(
                f"--out {self.out}: cannot create the lock file {lock} ({error.strerror}); choose a folder you can write to"
            ) from error
        except BaseException:
            self._remove_made()
            raise

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        self.lock_path.unlink(missing_ok=True)  # while still locked: a waiting run then locks a fresh file
        os.close(self._lock_fd)
        self._lock_fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        """Remove the folders made for the lock if the run left nothing in them."""
        for folder in self._made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made = []

    # -- replacing a run -----------------------------------------------------------------------------------------
    def prepare(self, *, resume: bool) -> None:
        """Create the folder. A fresh run into a folder that holds a run writes beside it (``.NAME.new``) until
        :meth:`commit`; other files in the folder stay."""
        if resume:
            return
        if self.out.is_dir() and any(self.owns(entry.name) for entry in self.out.iterdir()):
            shutil.rmtree(self.staging_path, ignore_errors=True)
            self.staging_path.mkdir()
            self.path = self.staging_path
        else:
            self.out.mkdir(parents=True, exist_ok=True)

    def commit(self) -> None:
        """Make the finished run (its summary written) the folder's run: the old one moves to ``.NAME.old``, the new
        one into place, the user's files across, and the old run is deleted. A kill at any point is settled later."""
        if self.path == self.out or not (self.path / SUMMARY).is_file():
            return
        if self.out.exists():
            os.rename(self.out, self.previous_path)
        os.rename(self.path, self.out)
        self.path = self.out
        self._finish_swap()

    def settle(self) -> None:
        """Finish or undo what a killed run left beside the folder (idempotent; call it holding the lock): a swap
        whose new run is in place is finished, one whose new run is not is rolled back to the old run, and a new
        run that never finished is deleted."""
        previous, staging = self.previous_path, self.staging_path
        if previous.exists():
            if not self.out.exists():
                if (staging / SUMMARY).is_file():
                    os.rename(staging, self.out)
                else:
                    os.rename(previous, self.out)
            self._finish_swap()
        if staging.exists():
            shutil.rmtree(staging)
        self.path = self.out

    def _finish_swap(self) -> None:
        """Move the user's files from the replaced run into the new one, then delete the replaced run."""
        previous = self.previous_path
        if not previous.exists():
            return
        for entry in previous.iterdir():
            if not self.owns(entry.name) and not (self.out / entry.name).exists():
                os.rename(entry, self.out / entry.name)
        shutil.rmtree(previous)

    # -- the files -----------------------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(to_plain(config), sort_keys=False))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as stream:
            stream.write(json_text(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records after ``last_step`` (logged after the checkpoint a resumed run restarts from)."""
        kept = [record for record in self.read_metrics() if record["step"] <= last_step]
        atomic_write_text(self.metrics_path, "".join(json_text(record) + "\n" for record in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / SUMMARY, json_text(summary, indent=2) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.identity is not None:
            state = {**state, RUN_KEY: self.identity}
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self, device: torch.device) -> dict[str, Any]:
        try:
            return torch.load(self.checkpoint_path, map_location=device, weights_only=False)
        except Exception as error:  # a truncated/foreign file: say so in one line
            raise RunDirError(f"cannot read {self.checkpoint_path} ({error.__class__.__name__}); start afresh with --overwrite") from error

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to continue a checkpoint with another signal, field or optimizer than it was trained with."""
        recorded = checkpoint.get(RUN_KEY)
        if recorded is None:
            raise RunDirError(
                f"{self.checkpoint_path} does not record the signal, field and optimizer it was trained with (an "
                "older nf-fit wrote it), so --resume cannot check them; start afresh with --overwrite"
            )
        differences = describe_differences(recorded, self.identity or {})
        if differences:
            raise RunDirError(
                f"cannot --resume {self.out} with other settings: {', '.join(differences)}; drop these to continue "
                "the run, or start a new one with another --out (or --overwrite)"
            )
