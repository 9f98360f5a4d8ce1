"""``nf-bench``: curve arithmetic against hand-computed values, the report files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import pytest
from skimage import data

from fitters import metrics
from fitters.bench import analyse, parse_optims
from fitters.cli.bench import main
from fitters.cli.fit import main as fit_main

# Two synthetic curves whose crossings are easy to compute by hand.
SLOW = [{"step": s, "time_s": 2.0 * s, "psnr": 10.0 + s} for s in range(0, 21)]  # 30 dB at step 20, t = 40 s
FAST = [{"step": s, "time_s": 4.0 * s, "psnr": 10.0 + 5.0 * s} for s in range(0, 6)]  # 30 dB at step 4, t = 16 s


def test_first_crossing_interpolates() -> None:
    assert metrics.first_crossing(SLOW, "psnr", 25.5, "step") == pytest.approx(15.5)
    assert metrics.first_crossing(SLOW, "psnr", 25.5, "time_s") == pytest.approx(31.0)
    assert metrics.first_crossing(SLOW, "psnr", 10.0, "step") == 0.0
    assert metrics.first_crossing(SLOW, "psnr", 99.0, "step") is None


def test_value_at_takes_the_last_record_reached() -> None:
    assert metrics.value_at(FAST, "psnr", "time_s", 9.9) == 15.0 + 5.0  # records at t = 0, 4, 8
    assert metrics.value_at(FAST, "psnr", "time_s", -1.0) is None


def run(label: str, curve: list[dict]) -> dict:
    last = curve[-1]
    return {"label": label, "curve": curve, "time_s": last["time_s"], "steps": last["step"],
            "closure_evals": 3 * last["step"], "final": {"psnr": last["psnr"]}}


def test_analyse_ratios_to_first_run() -> None:
    runs = [run("slow", SLOW), run("fast", FAST)]
    equal_time = analyse(runs, "psnr", 30.0)
    slow, fast = runs
    assert equal_time == 20.0  # the fast run's 5 steps x 4 s
    assert (slow["time_to_target_s"], fast["time_to_target_s"]) == (40.0, 16.0)
    assert fast["speedup_vs_first"] == pytest.approx(2.5)
    assert fast["ratios"]["steps_to_target"] == pytest.approx(4 / 20)
    assert fast["ratios"]["ms_per_step"] == pytest.approx(4.0 / 2.0)
    assert slow["psnr_at_equal_time"] == 20.0 and fast["psnr_at_equal_time"] == 35.0
    assert fast["closure_evals_per_step"] == 3.0


def test_analyse_lower_bound_when_first_never_reaches() -> None:
    runs = [run("slow", SLOW[:11]), run("fast", FAST)]  # slow stops at 20 dB after 20 s
    analyse(runs, "psnr", 30.0)
    assert runs[1]["speedup_vs_first"] is None
    assert runs[1]["speedup_vs_first_at_least"] == pytest.approx(20.0 / 16.0)


@pytest.mark.parametrize("text, message", [("adam,nope", "unknown optimizer 'nope'"), ("adam@fast", "bad learning rate"),
                                           (" , ", "empty"), ("lbfgs:tanh", "unknown activation 'tanh'")])  # fmt: skip
def test_parse_optims_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_optims(text)


def test_parse_optims() -> None:
    specs = parse_optims("adam@1e-3, lbfgs, adam@1e-2+int:relu-pe")
    assert [(s.label, s.optim, s.lr, s.sampler, s.act) for s in specs] == [
        ("adam@1e-3", "adam", 1e-3, None, None), ("lbfgs", "lbfgs", None, None, None),
        ("adam@1e-2+int:relu-pe", "adam", 1e-2, "int", "relu-pe"),
    ]  # fmt: skip


def test_bench_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "crop.png"
    iio.imwrite(image, data.astronaut()[100:148:3, 200:248:3])
    code = main([str(image), "--optims", "adam@1e-2,sgd:relu", "--steps", "6", "--log-every", "2", "--batch-size", "0",
                 "--hidden", "8", "--layers", "1", "--threads", "1", "--results-dir", str(tmp_path / "res"), "--name", "t"])
    assert code == 0
    files = {p.name for p in (tmp_path / "res").iterdir()}
    assert files == {"t.md", "t.json", "t_psnr_vs_time.png", "t_psnr_vs_step.png"}
    report = json.loads((tmp_path / "res" / "t.json").read_text())
    adam, sgd = report["runs"]
    assert (adam["lr"], sgd["lr"]) == (1e-2, 1e-2)  # sgd: the registry default
    assert (adam["act"], sgd["act"]) == ("sine", "relu") and report["field"] == "1x8 sine/relu (per run)"
    assert report["target"] == adam["final"]["psnr"] and adam["ratios"]["time_to_target"] == 1.0
    assert "| adam@1e-2 | full | 6 |" in (tmp_path / "res" / "t.md").read_text()
    capsys.readouterr()
    assert main([str(image), "--optims", "adam,bogus", "--results-dir", str(tmp_path / "res2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown optimizer 'bogus'" in err[0] and not (tmp_path / "res2").exists()


def test_bench_kilo_runs_the_same_fit_as_nf_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """nf-bench --kilo trains tiles (not one field): its L-BFGS run ends where nf-fit --kilo with the same flags does."""
    image = tmp_path / "crop.png"
    iio.imwrite(image, data.astronaut()[100:148:3, 200:248:3])
    shared = ["--kilo", "2x2", "--steps", "4", "--hidden", "8", "--layers", "2", "--threads", "1"]
    assert main([str(image), "--optims", "lbfgs", *shared, "--results-dir", str(tmp_path / "res"), "--name", "k"]) == 0
    assert fit_main([str(image), "--optim", "lbfgs", *shared, "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "res" / "k.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "--kilo 2x2 (4 tiles)" in report["field"]
    assert report["runs"][0]["final"]["psnr"] == pytest.approx(summary["psnr"], rel=1e-6)
    capsys.readouterr()
    assert main([str(image), "--optims", "lbfgs,adam+int", *shared, "--results-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --batch-size and --sampler" in err[0] and not (tmp_path / "bad").exists()


def test_bench_refuses_group(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--group sizes nf-fit DIR's batches; nf-bench races runs on one file (its --ray runs are in test_distributed)."""
    image = tmp_path / "crop.png"
    iio.imwrite(image, data.astronaut()[100:148:3, 200:248:3])
    assert main([str(image), "--optims", "adam", "--group", "4", "--results-dir", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--group 4 applies to nf-fit DIR" in err[0] and not (tmp_path / "res").exists()
