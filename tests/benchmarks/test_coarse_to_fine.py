"""The coarse-to-fine experiment: schedules parse or fail with the flag named; a tiny race runs end to end."""

from __future__ import annotations

import pytest

from benchmarks import coarse_to_fine
from benchmarks.leaderboard import RACE_PHOTOS


def test_schedules_parse_into_sides_and_seconds() -> None:
    assert coarse_to_fine.parse_schedules("64:3; 64:3,128:6", 256, 60) == [[(64, 3.0)], [(64, 3.0), (128, 6.0)]]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("64", "SIDE:SECONDS"), ("256:3", "between 2 and --size 256"), ("64:0", "positive"), ("64:30,128:30", "below")],
)
def test_bad_schedules_name_the_flag_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="--schedules") as error:
        coarse_to_fine.parse_schedules(text, 256, 60)
    assert problem in str(error.value)


@pytest.mark.slow
def test_a_tiny_race_scores_every_variant_on_every_photo() -> None:
    report = coarse_to_fine.main(["--smoke", "--peers", "soap@1e-3"])
    labels = [variant["label"] for variant in report["variants"]]
    assert labels == ["adam", "lbfgs", "8² 0.5 s, then full size", "soap@0.001"]
    assert [variant["peer"] for variant in report["variants"]] == [False, False, False, True]
    assert "of every peer (best peer soap@0.001" in report["verdict"]
    for variant in report["variants"]:
        assert [run["photo"] for run in variant["runs"]] == list(RACE_PHOTOS)
        assert all(run["curve"][-1]["eval_samples"] == 16 * 16 for run in variant["runs"])
    coarse = report["variants"][2]
    assert [phase["size"] for phase in coarse["phases"]] == [8, None]
    assert report["verdict"].startswith(("keep", "not kept"))
