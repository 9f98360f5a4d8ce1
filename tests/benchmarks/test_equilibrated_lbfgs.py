"""The equilibrated-L-BFGS experiment: bad flags, and a tiny race end to end (the optimizer itself is tested in
tests/nf_precond/optim/test_equilibrated_lbfgs.py)."""

from __future__ import annotations

import pytest

from benchmarks import equilibrated_lbfgs
from benchmarks.leaderboard import RACE_PHOTOS


@pytest.mark.parametrize("refresh", ["60", "-1"])
def test_a_refresh_outside_the_budget_names_the_flag(refresh: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        equilibrated_lbfgs.main(["--refresh", refresh])
    assert "--refresh" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_race_scores_every_variant_on_every_photo() -> None:
    report = equilibrated_lbfgs.main(["--smoke"])
    labels = [variant["label"] for variant in report["variants"]]
    assert labels == ["adam", "lbfgs", "equilibrated", "equilibrated, D every 1 s"]
    assert [phase["optim"] for phase in report["variants"][3]["phases"]] == ["lbfgs-eq", "lbfgs-eq"]
    assert [phase["seconds"] for phase in report["variants"][3]["phases"]] == [1.0, None]
    for variant in report["variants"]:
        assert [run["photo"] for run in variant["runs"]] == list(RACE_PHOTOS)
        assert all(run["final_psnr"] > 0 for run in variant["runs"])
    assert report["verdict"].startswith(("keep", "not kept"))
