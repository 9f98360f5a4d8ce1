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


def test_peers_race_beside_the_idea_and_are_compared_not_judged() -> None:
    variants = [{"label": "adam", "median_speedup": 1.0}, {"label": "lbfgs", "median_speedup": 1.7},
                {"label": "idea", "median_speedup": 2.1}, {"label": "soap@0.0003", "median_speedup": 2.5, "peer": True}]
    text = phased.verdict(variants, "lbfgs", "trick")
    assert text.startswith("keep: idea (2.10x) beats lbfgs (1.70x)")  # the faster peer is not the idea's
    assert "idea, 2.10x) is NOT ahead of every peer (best peer soap@0.0003, 2.50x)" in text
    variants[3]["median_speedup"] = 1.2
    assert "is ahead of every peer" in phased.verdict(variants, "lbfgs", "trick")


def test_peers_parse_into_single_phase_variants_or_fail_naming_the_flag() -> None:
    peers = phased.parse_peers("soap@3e-4, muon@9.5e-4")
    assert [(peer.label, peer.phases, peer.peer) for peer in peers] == [
        ("soap@0.0003", (Phase("soap", 3e-4),), True), ("muon@0.00095", (Phase("muon", 9.5e-4),), True)]
    for text, problem in [("nadam@1e-3", "not a registered optimizer"), ("soap", "not NAME@LR"), ("soap@x", "NAME@LR")]:
        with pytest.raises(ValueError, match="--peers") as error:
            phased.parse_peers(text)
        assert problem in str(error.value)
