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
    ("vanilla-nerf@1e-3", "'vanilla-nerf' is not a benchmarked method with an lr"),
    ("gauss-esgd", "'gauss-esgd' is not METHOD@LR"),
    ("gauss-esgd@0", "the lr must be > 0"),
    (" , ", "name at least one METHOD@LR"),
])  # fmt: skip
def test_a_bad_sweep_is_one_line_naming_the_item(text: str, problem: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        nerf_bench.parse_sweep(text)


def test_lrs_set_the_full_plans_runs_and_a_method_named_twice_is_refused() -> None:
    plan, pairs = nerf_bench.full_plan(nerf_bench.parse_lrs("gauss-esgd=0.1,gauss-adam=3e-4"))
    lrs = {label: lr for label, _, lr in plan}
    assert lrs["gauss-esgd"] == 0.1 and lrs["gauss-adam"] == 3e-4 and lrs["tinynerf-lbfgs"] is None
    assert pairs == nerf_bench.PAIRS
    with pytest.raises(argparse.ArgumentTypeError, match="names a method twice"):
        nerf_bench.parse_lrs("gauss-esgd=0.1,gauss-esgd=0.3")


def test_a_swept_baseline_is_compared_with_itself_at_its_own_lr() -> None:
    plan, pairs = nerf_bench.sweep_plan(nerf_bench.parse_sweep("gauss-adam@3e-4,gauss-esgd@0.1"))
    assert plan[0] == ("gauss-adam", "gauss-adam", None)
    assert pairs == (("gauss-adam@0.0003", "gauss-adam"), ("gauss-esgd@0.1", "gauss-adam"))


@pytest.mark.parametrize("text", ["4", "4x", "0x128", "x128", "4x-1"])
def test_a_bad_trunk_is_one_line(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not LAYERSxHIDDEN"):
        nerf_bench.parse_trunk(text)


def test_a_trunk_resizes_the_hierarchical_nerfs_only(tmp_path: Path) -> None:
    args = argparse.Namespace(device="cpu", samples=None, importance_samples=None, trunk=(3, 48), smoke=False)
    gauss = nerf_bench.method_config("gauss-adam", tmp_path, tmp_path, args, rays=16).pipeline.model.field
    tiny = nerf_bench.method_config("tinynerf-adam", tmp_path, tmp_path, args, rays=16).pipeline.model.field
    assert (gauss.layers, gauss.hidden, gauss.activation) == (3, 48, "gauss")
    assert (tiny.layers, tiny.hidden) == (4, 128)  # TinyNeRF's own
    kilo = nerf_bench.method_config("kilonerf-adam", tmp_path, tmp_path, args, rays=16).pipeline.model.field
    assert (kilo.layers, kilo.hidden) == (2, 32)


def test_a_sweep_trains_the_baseline_first_and_pairs_every_run_with_it() -> None:
    plan, pairs = nerf_bench.sweep_plan(nerf_bench.parse_sweep("gauss-esgd@0.1,gauss-esgd@1"))
    assert plan == [("gauss-adam", "gauss-adam", None), ("gauss-esgd@0.1", "gauss-esgd", 0.1),
                    ("gauss-esgd@1", "gauss-esgd", 1.0)]  # fmt: skip
    assert pairs == (("gauss-esgd@0.1", "gauss-adam"), ("gauss-esgd@1", "gauss-adam"))


def test_a_swept_lr_scales_the_schedule_with_it(tmp_path: Path) -> None:
    args = argparse.Namespace(device="cpu", samples=None, importance_samples=None, trunk=None, smoke=False)
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
