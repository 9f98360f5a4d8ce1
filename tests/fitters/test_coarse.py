"""``nf-fit --coarse``: smaller copies of the image are fitted first on the run's clock, the run continues on the
image from those weights, and settings where it does not apply are refused with one line before anything is
written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import soundfile
import torch
from skimage import data

from fitters import coarse
from fitters import compile as compile_module
from fitters.cli.bench import main as bench_main
from fitters.cli.fit import main
from fitters.config import FitConfig, parse_coarse, resolve
from nf_precond.nn import CompiledField
from nf_precond.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--hidden", "16", "--layers", "2", "--threads", "1", "--compile", "off"]


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    iio.imwrite(path, data.astronaut()[100:196:3, 200:296:3])  # 32x32 RGB
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_parse_coarse_reads_factors_and_seconds_in_order() -> None:
    assert parse_coarse("4:3,2:6") == [(4, 3.0), (2, 6.0)]


def test_coarse_phases_run_first_on_the_clock_and_their_weights_carry_over(tmp_path: Path, photo: Path, capsys) -> None:
    plain, coarse = tmp_path / "plain", tmp_path / "coarse"
    common = [photo, "--optim", "lbfgs", "--time-budget", "2", *SMALL]
    assert main([str(a) for a in [*common, "--out", plain]]) == 0
    assert main([str(a) for a in [*common, "--coarse", "4:0.3,2:0.3", "--out", coarse]]) == 0
    assert "coarse phase 8x8" in capsys.readouterr().err
    summary = json.loads((coarse / "summary.json").read_text())
    phases = summary["coarse"]
    assert [phase["size"] for phase in phases] == [[8, 8], [16, 16]]
    spent = sum(phase["time_s"] for phase in phases)
    assert all(phase["steps"] > 0 and phase["time_s"] == pytest.approx(0.3, abs=0.15) for phase in phases)
    first = records(coarse)[0]
    assert first["step"] == 0 and first["time_s"] == pytest.approx(spent, abs=1e-3)
    assert first["closure_evals"] == sum(phase["closure_evals"] for phase in phases)
    # The run starts on the image from the coarse weights, far better than the initial field it would start from.
    assert first["psnr"] > records(plain)[0]["psnr"] + 3
    assert summary["time_s"] == pytest.approx(2, abs=0.5)  # the phases' seconds came out of the budget
    assert json.loads((plain / "summary.json").read_text()).get("coarse") is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--coarse", "2"], "FACTOR:SECONDS"),
        (["--coarse", "1:3"], "integer >= 2"),
        (["--coarse", "2:3", "--time-budget", "2"], "of the --time-budget"),
        (["--coarse", "2:1", "--batch-size", "64"], "--batch-size 64: flag"),
        (["--coarse", "2:1", "--optim", "adam"], "--batch-size 512: adam default"),
        (["--coarse", "2:1", "--kilo", "2x2"], "--kilo"),
        (["--coarse", "64:1"], "less than 2 pixels"),
        ("audio", "audio: drop --coarse"),
    ],
    ids=["no-seconds", "factor-1", "over-budget", "mini-batch", "adam-default", "kilo", "too-small", "audio"],
)
def test_coarse_where_it_does_not_apply_is_one_line_and_nothing_written(tmp_path: Path, photo: Path, capsys, args,
                                                                         needle: str) -> None:  # fmt: skip
    if args == "audio":
        wav = tmp_path / "tone.wav"
        soundfile.write(wav, np.sin(np.linspace(0, 200, 800)).astype(np.float32), 8000)
        target, args = wav, ["--coarse", "2:1"]
    else:
        target = photo
    out = tmp_path / "run"
    code = main([str(a) for a in [target, "--optim", "lbfgs", *args, "--steps", "5", *SMALL, "--out", out]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_nf_fit_dir_and_nf_bench_refuse_coarse(tmp_path: Path, photo: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(2):
        iio.imwrite(folder / f"crop{index}.png", data.astronaut()[index * 40 : index * 40 + 16, :16])
    assert main([str(folder), "--coarse", "2:1", *SMALL, "--out", str(tmp_path / "dir")]) == 2
    assert "--coarse 2:1 fits one image" in capsys.readouterr().err
    assert bench_main([str(photo), "--coarse", "2:1", "--optims", "adam", "--steps", "2", *SMALL,
                       "--results-dir", str(tmp_path / "bench")]) == 2  # fmt: skip
    assert "--coarse 2:1 applies to nf-fit" in capsys.readouterr().err


def test_each_phase_runs_eager_on_its_own_optimizers_curvature_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    field = torch.nn.Linear(2, 3)
    compiled = CompiledField(field)
    loop_optimizer = build_optimizer("adam", field, lr=1e-3)
    compile_module.follow_optimizer(compiled, loop_optimizer)
    seen = []

    class RecordingLoop:
        def __init__(self, signal, model, optimizer, *_, **__):
            seen.append((optimizer is not loop_optimizer, model.eager_when()))

        def run(self):
            return SimpleNamespace(status="done", time_s=1.0, closure_evals=1, step=1, final_metrics={"psnr": 1.0})

    monkeypatch.setattr(coarse, "FitLoop", RecordingLoop)
    monkeypatch.setattr(coarse, "build_sampler", lambda *_: None)
    config = resolve(FitConfig(path=Path("photo.png"), out=Path("unused"), optim="esgd", batch_size=0))
    copy = SimpleNamespace(height=4, width=4, metric="psnr")
    loop = SimpleNamespace(model=compiled, optimizer=loop_optimizer, time_s=0.0, closure_evals=0)
    coarse.fit_coarse(config, loop, [(copy, 1.0), (copy, 1.0)], progress=False)
    assert seen == [(True, True), (True, True)]  # each phase's fresh ESGD asks for its curvature graph
    assert compiled.eager_when() is False  # and the run goes on following its own (Adam) optimizer
