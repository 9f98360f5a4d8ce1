"""The leaderboard's bookkeeping: sweep-grid extension, verdicts, merging boards from separate runs, resuming."""

import json
import math
from pathlib import Path

import pytest

from benchmarks.leaderboard import (
    EDGE_STEPS, FinishedRuns, base_config, edge_lr, extend_past_edge, final_psnr, merged, steady_step_s, verdict,
)

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


def fake_run(best_lr):
    """A sweep run whose final PSNR peaks at ``best_lr`` (falling 1 dB per half decade away from it)."""
    return lambda lr: {"lr": lr, "status": "time_budget", "final": {"psnr": 30.0 - 2 * abs(math.log10(lr / best_lr))}}


@pytest.mark.parametrize(("best_lr", "extra"), [(1e-3, []), (7e-5, [1e-4 / 10**0.5]), (1e-6, [1e-4 / 10**0.5, 1e-5])])
def test_extend_past_edge_walks_until_the_winner_is_inside(best_lr, extra):
    run_at = fake_run(best_lr)
    calls = []
    runs = extend_past_edge([run_at(lr) for lr in GRID], GRID, lambda lr: calls.append(lr) or run_at(lr))
    assert calls == pytest.approx(extra)
    assert len(calls) <= EDGE_STEPS  # a winner beyond the last step is still bounded
    assert [run["lr"] for run in runs] == pytest.approx([*GRID, *extra])


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


def photo_runs(adam_psnr, lbfgs_psnr, lbfgs_steps_to_target):
    return {"runs": [
        {"optim": "adam", "steps": 100, "steps_to_target": 100, "psnr_at_baseline_time": adam_psnr,
         "speedup_vs_baseline": 1.0},
        {"optim": "lbfgs", "steps": 40, "steps_to_target": lbfgs_steps_to_target, "psnr_at_baseline_time": lbfgs_psnr,
         "speedup_vs_baseline": 3.0 if lbfgs_steps_to_target else None},
    ]}


def test_verdict_names_the_best_at_equal_time_and_reports_medians():
    result = verdict([photo_runs(30.0, 34.0, 10), photo_runs(28.0, 33.0, 30), photo_runs(31.0, 36.0, 20)])
    assert result["winner"] == "lbfgs" and result["tied"] == []
    assert result["mean_psnr_at_baseline_time"]["lbfgs"] == pytest.approx(34.333, abs=1e-3)
    assert result["median_iterations_share"] == {"adam": 1.0, "lbfgs": 0.2}
    assert result["median_speedup"]["lbfgs"] == 3.0


def test_verdict_leaves_out_a_figure_not_reached_on_every_photo():
    result = verdict([photo_runs(30.0, 29.0, None), photo_runs(28.0, 33.0, 30)])
    assert result["median_speedup"]["lbfgs"] is None and result["median_iterations_share"]["lbfgs"] is None
    assert result["winner"] == "lbfgs"  # still the best mean PSNR at Adam's time


def test_steady_step_cost_leaves_out_the_warm_up():
    """Slow first 100 steps (a curvature warm-up), then 10 ms per step: the steady cost is 10 ms."""
    curve = [{"step": 0, "time_s": 0.0}, {"step": 100, "time_s": 5.0}, {"step": 300, "time_s": 7.0},
             {"step": 500, "time_s": 9.0}]  # fmt: skip
    assert steady_step_s({"curve": curve}) == pytest.approx(0.01)
    assert steady_step_s({"curve": curve[:2]}) is None
    runs = photo_runs(30.0, 33.0, 10)
    runs["runs"][0]["curve"] = curve
    runs["runs"][1]["curve"] = [{**point, "time_s": 2 * point["time_s"]} for point in curve]
    assert verdict([runs])["median_step_cost"] == {"adam": 1.0, "lbfgs": 2.0}


def test_finished_runs_survive_a_restart_and_go_once_written(tmp_path):
    base = base_config(Path("camera.png"), "full", "sine", 60.0, 256)
    finished = FinishedRuns(tmp_path)
    key = finished.key(base, "adam@0.001")
    assert key != finished.key(base_config(Path("camera.png"), "full", "gauss", 60.0, 256), "adam@0.001")
    finished.add(key, {"label": "adam@0.001", "final": {"psnr": float("nan")}, "status": "diverged"})
    again = FinishedRuns(tmp_path)
    assert again.runs == {key: {"label": "adam@0.001", "final": {"psnr": None}, "status": "diverged"}}
    again.clear()
    assert FinishedRuns(tmp_path).runs == {}


def test_verdict_names_optimizers_within_noise_of_the_winner():
    result = verdict([photo_runs(31.0, 30.95, 20)])
    assert result["winner"] == "adam" and result["tied"] == ["lbfgs"]
