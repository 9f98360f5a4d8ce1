"""``nf-fit``: the run directory contract, presets, resume, and every kind of bad input (one line, no traceback)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from skimage import data

from fitters import memory
from fitters.cli.fit import EXIT_INTERRUPTED, explain, main
from fitters.config import FitConfig
from fitters.loop import FitLoop, FitOutcome
from fitters.run_dir import RunDir

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clean_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_run_directory_contract(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code, stdout, _ = fit([photo_path, "--optim", "adam", "--lr", "1e-3", "--steps", "8", "--log-every", "4",
                           "--batch-size", "0", "--hidden", "16", "--layers", "2", "--out", out], capsys)
    assert code == 0 and "completed" in stdout
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.json", "reconstruction.png", "checkpoint.pt"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 4, 8]
    assert {"step", "time_s", "loss", "psnr", "closure_evals"} <= set(records[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["closure_evals"] == 8
    assert {"psnr", "ssim", "time_s", "parameters", "device"} <= set(summary)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["lr"] == 1e-3 and config["batch_size"] == 0 and config["field"]["hidden"] == 16
    assert iio.imread(out / "reconstruction.png").shape == (16, 16, 3)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 8 and {"model", "optimizer", "sampler", "rng", "time_s"} <= set(checkpoint)


def test_optimizer_defaults_resolve(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert fit([photo_path, "--steps", "1", "--hidden", "8", "--layers", "1", "--out", out], capsys)[0] == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optim"] == "adam" and config["lr"] == 1e-4 and config["batch_size"] == 512


def test_preset_and_flag_override(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text("optim: sgd\nlr: 0.005\nfield:\n  hidden: 8\n  layers: 1\nbatch-size: 64\nsignal:\n  resize: [8, 8]\n")
    out = tmp_path / "run"
    code, _, _ = fit([photo_path, "--config", preset, "--lr", "0.002", "--steps", "2", "--out", out], capsys)
    assert code == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["optim"], config["lr"], config["field"]["hidden"], config["batch_size"]) == ("sgd", 0.002, 8, 64)
    assert config["signal"]["resize"] == [8, 8]
    assert iio.imread(out / "reconstruction.png").shape == (8, 8, 3)


def test_every_shipped_image_preset_parses(tmp_path: Path, photo_path: Path) -> None:
    from fitters.cli.fit import parse_config
    from fitters.config import resolve

    presets = sorted((REPO / "configs" / "image").glob("*.yaml"))
    assert presets, "configs/image/*.yaml missing"
    for preset in presets:
        resolve(parse_config([str(photo_path), "--config", str(preset), "--out", str(tmp_path / preset.stem)]))


def test_resume_appends_and_continues(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    common = [photo_path, "--optim", "adam", "--lr", "1e-3", "--hidden", "8", "--layers", "1", "--log-every", "2",
              "--batch-size", "32", "--out", out]
    assert fit(common + ["--steps", "4"], capsys)[0] == 0
    assert fit([photo_path, "--out", out, "--resume", "--steps", "8"], capsys)[0] == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4, 6, 8]
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    straight = tmp_path / "straight"
    assert fit(common[:-1] + [straight, "--steps", "8"], capsys)[0] == 0
    last = lambda run: json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert last(out)["loss"] == last(straight)["loss"] and last(out)["psnr"] == last(straight)["psnr"]


@pytest.mark.parametrize(
    "make_args, needles",
    [
        (lambda tmp, img: [tmp / "missing.png"], ["no such file"]),
        (lambda tmp, img: [tmp / "corrupt.png"], ["cannot read image", "corrupt.png"]),
        (lambda tmp, img: [tmp / "notes.txt"], ["unsupported file type"]),
        (lambda tmp, img: [img, "--steps", "0"], ["--steps"]),
        (lambda tmp, img: [img, "--lr", "-1"], ["--lr"]),
        (lambda tmp, img: [img, "--lr-schedule", "cosine", "--lr-min", "-1"], ["--lr-min must be >= 0"]),
        (lambda tmp, img: [img, "--config", tmp / "bad.yaml"], ["unknown setting 'learning_rate'"]),
        (lambda tmp, img: [img, "--resume"], ["nothing to resume"]),
        (lambda tmp, img: [img, "--compile", "on", "--optim", "kfac"], ["--compile on", "kfac"]),
        (lambda tmp, img: [], ["no signal file"]),
    ],
    ids=["missing", "corrupt", "extension", "steps", "lr", "lr-min", "preset-key", "resume-empty", "compile-kfac", "no-path"],
)
def test_bad_input_one_line_no_output(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture, make_args, needles) -> None:
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "notes.txt").write_text("not a signal")
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    out = tmp_path / "run"
    code, _, err = fit(make_args(tmp_path, photo_path) + ["--out", out, "--hidden", "8", "--layers", "1"], capsys)
    assert code == 2
    assert_one_clean_line(err, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_existing_out_needs_overwrite(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    code, _, err = fit([photo_path, "--steps", "1", "--out", out], capsys)
    assert code == 2
    assert_one_clean_line(err, "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert fit([photo_path, "--steps", "1", "--hidden", "8", "--layers", "1", "--out", out, "--overwrite"], capsys)[0] == 0
    assert (out / "keep.txt").exists() and (out / "summary.json").exists()


def test_divergence_keeps_last_good_checkpoint(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code, _, err = fit([photo_path, "--optim", "sgd", "--lr", "1e12", "--steps", "50", "--log-every", "1",
                        "--checkpoint-every", "1", "--batch-size", "0", "--out", out], capsys)
    assert code == 3
    assert_one_clean_line(err, "NaN/inf", "lower --lr")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] > summary["steps"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == summary["steps"]
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["psnr"]) for r in records)


@pytest.mark.slow
def test_ctrl_c_writes_checkpoint_and_resume_continues(tmp_path: Path, photo_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "fitters.cli.fit", str(photo_path), "--optim", "adam", "--lr", "1e-3", "--hidden", "8",
            "--layers", "1", "--steps", "1000000", "--log-every", "50", "--batch-size", "0", "--threads", "1", "--compile", "off",
            "--out", str(out)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert_one_clean_line(err, "interrupted at step", "--resume")
    summary = json.loads((out / "summary.json").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert summary["status"] == "interrupted" and checkpoint["step"] == summary["steps"] > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    stopped_at = summary["steps"]
    resumed = subprocess.run(
        [sys.executable, "-m", "fitters.cli.fit", str(photo_path), "--out", str(out), "--resume", "--steps", str(stopped_at + 10)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == stopped_at + 10 and steps == sorted(set(steps))


def tree(root: Path) -> dict[str, str]:
    """Every file and folder below ``root``, hidden ones included: SHA-256 of a file's bytes, "folder" for a folder."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


