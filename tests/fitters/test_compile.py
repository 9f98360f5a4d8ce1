"""--compile auto|on|off: the auto policy, compile time kept out of training time, and the eager fallback."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from skimage import data

from fitters import compile as compile_module
from fitters.cli.fit import main
from fitters.config import FitConfig, resolve
from fitters.signals.image import ImageSignal
from nf_precond.nn import CompiledField
from nf_precond.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photo_path(tmp_path: Path) -> Path:
    path = tmp_path / "crop.png"
    iio.imwrite(path, data.astronaut()[100:148:3, 200:248:3])  # 16x16 RGB
    return path


def config(**settings) -> FitConfig:
    return resolve(FitConfig(path=Path("photo.png"), out=Path("unused"), **settings))


@pytest.mark.parametrize(
    ("settings", "compiled"),
    [
        ({"optim": "lbfgs", "steps": 10}, False),  # auto, tiny run: compiling would cost more than it saves
        ({"optim": "lbfgs", "steps": 1000}, True),  # 1000 full-batch steps of 256² = 6.6e7 point evaluations
        ({"optim": "adam", "steps": 10, "time_budget": 60.0}, True),
        ({"optim": "lbfgs", "time_budget": 45.0}, False),  # a short budget, whatever the (unlimited) step count
        ({"optim": "esgd", "steps": 10**6}, True),  # curvature steps run eager by themselves
        ({"optim": "kfac", "steps": 10**6}, False),  # hooks the Linear modules
        ({"optim": "lbfgs", "steps": 10**6, "compile": "off"}, False),
        ({"optim": "adam", "steps": 1, "compile": "on"}, True),
    ],
)
def test_auto_policy(settings: dict, compiled: bool) -> None:
    signal = ImageSignal(torch.rand(256, 256, 3).numpy())
    assert compile_module.wants_compile(config(**settings), signal) is compiled


@pytest.mark.slow
def test_compiled_run_reports_compile_time_apart(photo_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main([str(photo_path), "--optim", "adam", "--lr", "1e-3", "--steps", "5", "--batch-size", "0",
                 "--hidden", "8", "--layers", "1", "--compile", "on", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "compiled the field in" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile_s"] > 0 and summary["steps"] == 5


def test_compile_failure_falls_back_to_eager_with_one_warning(photo_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    def broken_compile(model, **options):
        def run(*args, **kwargs):
            raise RuntimeError("Compiler: cc not found\n(long backend traceback)")

        return run

    monkeypatch.setattr("nf_precond.nn.compiled.torch.compile", broken_compile)
    out = tmp_path / "run"
    code = main([str(photo_path), "--optim", "adam", "--steps", "3", "--batch-size", "0", "--hidden", "8",
                 "--layers", "1", "--compile", "on", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    warnings = [line for line in err.splitlines() if "torch.compile failed" in line]
    assert len(warnings) == 1 and "cc not found" in warnings[0] and "Traceback" not in err
    assert "compile_s" not in json.loads((out / "summary.json").read_text())


def test_compile_on_is_refused_for_optimizers_that_cannot_compile(photo_path: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    assert main([str(photo_path), "--optim", "kfac", "--compile", "on", "--out", str(tmp_path / "run")]) == 2
    assert "--compile on" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_follow_optimizer_points_a_compiled_fields_eager_switch_at_that_optimizer() -> None:
    field = torch.nn.Linear(2, 1)
    compiled = CompiledField(field)
    esgd, adam = build_optimizer("esgd", field, lr=0.1), build_optimizer("adam", field, lr=1e-3)
    compile_module.follow_optimizer(compiled, esgd)
    assert compiled.eager_when()  # an un-stepped ESGD estimates curvature on its first step
    compile_module.follow_optimizer(compiled, adam)
    assert not compiled.eager_when()
    compile_module.follow_optimizer(field, esgd)  # a plain field has no switch and gets none
    assert not hasattr(field, "eager_when")
