"""The Adam-then-L-BFGS experiment at a tiny size: each switched run is one curve, Adam's steps then L-BFGS's."""

from __future__ import annotations

import pytest

from benchmarks import adam_then_lbfgs
from benchmarks.leaderboard import RACE_PHOTOS


@pytest.mark.slow
def test_switched_runs_train_adam_then_lbfgs_on_one_curve() -> None:
    report = adam_then_lbfgs.main(["--smoke"])
    variants = {variant["label"]: variant for variant in report["variants"]}
    assert list(variants) == ["adam", "lbfgs", "adam 0.5 s, then lbfgs"]
    for variant in variants.values():
        assert len(variant["runs"]) == len(RACE_PHOTOS)
        for run in variant["runs"]:
            assert run["time_s"] == pytest.approx(report["budget"], rel=0.2)
    for run in variants["adam 0.5 s, then lbfgs"]["runs"]:
        lrs = [record["lr"] for record in run["curve"]]
        switch = lrs.index(1.0)  # L-BFGS's trial step; Adam's lr before it
        assert set(lrs[:switch]) == {report["adam_lr"]} and set(lrs[switch:]) == {1.0}
        assert run["curve"][switch - 1]["time_s"] <= 0.5 + 0.1 < run["curve"][-1]["time_s"]
    for run in variants["lbfgs"]["runs"]:
        assert {record["lr"] for record in run["curve"]} == {1.0}
    assert report["verdict"].startswith(("keep", "not kept"))


def test_switches_outside_the_budget_are_refused() -> None:
    with pytest.raises(SystemExit):
        adam_then_lbfgs.main(["--switch", "0,60", "--budget", "60"])
