"""The NeRF benchmark's learning-rate sweep: its flag, its plan, the lr it trains with, and a tiny sweep end to end
(which leaves nerfstudio's global event writers as it found them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")

from benchmarks import nerf_bench  # noqa: E402

pytestmark = pytest.mark.nerfstudio


@pytest.mark.parametrize(("text", "problem"), [
    ("adam@1e-3", "'adam' is not a benchmarked method"),
    ("gauss-esgd", "'gauss-esgd' is not METHOD@LR"),
    ("gauss-esgd@0", "the lr must be > 0"),
    (" , ", "name at least one METHOD@LR"),
])  # fmt: skip
def test_a_bad_sweep_is_one_line_naming_the_item(text: str, problem: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        nerf_bench.parse_sweep(text)


def test_a_sweep_trains_the_baseline_first_and_pairs_every_run_with_it() -> None:
    plan, pairs = nerf_bench.sweep_plan(nerf_bench.parse_sweep("gauss-esgd@0.1,gauss-esgd@1"))
    assert plan == [("gauss-adam", "gauss-adam", None), ("gauss-esgd@0.1", "gauss-esgd", 0.1),
                    ("gauss-esgd@1", "gauss-esgd", 1.0)]  # fmt: skip
    assert pairs == (("gauss-esgd@0.1", "gauss-adam"), ("gauss-esgd@1", "gauss-adam"))


def test_a_swept_lr_scales_the_schedule_with_it(tmp_path: Path) -> None:
    args = argparse.Namespace(device="cpu", samples=None, importance_samples=None, smoke=False)
    own = nerf_bench.method_config("gauss-esgd", tmp_path, tmp_path, args, rays=16).optimizers["fields"]
    swept = nerf_bench.method_config("gauss-esgd", tmp_path, tmp_path, args, rays=16, lr=0.1).optimizers["fields"]
    assert swept["optimizer"].lr == pytest.approx(0.1)
    ratio = own["scheduler"].lr_final / own["optimizer"].lr
    assert swept["scheduler"].lr_final == pytest.approx(0.1 * ratio)


@pytest.mark.slow
def test_a_tiny_sweep_writes_one_comparison_per_run(tmp_path: Path) -> None:
    writers = list(nerf_bench.event_writers.EVENT_WRITERS)
    nerf_bench.main(["--smoke", "--sweep", "gauss-esgd@0.3", "--out", str(tmp_path)])
    assert nerf_bench.event_writers.EVENT_WRITERS == writers  # no writer left on the deleted scene folder
    report = json.loads((tmp_path / "nerf_bench_sweep_smoke.json").read_text())
    assert [(row["method"], row["baseline"]) for row in report["comparisons"]] == [("gauss-esgd@0.3", "gauss-adam")]
    assert set(report["runs"]) == {"gauss-adam", "gauss-esgd@0.3"}
    assert report["targets"] == []
    text = (tmp_path / "nerf_bench_sweep_smoke.md").read_text()
    assert text.startswith("# NeRF learning-rate sweep") and "Targets" not in text
    assert (tmp_path / "nerf_bench_sweep_smoke_test_view.png").stat().st_size > 0
