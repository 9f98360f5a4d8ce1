"""The run directory of one fit: what a run writes, and how a new, resumed or overwritten run treats the folder.

Nothing is ever half-written: every file goes through ``nf_precond.atomic``. ``metrics.jsonl`` is the exception by
design: it grows one complete line per ``write`` call.
"""

from __future__ import annotations

import json
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


class RunDirError(ValueError):
    """The output folder cannot be used as asked (exists without --overwrite, nothing to resume, ...)."""


def to_plain(value: Any) -> Any:
    """Paths, tuples and dataclass-asdict output as YAML/JSON-friendly builtins."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


class RunDir:
    """One fit's output folder: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` and the
    reconstruction. Create it with :meth:`prepare` only after the config and signal were validated, so bad input
    never leaves a folder behind."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @classmethod
    def check(cls, path: Path, *, overwrite: bool, resume: bool) -> "RunDir":
        """Refuse unusable folders before any work is done (no side effects)."""
        run_dir = cls(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--out {path} is a file, not a folder; choose another --out")
        if resume:
            if not run_dir.checkpoint_path.is_file():
                raise RunDirError(f"nothing to resume: {run_dir.checkpoint_path} does not exist; drop --resume")
            return run_dir
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise RunDirError(f"--out {path} already exists; pass --overwrite to replace it or --resume to continue")
        return run_dir

    def prepare(self, *, resume: bool) -> None:
        """Create the folder; for a fresh run remove the previous run's files (only those: other files stay)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if resume:
            return
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for old in self.path.glob(RECONSTRUCTION_PREFIX + "*"):
            old.unlink()

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(to_plain(config), sort_keys=False))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(to_plain(record)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records after ``last_step`` (logged after the checkpoint a resumed run restarts from)."""
        kept = [record for record in self.read_metrics() if record["step"] <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(record) + "\n" for record in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / SUMMARY, json.dumps(to_plain(summary), indent=2) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self, device: torch.device) -> dict[str, Any]:
        try:
            return torch.load(self.checkpoint_path, map_location=device, weights_only=False)
        except Exception as error:  # a truncated/foreign file: say so in one line
            raise RunDirError(f"cannot read {self.checkpoint_path} ({error.__class__.__name__}); start afresh with --overwrite") from error
