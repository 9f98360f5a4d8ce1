"""Phased runs: phases share one field and one clock, a smaller-size phase is scored on the photo itself."""

from __future__ import annotations

import pytest

from benchmarks import phased
from benchmarks.phased import Phase, Variant


def test_a_coarse_phase_is_one_record_scored_on_the_full_photo_and_the_clock_runs_on() -> None:
    variant = Variant("coarse", (Phase("lbfgs", 1.0, 0.5, size=8), Phase("adam", 1e-3)))
    run = phased.fit("camera.png", variant, budget=1.5, size=16, activation="sine", compile=False)
    curve = run["curve"]
    steps, times = [record["step"] for record in curve], [record["time_s"] for record in curve]
    assert steps == sorted(set(steps)) and times == sorted(times) and steps[0] == 0 and steps[-1] == run["steps"]
    assert all(record["eval_samples"] == 16 * 16 for record in curve)
    assert [record["lr"] for record in curve[:2]] == [1.0, 1.0]  # step 0, then the end of the coarse phase
    assert set(record["lr"] for record in curve[2:]) == {1e-3}
    assert curve[1]["time_s"] == pytest.approx(0.5, abs=0.1) and run["time_s"] == pytest.approx(1.5, rel=0.2)
    assert run["final_psnr"] == curve[-1]["psnr"]


def test_an_idea_is_kept_only_when_its_median_speedup_beats_the_reference() -> None:
    def variants(plain: float, idea: float) -> list[dict]:
        return [{"label": "adam", "median_speedup": 1.0}, {"label": "lbfgs", "median_speedup": plain},
                {"label": "idea", "median_speedup": idea}]  # fmt: skip

    assert phased.verdict(variants(1.7, 2.1), "lbfgs", "trick").startswith("keep: idea (2.10x) beats lbfgs (1.70x)")
    assert phased.verdict(variants(1.7, 1.7), "lbfgs", "trick").startswith("not kept: no trick beats lbfgs")
    assert phased.verdict(variants(0.0, 0.0), "lbfgs", "trick").startswith("not kept")
    assert phased.verdict(variants(1.0, 1.0)[:2], "lbfgs", "trick") == "no trick compared with lbfgs"
