"""The Adam-then-L-BFGS experiment at a tiny size: each switched run is one curve, Adam's steps then L-BFGS's."""

from __future__ import annotations

import pytest

from benchmarks import adam_then_lbfgs


@pytest.mark.slow
def test_switched_runs_train_adam_then_lbfgs_on_one_curve() -> None:
    report = adam_then_lbfgs.main(["--smoke"])
    variants = {variant["label"]: variant for variant in report["variants"]}
    assert list(variants) == ["adam", "lbfgs", "adam 0.5 s, then lbfgs"]
    for variant in variants.values():
        assert len(variant["runs"]) == len(adam_then_lbfgs.RACE_PHOTOS)
        for run in variant["runs"]:
            steps, times = [r["step"] for r in run["curve"]], [r["time_s"] for r in run["curve"]]
            assert steps == sorted(set(steps)) and times == sorted(times) and steps[-1] == run["steps"]
            assert run["time_s"] == pytest.approx(report["budget"], rel=0.2)
    for run in variants["adam 0.5 s, then lbfgs"]["runs"]:
        lrs = [record["lr"] for record in run["curve"]]
        switch = lrs.index(1.0)  # L-BFGS's trial step; Adam's lr before it
        assert set(lrs[:switch]) == {report["adam_lr"]} and set(lrs[switch:]) == {1.0}
        assert run["curve"][switch - 1]["time_s"] <= 0.5 + 0.1 < run["curve"][-1]["time_s"]
    for run in variants["lbfgs"]["runs"]:
        assert {record["lr"] for record in run["curve"]} == {1.0}
    assert report["verdict"].startswith(("keep", "not kept"))


def test_a_switch_is_kept_only_when_its_median_speedup_beats_plain_lbfgs() -> None:
    def variants(plain: float, switched: float) -> dict:
        return {
            "adam": {"label": "adam", "switch_s": None, "median_speedup": 1.0},
            "lbfgs": {"label": "lbfgs", "switch_s": 0.0, "median_speedup": plain},
            "adam 5 s, then lbfgs": {"label": "adam 5 s, then lbfgs", "switch_s": 5.0, "median_speedup": switched},
        }

    assert adam_then_lbfgs.verdict(variants(1.7, 2.1)).startswith("keep: adam 5 s, then lbfgs (2.10x)")
    assert adam_then_lbfgs.verdict(variants(1.7, 1.7)).startswith("not kept")
    assert adam_then_lbfgs.verdict(variants(0.0, 0.0)).startswith("not kept")
    only_adam = {"adam": variants(1.0, 1.0)["adam"]}
    assert adam_then_lbfgs.verdict(only_adam) == "no switch compared with plain L-BFGS"
