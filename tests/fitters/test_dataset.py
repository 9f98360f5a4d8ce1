"""``nf-fit DIR``: every field against its own single fit, the run contract per signal, the dataset summary, bad
folders refused before anything is written, grouping by shape, and --resume skipping the groups already done."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import soundfile
import torch
from skimage import data

from fitters import metrics
from fitters.cli.fit import main
from fitters.config import FitConfig
from fitters.dataset import BOOKKEEPING, CPU_LAYER_BYTES, FieldsPredict, FieldsSignal, plan_dataset, run_dataset
from fitters.loop import FitLoop, LoopOptions
from fitters.signals import load_signal
from fitters.weights import WEIGHTS_NAME, load_field
from nf_precond.nn import BatchedMLP, CoordinateMLP, FieldConfig
from nf_precond.optim import build_optimizer, optimizer_spec
from nf_precond.sampling import FullBatch

pytestmark = pytest.mark.usefixtures("one_thread")

FIELD = FieldConfig(hidden=12, layers=2)
SMALL = ["--hidden", "12", "--layers", "2", "--threads", "1"]


def photos(folder: Path, count: int, size: int = 16, offset: int = 0) -> list[Path]:
    """``count`` distinct real crops of the astronaut photo, ``size`` pixels square."""
    folder.mkdir(parents=True, exist_ok=True)
    image = data.astronaut()
    paths = []
    for index in range(offset, offset + count):
        top, left = 60 + 37 * index, 150 + 23 * index
        path = folder / f"crop{index:02d}.png"
        iio.imwrite(path, image[top : top + 2 * size : 2, left : left + 2 * size : 2])
        paths.append(path)
    return paths


def single_fit(path: Path, optim: str, lr: float | None, steps: int) -> tuple[float, CoordinateMLP]:
    """The reference twin: one CoordinateMLP seeded as nf-fit seeds it, with the batched optimizer's settings."""
    signal = load_signal(path)
    torch.manual_seed(0)
    model = CoordinateMLP(signal.in_features, signal.out_features, FIELD)
    settings = {**optimizer_spec(optim, batched=True).defaults, "lr": lr}
    optimizer = build_optimizer(optim, model, **settings)
    outcome = FitLoop(signal, model, optimizer, FullBatch(), LoopOptions(steps=steps, log_every=steps)).run()
    return outcome.final_metrics["psnr"], model


@pytest.mark.parametrize("optim, lr, tolerance_db", [("lbfgs", None, 1e-2), ("adam", 1e-2, 1e-4)])
def test_every_field_is_its_own_single_fit(tmp_path: Path, optim: str, lr: float | None, tolerance_db: float) -> None:
    files = photos(tmp_path / "photos", 3)
    config = FitConfig(path=tmp_path / "photos", optim=optim, lr=lr, steps=15, field=FIELD, threads=1,
                       out=tmp_path / "out")  # fmt: skip
    result = run_dataset(config)
    assert result.status == "completed" and result.fitted == 3
    fields = {summary["name"]: summary for summary in result.summaries}
    for path in files:
        expected, twin = single_fit(path, optim, lr, 15)
        summary = fields[path.stem]
        assert summary["psnr"] == pytest.approx(expected, abs=tolerance_db)
        # The stored weights are the field: loaded back, they reproduce the summary's PSNR.
        loaded = load_field(tmp_path / "out" / path.stem / WEIGHTS_NAME)
        signal = load_signal(path)
        with torch.no_grad():
            image = loaded(signal.coords).clamp(0, 1)
            atol = 2e-3 if optim == "lbfgs" else 1e-4  # L-BFGS line searches amplify rounding more than Adam
            torch.testing.assert_close(loaded(signal.coords), twin(signal.coords), atol=atol, rtol=0)
        assert metrics.psnr(image, signal.targets) == pytest.approx(summary["psnr"], abs=1e-4)


@pytest.mark.parametrize("block", [None, 100])
def test_a_groups_metrics_from_its_batched_outputs_equal_each_field_evaluated_alone(tmp_path: Path, monkeypatch,
                                                                                      block: int | None) -> None:  # fmt: skip
    """The fast path (every field's metrics served from one batched evaluation) against its reference twin (each
    field copied out of the group and evaluated on its own), whole and in blocks that do not divide the signal."""
    if block is not None:
        monkeypatch.setattr("fitters.signals.base.EVAL_BLOCK", block)
    signals = [load_signal(path) for path in photos(tmp_path, 3)]
    fields = FieldsSignal(signals)
    torch.manual_seed(1)
    predict = FieldsPredict(BatchedMLP(3, fields.in_features, fields.out_features, FIELD), chunk=4096)
    outputs = predict(fields.coords)
    for final in (False, True):
        served = fields.field_metrics(predict, outputs, final=final)
        alone = [(signal.final_metrics if final else signal.evaluate)(predict.field(index))
                 for index, signal in enumerate(signals)]  # fmt: skip
        for fast, reference in zip(served, alone):
            assert fast.keys() == reference.keys()
            for name in fast:
                assert fast[name] == pytest.approx(reference[name], abs=1e-4)
    probe = torch.rand(7, 2) * 2 - 1  # not the signal's samples: answered by the field itself
    torch.testing.assert_close(fields.field_predict(predict, 1, outputs)(probe), predict.field(1)(probe))


