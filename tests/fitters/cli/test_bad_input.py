"""Bad input against a folder that holds a good run: one ``nf-fit: error:`` line naming the problem and the fix, exit
2, the good run byte for byte as it was, and nothing else written (no lock, no half-written new run, no folders)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import pytest
from skimage import data

from fitters.cli.bench import main as bench_main
from fitters.cli.fit import main
from fitters.run_dir import RunDir

REPO = Path(__file__).resolve().parents[3]
VIDEO = REPO / "tests" / "data" / "bikes.mp4"
MESH = REPO / "tests" / "data" / "bone.ply"
TINY = ["--hidden", "8", "--layers", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def good_run(photo_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run (adam, lr 1e-3, 1x8 field) that every case below copies and must leave alone."""
    out = tmp_path_factory.mktemp("good") / "run"
    assert main([str(photo_path), "--optim", "adam", "--lr", "1e-3", "--steps", "2", "--batch-size", "0", *TINY,
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def tree(root: Path) -> dict[str, str]:
    """Every file and folder below ``root``, hidden ones included: SHA-256 of a file's bytes, "folder" for a folder."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path.name} holds {name}, not JSON"))


def assert_one_clean_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(("nf-fit: error: ", "nf-bench: error: ")), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def workspace(tmp_path: Path, good_run: Path) -> Path:
    """``tmp_path`` with a copy of the good run in ``run/`` and the bad files the cases use."""
    shutil.copytree(good_run, tmp_path / "run")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(128, 256)))
    (tmp_path / "five.yaml").write_text('steps: "five"\n')
    (tmp_path / "resize.yaml").write_text("signal:\n  resize: [8, wide]\n")
    (tmp_path / "preset-inf.yaml").write_text("lr: .inf\n")
    return tmp_path


CASES = {
    # every float finite, ranges consistent, ports real
    "lr-inf": (lambda tmp, img: [img, "--overwrite", "--lr", "inf"], ["--lr inf", "finite"]),
    "target-psnr-nan": (lambda tmp, img: [img, "--overwrite", "--target-psnr", "nan"], ["--target-psnr nan", "finite"]),
    "time-budget-inf": (lambda tmp, img: [img, "--overwrite", "--time-budget", "inf"], ["--time-budget", "finite"]),
    "preset-lr-inf": (lambda tmp, img: [img, "--overwrite", "--config", tmp / "preset-inf.yaml"], ["--lr inf", "finite"]),
    "lr-min-above-lr": (lambda tmp, img: [img, "--overwrite", "--lr-schedule", "cosine", "--lr", "1e-4", "--lr-min", "1e-3"],
                        ["--lr-min 0.001 is above --lr 0.0001", "give --lr-min below --lr"]),
    "viewer-port-high": (lambda tmp, img: [img, "--overwrite", "--viewer", "--viewer-port", "99999"],
                         ["--viewer-port", "1 to 65535", "99999"]),
    "viewer-port-zero": (lambda tmp, img: [img, "--overwrite", "--viewer-port", "0"], ["--viewer-port", "1 to 65535"]),
    "resume-and-overwrite": (lambda tmp, img: [img, "--resume", "--overwrite"], ["--resume", "--overwrite", "drop one"]),
    # the output folder
    "out-is-a-file": (lambda tmp, img: [img, "--out", tmp / "notes.txt"], ["notes.txt is a file", "choose another --out"]),
    "out-below-a-file": (lambda tmp, img: [img, "--out", tmp / "notes.txt" / "run"], ["lies below", "which is a file"]),
    "out-exists": (lambda tmp, img: [img], ["already exists", "--overwrite", "--resume"]),
    # memory guards, before anything is decoded
    "huge-resize": (lambda tmp, img: [img, "--overwrite", "--signal.resize", "1000000", "1000000"],
                    ["--signal.resize 1000000 1000000", "GiB", "give a smaller --signal.resize"]),
    "huge-frames": (lambda tmp, img: [VIDEO, "--overwrite", "--signal.frames", "0", "8", "--signal.resize", "100000", "100000"],
                    ["frames of 100000x100000", "GiB", "--signal.frames"]),
    "huge-points": (lambda tmp, img: [MESH, "--overwrite", "--signal.num-points", "1000000000000"],
                    ["--signal.num-points 1000000000000", "GiB", "smaller --signal.num-points"]),
    # --config files
    "config-folder": (lambda tmp, img: [img, "--overwrite", "--config", tmp], ["is a folder", "YAML preset"]),
    "config-binary": (lambda tmp, img: [img, "--overwrite", "--config", tmp / "binary.yaml"], ["not a text file"]),
    "config-wrong-type": (lambda tmp, img: [img, "--overwrite", "--config", tmp / "five.yaml"],
                          ["five.yaml: steps: expected an integer", "(as for --steps), got 'five'"]),
    "config-nested-type": (lambda tmp, img: [img, "--overwrite", "--config", tmp / "resize.yaml"],
                           ["signal.resize: expected a list of integers", "--signal.resize", "'wide'"]),
    # --resume into another run than the checkpoint's: nothing rewritten, config.yaml included
    "resume-other-optim": (lambda tmp, img: [img, "--resume", "--optim", "sgd"],
                           ["cannot --resume", "--optim sgd (the run used adam)", "drop these"]),
    "resume-other-lr": (lambda tmp, img: [img, "--resume", "--lr", "0.01"], ["--lr 0.01 (the run used 0.001)"]),
    "resume-other-field": (lambda tmp, img: [img, "--resume", "--hidden", "16"], ["--hidden 16 (the run used 8)"]),
    "resume-other-options": (lambda tmp, img: [img, "--resume", "--signal.resize", "8", "8"],
                             ["--signal.resize 8 8 (the run used None)"]),
    "resume-other-signal": (lambda tmp, img: [VIDEO, "--resume", "--signal.frames", "0", "2"], ["bikes.mp4 (the run used"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_leaves_the_good_run_untouched(case: str, workspace: Path, photo_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    make_args, needles = CASES[case]
    before = tree(workspace)
    args = make_args(workspace, photo_path)
    if "--out" not in args:
        args += ["--out", workspace / "run"]
    code = main([str(arg) for arg in [args[0], *TINY, *args[1:]]])  # the case's flags win over TINY
    assert code == 2
    assert_one_clean_line(capsys.readouterr().err, *needles)
    assert tree(workspace) == before


def test_a_run_in_progress_locks_its_folder(workspace: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The holder here is this process (another open file, so another lock); a running nf-fit is tested in
    test_fit.py."""
    with RunDir(workspace / "run").claim(overwrite=True, resume=False):
        before = tree(workspace)
        code = main([str(photo_path), "--out", str(workspace / "run"), "--overwrite", *TINY])
        assert code == 2
        assert_one_clean_line(capsys.readouterr().err, f"in use by another run (pid {os.getpid()})", "choose another --out")
        assert tree(workspace) == before


def test_resume_refuses_a_signal_whose_content_changed(tmp_path: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    signal = tmp_path / "signal.png"
    shutil.copy(photo_path, signal)
    out = tmp_path / "run"
    assert main([str(signal), "--steps", "2", *TINY, "--out", str(out)]) == 0
    iio.imwrite(signal, data.astronaut()[0:48:3, 0:48:3])  # same path, same size, other pixels
    before = tree(tmp_path)
    assert main([str(signal), "--out", str(out), "--resume", "--steps", "4"]) == 2
    assert_one_clean_line(capsys.readouterr().err, "cannot --resume", "signal content (sha256)")
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes regardless of permissions")
@pytest.mark.parametrize("what", ["config", "out"])
def test_permissions(what: str, workspace: Path, photo_path: Path, capsys: pytest.CaptureFixture) -> None:
    locked = workspace / "locked"
    locked.mkdir()
    (workspace / "unreadable.yaml").write_text("steps: 2\n")
    os.chmod(workspace / "unreadable.yaml", 0)
    os.chmod(locked, 0o555)
    try:
        before = tree(workspace)
        if what == "config":
            args, needles = ["--out", workspace / "run", "--overwrite", "--config", workspace / "unreadable.yaml"], ["cannot read it"]
        else:
            args, needles = ["--out", locked / "run"], ["cannot write in", "permission denied"]
        assert main([str(arg) for arg in [photo_path, *args, *TINY]]) == 2
        assert_one_clean_line(capsys.readouterr().err, *needles)
        assert tree(workspace) == before
    finally:
        os.chmod(locked, 0o755)


def test_good_run_summary_is_strict_json(good_run: Path) -> None:
    summary = strict_json(good_run / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert all(strict_json_line(line) for line in (good_run / "metrics.jsonl").read_text().splitlines())


def strict_json_line(line: str) -> dict:
    return json.loads(line, parse_constant=lambda name: pytest.fail(f"metrics.jsonl holds {name}, not JSON"))


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--target-psnr", "nan"], ["--target-psnr nan", "finite"]),
        (["--config", "five.yaml"], ["steps: expected an integer", "(as for --steps), got 'five'"]),
    ],
)
def test_nf_bench_shares_the_checks(args: list[str], needles: list[str], workspace: Path, photo_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    before = tree(workspace)
    args = [str(workspace / arg) if arg.endswith(".yaml") else arg for arg in args]
    code = bench_main([str(photo_path), "--optims", "adam", "--steps", "2", "--results-dir", str(workspace / "results"),
                       *args, *TINY])  # fmt: skip
    assert code == 2
    assert_one_clean_line(capsys.readouterr().err, *needles)
    assert tree(workspace) == before
