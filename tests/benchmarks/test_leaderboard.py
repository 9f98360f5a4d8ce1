"""The leaderboard's bookkeeping: sweep-grid extension and merging boards from separate runs."""

import json

import pytest

from benchmarks.leaderboard import edge_lr, final_psnr, merged

GRID = (1e-4, 3e-4, 1e-3, 3e-3)


@pytest.mark.parametrize(
    ("winner", "expected"),
    [(3e-3, 3e-3 * 10**0.5), (1e-4, 1e-4 / 10**0.5), (3e-4, None), (None, None)],
)
def test_edge_lr_extends_only_past_a_winning_end(winner, expected):
    assert edge_lr(GRID, winner) == (pytest.approx(expected) if expected else None)


def test_edge_lr_leaves_single_lr_methods_alone():
    assert edge_lr((None,), None) is None
    assert edge_lr((1.0,), 1.0) is None


def test_final_psnr_ranks_diverged_runs_last():
    assert final_psnr({"status": "diverged", "final": {"psnr": 40.0}}) == float("-inf")
    assert final_psnr({"status": "time_budget", "final": {}}) == float("-inf")
    assert final_psnr({"status": "time_budget", "final": {"psnr": 21.5}}) == 21.5


def report(boards, budget=60.0, load=1.0):
    machine = {"load_average_1min": load, "quiet": True}
    return {"budget_s": budget, "size": 256, "photos": ["a.png"], "machine": machine,
            "sweep": {key: {"adam": {"lr": 1e-3}} for key in boards},
            "boards": {key: {"verdict": {"winner": winner}} for key, winner in boards.items()}}


def test_merged_keeps_other_boards_of_a_matching_run(tmp_path):
    path = tmp_path / "leaderboard.json"
    first = merged(path, report({"full/sine": "lbfgs", "full/gauss": "adam"}, load=0.5))
    path.write_text(json.dumps(first))
    second = merged(path, report({"full/gauss": "esgd"}, load=1.5))
    assert set(second["boards"]) == {"full/sine", "full/gauss"}
    assert second["boards"]["full/gauss"]["verdict"]["winner"] == "esgd"
    assert second["boards"]["full/sine"]["machine"]["load_average_1min"] == 0.5  # the run that produced it
    assert second["boards"]["full/gauss"]["machine"]["load_average_1min"] == 1.5


def test_merged_drops_boards_of_a_different_budget(tmp_path):
    path = tmp_path / "leaderboard.json"
    path.write_text(json.dumps(merged(path, report({"full/sine": "lbfgs"}, budget=30.0))))
    assert set(merged(path, report({"full/gauss": "adam"}))["boards"]) == {"full/gauss"}
