"""The GPU suite's reduced mode on the CPU: every step's command runs and the suite report lists it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_suite

pytestmark = pytest.mark.slow  # subprocesses that each import torch


def test_reduced_suite_runs_its_steps_and_reports_them(tmp_path: Path) -> None:
    names = ["cuda_tests", "lbfgs_vs_adam_256"]  # the other steps' smoke modes are the benchmarks' own
    code = gpu_suite.main(["--reduced", "--results-dir", str(tmp_path), "--only", *names])
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [row["name"] for row in report["steps"]] == names
    assert code == 0, [(row["name"], row["output_tail"]) for row in report["steps"] if row["status"] != 0]
    assert json.loads((tmp_path / "gpu_lbfgs_vs_adam_256.json").read_text())["device"] == "cpu"
    assert "reduced mode" in (tmp_path / "gpu_suite.md").read_text()


def test_every_step_names_an_existing_module() -> None:
    for step in gpu_suite.steps("cuda", reduced=False, results=Path("results")):
        module = step.argv[step.argv.index("-m") + 1]
        assert module == "pytest" or __import__("importlib").util.find_spec(module) is not None, module


def test_refuses_to_run_without_cuda_unless_reduced(capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_suite.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
