"""What every benchmark shares: where results go, the machine facts each results file records
(``fitters.machine``), and how it is written (atomically, JSON beside Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fitters.machine import machine_facts
from fitters.run_dir import json_text
from nf_precond.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, payload: dict[str, Any], markdown: str, results_dir: Path = RESULTS) -> None:
    """``<name>.json`` (strict JSON, as every run file: NaN and infinities become null) and ``<name>.md`` in
    ``results_dir``, each written atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / f"{name}.json", json_text(payload, indent=1) + "\n")
    atomic_write_text(results_dir / f"{name}.md", markdown)


__all__ = ["RESULTS", "machine_facts", "write_results"]
