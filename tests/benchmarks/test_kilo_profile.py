"""The Kilo profile at a tiny size: every layout and group size runs, and grouping leaves the fit unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import kilo_profile


@pytest.mark.slow
def test_profile_rows_and_grouping_gives_the_same_fit(tmp_path: Path) -> None:
    kilo_profile.main(["--size", "32", "--steps", "2", "--groups", "0", "4", "--results-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "kilo_profile.json").read_text())["rows"]
    assert [(row["tiles"], row["group"]) for row in rows] == [
        ("32x32", 1024), ("32x32", 4), ("16x16", 256), ("16x16", 4), ("4x4", 16), ("4x4", 4)
    ]
    for row in rows:
        assert row["iteration_s"] > 0 and 0 < row["closure_share"] <= 1 and row["evals_per_iteration"] >= 1
        assert row["psnr"] == pytest.approx(row["loop"]["psnr"], abs=0.05)  # the same algorithm per tile
    assert "speed-up vs loop" in (tmp_path / "kilo_profile.md").read_text()