def wait_for_metrics(metrics: Path, lines: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < lines:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_resume_reproduces_the_uninterrupted_run(tmp_path: Path, photo_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """SIGTERM (kill, job schedulers) checkpoints and exits 130 like Ctrl-C; --resume then ends on the very PSNR of a
    run that was never stopped. While the run goes, a second one into its folder stops at once, naming it."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    flags = ["--optim", "adam", "--lr", "1e-3", "--hidden", "8", "--layers", "1", "--log-every", "50", "--batch-size",
             "0", "--threads", "1", "--compile", "off"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "fitters.cli.fit", str(photo_path), *flags, "--steps", "1000000",
                                "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for_metrics(out / "metrics.jsonl", 2, process)
        code, _, err = fit([photo_path, "--out", out, "--overwrite", "--steps", "1"], capsys)
        assert code == 2
        assert_one_clean_line(err, f"in use by another run (pid {process.pid})")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert_one_clean_line(err, "interrupted at step", "--resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] > 0
    total = summary["steps"] + 20
    assert fit([photo_path, "--out", out, "--resume", "--steps", total], capsys)[0] == 0
    assert fit([photo_path, *flags, "--steps", total, "--out", straight], capsys)[0] == 0
    resumed, uninterrupted = (json.loads((run / "summary.json").read_text()) for run in (out, straight))
    assert resumed["steps"] == uninterrupted["steps"] == total
    assert resumed["psnr"] == uninterrupted["psnr"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_while_importing_is_one_line(tmp_path: Path, photo_path: Path, signum: int) -> None:
    """Sent once torch's library is mapped, i.e. while the entry module still imports (seconds on a slow machine)."""
    process = subprocess.Popen([sys.executable, "-m", "fitters.cli.fit", str(photo_path), "--out", str(tmp_path / "run")],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED
    assert_one_clean_line(err, "nf-fit: interrupted")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_that_an_import_swallows_still_stops_the_start(signum: int, capsys: pytest.CaptureFixture) -> None:
    """A library that catches every exception while it imports must not turn an interrupt into a run."""
    from fitters.cli import exit_on_interrupt

    handlers = {each: signal.getsignal(each) for each in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as stopped:
        with exit_on_interrupt("nf-fit"):
            try:
                os.kill(os.getpid(), signum)
                time.sleep(10)  # the handler interrupts this
            except BaseException:  # what a catch-all import does
                pass
    assert stopped.value.code == EXIT_INTERRUPTED
    assert_one_clean_line(capsys.readouterr().err, "nf-fit: interrupted while starting")
    assert {each: signal.getsignal(each) for each in handlers} == handlers  # the handlers it found are back


def test_sigterm_while_loading_is_one_line(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import fitters.cli.fit as fit_module

    def load_and_get_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
        pytest.fail("SIGTERM did not interrupt the load")

    monkeypatch.setattr(fit_module, "load_signal", load_and_get_terminated)
    guard = lambda signum, frame: pytest.fail("nf-fit did not handle SIGTERM")  # noqa: E731
    previous = signal.signal(signal.SIGTERM, guard)  # stands in for the default, which would end pytest
    try:
        code, _, err = fit([photo_path, "--out", tmp_path / "run"], capsys)
        assert signal.getsignal(signal.SIGTERM) is guard  # nf-fit put back the handler it found
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == EXIT_INTERRUPTED
    assert_one_clean_line(err, "nf-fit: interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_overwrite_that_fails_keeps_the_old_run(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch, failure: type) -> None:  # fmt: skip
    """The new run is written beside the old one: a failure before its summary leaves the old run as it was."""
    out = tmp_path / "run"
    assert fit([photo_path, "--steps", "2", "--hidden", "8", "--layers", "1", "--out", out], capsys)[0] == 0
    before = tree(tmp_path)

    def fail_midway(self) -> None:
        self.run_dir.append_metrics({"step": 0, "psnr": 1.0})
        raise failure

    monkeypatch.setattr(FitLoop, "run", fail_midway)
    args = [photo_path, "--steps", "5", "--hidden", "16", "--layers", "1", "--out", out, "--overwrite"]
    if failure is KeyboardInterrupt:
        code, _, err = fit(args, capsys)
        assert code == EXIT_INTERRUPTED
        assert_one_clean_line(err, "interrupted")
    else:
        with pytest.raises(RuntimeError):
            main([str(arg) for arg in args])
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_sigkill_during_an_overwrite_keeps_the_old_run(tmp_path: Path, photo_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    out = tmp_path / "run"
    assert fit([photo_path, "--steps", "2", "--hidden", "8", "--layers", "1", "--out", out], capsys)[0] == 0
    before = tree(out)
    staging = RunDir(out).staging_path
    process = subprocess.Popen([sys.executable, "-m", "fitters.cli.fit", str(photo_path), "--hidden", "8", "--layers",
                                "1", "--steps", "1000000", "--log-every", "50", "--batch-size", "0", "--threads", "1",
                                "--compile", "off", "--out", str(out), "--overwrite"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for_metrics(staging / "metrics.jsonl", 2, process)
    finally:
        process.kill()
        process.wait()
    assert tree(out) == before  # the old run, whole; the killed one lies beside it
    assert staging.is_dir() and RunDir(out).lock_path.is_file()
    code, _, err = fit([photo_path, "--out", out, "--resume", "--steps", "3"], capsys)  # the next run settles the folder
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_viewer_port_in_use(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = fit([photo_path, "--viewer", "--viewer-port", port, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "--viewer-port")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_viewer_run_feeds_updates(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    import socket

    import fitters.viewer

    updates = []
    original_update = fitters.viewer.Viewer.update

    def spy(self, step, time_s, metric_name, metric, image):
        updates.append((step, metric_name, None if image is None else image.shape))
        return original_update(self, step, time_s, metric_name, metric, image)

    monkeypatch.setattr(fitters.viewer.Viewer, "update", spy)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = fit([photo_path, "--viewer", "--viewer-port", port, "--steps", "4", "--log-every", "2",
                        "--hidden", "8", "--layers", "1", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert [u[0] for u in updates] == [0, 2, 4] and all(u[1] == "psnr" for u in updates)
    assert updates[0][2] == (16, 16, 3)  # the first preview is rendered; later ones are throttled to <= 2/s


# nf-fit --kilo: tiled fitting through the CLI (the tiling itself is tested in test_kilo.py)


@pytest.fixture(scope="module")
def tiny_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kilo") / "tiny.png"
    iio.imwrite(path, data.astronaut()[100:132:2, 200:232:2])  # 16x16 RGB
    return path


@pytest.mark.parametrize("group", [None, 3])
def test_nf_fit_kilo_writes_the_run_directory(tmp_path: Path, tiny_png: Path, group: int | None,
                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    out = tmp_path / "run"
    extra = [] if group is None else ["--kilo-group", group]
    code, stdout, err = fit([tiny_png, "--kilo", "2x2", "--optim", "lbfgs", "--steps", "6", "--hidden", "8",
                             "--layers", "2", "--out", out, *extra], capsys)  # fmt: skip
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.json", "reconstruction.png", "checkpoint.pt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles"] == 4 and summary["kilo"] == "2x2" and summary["steps"] == (6 if group is None else 12)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "time_s", "loss", "closure_evals", "psnr"} <= set(records[-1])
    assert summary["psnr"] == pytest.approx(records[-1]["psnr"], rel=1e-5)
    assert records[-1]["psnr"] > records[0]["psnr"] + 3  # L-BFGS on 8x8 tiles learns within six steps
    assert iio.imread(out / "reconstruction.png").shape == (16, 16, 3)


def test_nf_fit_kilo_resumes_a_single_group_run(tmp_path: Path, tiny_png: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    common = [tiny_png, "--kilo", "2x2", "--optim", "lbfgs", "--hidden", "8", "--layers", "2", "--out", out]
    assert fit([*common, "--steps", "3"], capsys)[0] == 0
    code, _, err = fit([tiny_png, "--out", out, "--resume", "--steps", "6"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_grouped_runs_are_not_told_to_resume(tmp_path: Path, tiny_png: Path, capsys: pytest.CaptureFixture) -> None:
    """A --kilo-group run writes its checkpoint only after the last group: a diverged or interrupted one has none."""
    out = tmp_path / "run"
    code, _, err = fit([tiny_png, "--kilo", "2x2", "--kilo-group", "2", "--optim", "sgd", "--lr", "1e12", "--steps", "20",
                        "--log-every", "1", "--hidden", "8", "--layers", "2", "--out", out], capsys)  # fmt: skip
    assert code == 3
    assert_one_clean_line(err, "NaN/inf", "lower --lr", "no checkpoint", "--overwrite")
    assert "Kept the last good checkpoint" not in err
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert not (out / "checkpoint.pt").exists()
    code, message = explain(FitOutcome("interrupted", 7, 0.1, 7), FitConfig(path=tiny_png, out=out), RunDir(out))
    assert code == EXIT_INTERRUPTED and "continue with" not in message and "cannot --resume" in message


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--kilo", "2x"], ["--kilo '2x'", "ROWSxCOLUMNS"]),
        (["--kilo", "0x2"], ["every tile count must be >= 1"]),
        (["--kilo", "two"], ["expected tile counts"]),
        (["--kilo", "2x2x2"], ["needs 2 tile counts"]),
        (["--kilo", "12x2"], ["only padding", "at most 8"]),
        (["--kilo", "17x1"], ["only padding"]),
        (["--kilo", "2x2", "--optim", "shampoo"], ["--kilo works with --optim", "lbfgs"]),
        (["--kilo", "2x2", "--batch-size", "32"], ["drop --batch-size"]),
        (["--kilo", "2x2", "--kilo-group", "0"], ["--kilo-group must be >= 1"]),
        (["--kilo-group", "4"], ["applies only to --kilo"]),
        (["--kilo", "2x2", "--kilo-group", "2", "--compile", "on"], ["--compile on applies to --kilo runs", "--compile auto"]),
    ],
)
def test_bad_kilo_input_is_one_clear_line(tmp_path: Path, tiny_png: Path, args: list, needles: list,
                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    out = tmp_path / "run"
    code, _, err = fit([tiny_png, "--steps", "2", "--out", out, *args], capsys)
    assert code == 2
    assert_one_clean_line(err, *needles)
    assert not out.exists()


def test_kilo_refuses_signals_without_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wav = REPO / "tests" / "data" / "front_center.wav"
    code, _, err = fit([wav, "--kilo", "4x4", "--signal.max-seconds", "0.01", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "--kilo tiles images and videos")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # Levenberg-Marquardt needs residuals of a mean squared error: occupancy trains with cross-entropy.
        ([REPO / "tests" / "data" / "bone.ply", "--signal.num-points", "500"], ["fits mean-squared-error", "lbfgs"]),
        # 256² RGB with a 4x64 field: a Jacobian of 196,608 x 12,867 entries per step.
        (["RESIZED_PHOTO", "--signal.resize", "256", "256"], ["--signal.resize", "--hidden"]),
    ],
    ids=["cross-entropy-signal", "jacobian-too-large"],
)
def test_lm_refuses_what_it_cannot_fit(args: list, needles: list[str], photo_path: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    args = [photo_path if arg == "RESIZED_PHOTO" else arg for arg in args]
    code, _, err = fit([*args, "--optim", "lm", "--steps", "2", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "--optim lm", *needles)
    assert not (tmp_path / "run").exists()


def test_too_large_full_batch_advises_kilo_or_batch_size(tmp_path: Path, tiny_png: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    # Pretend a machine with 100 kB: room for the decoded 16x16 image (about 11 kB), not for training on it.
    monkeypatch.setattr(memory, "memory_available", lambda device: 100_000)
    code, _, err = fit([tiny_png, "--optim", "lbfgs", "--batch-size", "0", "--steps", "2", "--out", tmp_path / "run"],
                       capsys)  # fmt: skip
    assert code == 2
    assert_one_clean_line(err, "--kilo", "--batch-size")
    # A full batch that was only the default: the guard picks mini-batches that fit, and says so.
    code, _, _ = fit([tiny_png, "--optim", "lbfgs", "--steps", "2", "--out", tmp_path / "guarded"], capsys)
    assert code == 0
    config = yaml.safe_load((tmp_path / "guarded" / "config.yaml").read_text())
    assert config["batch_size"] > 0 and config["provenance"]["batch_size"].startswith("memory guard")
    code, _, err = fit([tiny_png, "--kilo", "2x2", "--optim", "lbfgs", "--steps", "2", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "smaller --kilo-group")


def test_nf_fit_kilo_video(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = REPO / "tests" / "data" / "bikes.mp4"
    out = tmp_path / "run"
    code, _, err = fit([clip, "--signal.frames", "0", "4", "--signal.resize", "12", "16", "--kilo", "2x2x2",
                        "--layers", "3", "--hidden", "8", "--optim", "lbfgs", "--steps", "4", "--out", out], capsys)  # fmt: skip
    assert code == 0, err
    assert (out / "reconstruction.mp4").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles"] == 8 and summary["tile_shape"] == [2, 6, 8]


@pytest.mark.parametrize("preset", sorted((REPO / "configs" / "kilo").glob("*.yaml")))
def test_kilo_presets_run(tmp_path: Path, tiny_png: Path, preset: Path, capsys: pytest.CaptureFixture) -> None:
    """Each preset parses and drives a (shortened) fit; video presets get tile counts an image can take."""
    tiles = "2x2"
    code, _, err = fit([tiny_png, "--config", preset, "--kilo", tiles, "--steps", "2", "--hidden", "8",
                        "--out", tmp_path / "run"], capsys)  # fmt: skip
    assert code == 0, err