def test_results_do_not_depend_on_the_grouping_beyond_rounding(tmp_path: Path) -> None:
    photos(tmp_path / "photos", 4)
    psnrs = []
    for group in (1, 4):
        config = FitConfig(path=tmp_path / "photos", optim="lbfgs", steps=10, field=FIELD, threads=1, group=group,
                           out=tmp_path / f"out{group}")  # fmt: skip
        psnrs.append([summary["psnr"] for summary in run_dataset(config).summaries])
    np.testing.assert_allclose(psnrs[0], psnrs[1], atol=1e-2)


def test_nf_fit_dir_writes_the_run_contract_and_the_dataset_summary(tmp_path: Path, capsys) -> None:
    files = photos(tmp_path / "photos", 5)
    (tmp_path / "photos" / "notes.txt").write_text("not a signal")  # other files in the folder are skipped
    out = tmp_path / "out"
    code = main([str(tmp_path / "photos"), "--optim", "lbfgs", "--steps", "8", "--group", "2", "--out", str(out),
                 *SMALL])  # fmt: skip
    assert code == 0
    assert "fitted 5 of 5 signals" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["signals"], summary["groups"], summary["fitted"]) == (5, 3, 5)
    for path in files:
        folder = out / path.stem
        expected = {"config.yaml", "metrics.jsonl", "summary.json", "reconstruction.png", WEIGHTS_NAME}
        assert {p.name for p in folder.iterdir()} == expected
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == sorted({r["step"] for r in records}) and records[-1]["step"] == 8
        field_summary = json.loads((folder / "summary.json").read_text())
        assert field_summary["psnr"] == pytest.approx(records[-1]["psnr"], abs=1e-6)
        reconstruction = iio.imread(folder / "reconstruction.png")
        assert reconstruction.shape == iio.imread(path).shape
        assert f"| {path.stem} | {field_summary['psnr']:.2f} |" in (out / "summary.md").read_text()
    assert iio.imread(out / "psnr_histogram.png").ndim == 3
    assert not (out / BOOKKEEPING / "partial").exists()
    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {0o666 & ~_umask()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_quoted_glob_selects_the_files(tmp_path: Path) -> None:
    photos(tmp_path / "photos", 3)
    out = tmp_path / "out"
    assert main([str(tmp_path / "photos" / "crop0[01].png"), "--steps", "2", "--out", str(out), *SMALL]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["crop00", "crop01"]


def corrupt(folder: Path) -> None:
    photos(folder, 2)
    (folder / "crop99.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def mixed(folder: Path) -> None:
    photos(folder, 2)
    soundfile.write(folder / "speech.wav", np.sin(np.linspace(0, 100, 800)).astype(np.float32), 8000)


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder.mkdir(), "holds no signal files"),
    (mixed, r"mixes modalities \(2 image, 1 audio files\); fit one modality per run, e.g. nf-fit '.*\*\.png'"),
    (corrupt, r"cannot read image .*crop99\.png .*; nothing was fitted"),
])  # fmt: skip
def test_bad_folders_get_one_line_and_nothing_is_written(tmp_path: Path, capsys, make, message: str) -> None:
    folder = tmp_path / "photos"
    make(folder)
    out = tmp_path / "out"
    assert main([str(folder), "--steps", "2", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nf-fit: error: ")
    assert re.search(message, err[0])
    assert not out.exists()


def test_optimizers_that_mix_fields_are_refused(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "photos", 2)
    assert main([str(tmp_path / "photos"), "--optim", "esgd", "--out", str(tmp_path / "out"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--optim adam, sgd, lbfgs" in err and "--optim esgd would mix" in err
    assert not (tmp_path / "out").exists()


def test_mixed_sizes_are_grouped_by_shape(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "photos", 2, size=16)
    photos(tmp_path / "photos", 1, size=12, offset=5)
    out = tmp_path / "out"
    assert main([str(tmp_path / "photos"), "--steps", "2", "--out", str(out), *SMALL]) == 0
    err = capsys.readouterr().err
    assert "2 shapes" in err and "--signal.resize H W" in err
    plan = json.loads((out / BOOKKEEPING / "plan.json").read_text())
    assert plan["groups"] == [[0, 1], [2]] and plan["shapes"] == ["16x16x3 image", "12x12x3 image"]
    resized = tmp_path / "resized"
    resize = ["--signal.resize", "8", "8"]
    assert main([str(tmp_path / "photos"), "--steps", "2", "--out", str(resized), *resize, *SMALL]) == 0
    assert json.loads((resized / BOOKKEEPING / "plan.json").read_text())["groups"] == [[0, 1, 2]]


def test_default_groups_on_a_cpu_keep_a_layer_cache_sized(tmp_path: Path) -> None:
    """One 64-wide layer over 32x32 pixels is 256 KiB: four fields fill ``CPU_LAYER_BYTES``; a 64x64 image (1 MiB)
    trains alone. An explicit --group is taken as given."""
    files = [*photos(tmp_path / "small", 6, size=32), *photos(tmp_path / "large", 2, size=64, offset=6)]
    wide = FieldConfig(hidden=64, layers=2)
    plan = plan_dataset(FitConfig(path=tmp_path, field=wide, device="cpu"), files)
    per_small = CPU_LAYER_BYTES // (32 * 32 * 64 * 4)
    assert per_small == 4 and plan.groups == [[0, 1, 2, 3], [4, 5], [6], [7]]
    explicit = plan_dataset(FitConfig(path=tmp_path, field=wide, device="cpu", group=6), files)
    assert explicit.groups == [[0, 1, 2, 3, 4, 5], [6, 7]]


def test_resume_skips_done_groups_and_restarts_the_one_in_progress(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "photos", 5)
    out = tmp_path / "out"
    args = [str(tmp_path / "photos"), "--optim", "lbfgs", "--steps", "6", "--group", "2", "--out", str(out), *SMALL]
    assert main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    done_group0 = (out / "crop00" / "summary.json").stat().st_mtime_ns
    # Group 1 was "in progress" when the run stopped: no done mark, a half-written staging folder, a stale folder.
    (out / BOOKKEEPING / "done" / "00001.json").unlink()
    (out / BOOKKEEPING / "partial" / "00001" / "crop02").mkdir(parents=True)
    (out / "crop03" / "summary.json").write_text("{}")
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([str(tmp_path / "photos"), "--out", str(out), "--resume"]) == 0
    assert "fitted 2 of 5 signals" in capsys.readouterr().out
    assert (out / "crop00" / "summary.json").stat().st_mtime_ns == done_group0
    untimed = lambda rows: [{k: v for k, v in row.items() if k != "time_s"} for row in rows]  # noqa: E731
    assert untimed(json.loads((out / "summary.json").read_text())["fields"]) == untimed(first["fields"])
    assert json.loads((out / "crop03" / "summary.json").read_text())["psnr"] == first["fields"][3]["psnr"]
    assert not (out / BOOKKEEPING / "partial").exists()
    assert main([str(tmp_path / "photos"), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main([str(tmp_path / "photos"), "--resume"]) == 2
    assert "give --out OUT" in capsys.readouterr().err


def test_scale_out_flags_on_one_file_are_refused(tmp_path: Path, capsys) -> None:
    (path,) = photos(tmp_path / "photos", 1)
    assert main([str(path), "--group", "4", "--steps", "1", "--out", str(tmp_path / "a"), *SMALL]) == 2
    assert "--group 4 applies to folders" in capsys.readouterr().err
    assert main([str(path), "--ray", "--steps", "1", "--out", str(tmp_path / "b"), *SMALL]) == 2
    assert "--kilo-group 64 --ray" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_diverging_group_keeps_its_last_good_fields_and_exits_3(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "photos", 2)
    out = tmp_path / "out"
    args = ["--optim", "sgd", "--lr", "1e8", "--steps", "4", "--log-every", "1", "--out", str(out), *SMALL]
    assert main([str(tmp_path / "photos"), *args]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN/inf for the group(s) of crop00, crop01" in err[0] and "lower --lr" in err[0]
    for name in ("crop00", "crop01"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "diverged" and np.isfinite(summary["psnr"])
        assert all(torch.isfinite(p).all() for p in load_field(out / name / WEIGHTS_NAME).parameters())


def folder_digest(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_dataset_folder_in_use_is_refused_and_overwrite_replaces_only_a_finished_run(tmp_path: Path, capsys) -> None:
    """The dataset folder has a single run's guarantees: a lock against a second run, and --overwrite that keeps the
    old run until the new one has written its summary."""
    from fitters import dataset
    from fitters.run_dir import RunDir

    photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "--optim", "adam", "--lr", "1e-2", "--steps", "2", "--out", str(out), *SMALL]
    assert main(args) == 0
    before = folder_digest(out)

    with RunDir(out).claim(overwrite=True, resume=False):  # another run holds the folder
        assert main([*args, "--overwrite"]) == 2
    assert f"in use by another run (pid {os.getpid()})" in capsys.readouterr().err
    assert folder_digest(out) == before

    def failing_group(task):
        raise RuntimeError("the machine ran out of memory")  # the new run fails before its first group finishes

    with pytest.raises(RuntimeError, match="out of memory"):
        dataset.run_dataset(dataset.FitConfig(path=tmp_path / "in", optim="adam", lr=1e-2, steps=2, out=out,
                                              overwrite=True, field=FIELD), task=failing_group)  # fmt: skip
    assert folder_digest(out) == before  # the old run is untouched
    assert not any(path.name.startswith(".out.") for path in tmp_path.iterdir())  # no staging or lock left
