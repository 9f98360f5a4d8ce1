"""The run folder: atomic writes, the lock, the --overwrite swap and what a killed run leaves, strict JSON."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fitters import run_dir as run_dir_module
from fitters.run_dir import RunDir, RunDirError, check_out, is_run_entry, json_text
from nf_precond.atomic import atomic_path, atomic_write_text


def test_atomic_write_gets_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "reconstruction.png"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.png"]


def write_run(folder: Path, tag: str) -> None:
    """A complete run's files, each holding ``tag`` (the swap moves files, it never reads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "reconstruction.png"):
        (folder / name).write_text(f"{tag} {name}\n")


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (hidden ones included) by relative path, with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_entries_are_the_run_files_and_their_temporaries() -> None:
    assert all(is_run_entry(name) for name in ("config.yaml", "checkpoint.pt", "reconstruction.mp4", ".summary-x1y2.json"))
    assert not any(is_run_entry(name) for name in ("keep.txt", "notes", ".gitignore", "summary.json.bak"))


def test_check_out_refuses_files_and_folders_below_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        check_out(tmp_path / "notes.txt")
    with pytest.raises(RunDirError, match="lies below .*notes.txt, which is a file"):
        check_out(tmp_path / "notes.txt" / "a" / "run")
    check_out(tmp_path / "new" / "deeper" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # checking makes nothing


def test_check_out_refuses_a_folder_without_write_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.access is what check_out asks; root passes every permission check, so it is asked to say no here.
    monkeypatch.setattr(run_dir_module.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(RunDirError, match="cannot write in .*permission denied"):
        check_out(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_out_refuses_a_read_only_folder(tmp_path: Path) -> None:
    tmp_path.joinpath("locked").mkdir(mode=0o555)
    with pytest.raises(RunDirError, match="permission denied"):
        check_out(tmp_path / "locked" / "run")


def test_lock_names_the_owner_and_is_removed_after(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunDir(out).claim(overwrite=False, resume=False) as first:
        assert first.lock_path.read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with RunDir(out).claim(overwrite=True, resume=False):
                pass
        assert first.lock_path.is_file()  # the refused claim left the owner's lock alone
    assert list(tmp_path.iterdir()) == []  # lock gone, and no run folder: nothing was written


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lock = RunDir(out).lock_path
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode())\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"pid {holder.pid}\)"):
            with RunDir(out).claim(overwrite=False, resume=False):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.read_text().strip() == str(holder.pid)  # a stale lock file: its process is gone
    with RunDir(out).claim(overwrite=False, resume=False) as run:
        assert run.lock_path.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_folders_made_for_the_lock_go_when_the_run_never_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with RunDir(tmp_path / "a" / "b" / "run").claim(overwrite=False, resume=False):
            raise RuntimeError("bad signal")
    assert list(tmp_path.iterdir()) == []


def test_claim_refuses_an_existing_run_and_an_empty_resume(tmp_path: Path) -> None:
    write_run(tmp_path / "run", "old")
    with pytest.raises(RunDirError, match="already exists; pass --overwrite"):
        with RunDir(tmp_path / "run").claim(overwrite=False, resume=False):
            pass
    with pytest.raises(RunDirError, match="nothing to resume"):
        with RunDir(tmp_path / "empty").claim(overwrite=False, resume=True):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_writes_beside_and_swaps_when_done(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out, "old")
    (out / "keep.txt").write_text("the user's")
    with RunDir(out).claim(overwrite=True, resume=False) as run:
        run.prepare(resume=False)
        assert run.path == run.staging_path
        write_run(run.path, "new")
        assert (out / "summary.json").read_text() == "old summary.json\n"  # the old run stays until the swap
        run.commit()
        assert run.path == out
    assert (out / "summary.json").read_text() == "new summary.json\n" and (out / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_that_fails_keeps_the_old_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out, "old")
    before = tree(tmp_path)
    with pytest.raises(RuntimeError):
        with RunDir(out).claim(overwrite=True, resume=False) as run:
            run.prepare(resume=False)
            (run.path / "metrics.jsonl").write_text("half a run\n")
            raise RuntimeError("crashed before the summary")
    assert tree(tmp_path) == before


class Killed(BaseException):
    """Stands for SIGKILL: raised in place of a file-system step, and nothing after it runs."""


@pytest.mark.parametrize("killed_at", range(5))
def test_a_kill_at_any_step_of_the_swap_leaves_the_old_or_the_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      killed_at: int) -> None:  # fmt: skip
    """Steps: old run aside, new run into place, the user's file across, the old run deleted (4: killed halfway
    through deleting it). A later run's ``settle`` must then find exactly the old run or exactly the new one."""
    out = tmp_path / "run"
    write_run(out, "old")
    (out / "keep.txt").write_text("the user's")
    old = tree(out)
    run = RunDir(out)
    run.prepare(resume=False)
    write_run(run.path, "new")
    new = {**tree(run.path), "keep.txt": old["keep.txt"]}
    steps = iter(range(10))
    rename, rmtree = os.rename, shutil.rmtree

    def step(operation, *args):
        if next(steps) == killed_at:
            raise Killed
        return operation(*args)

    def halfway_rmtree(path, *args, **kwargs):
        if killed_at == 4:
            next(Path(path).glob("*")).unlink()
            raise Killed
        return step(rmtree, path, *args, **kwargs)

    monkeypatch.setattr(run_dir_module.os, "rename", lambda *args: step(rename, *args))
    monkeypatch.setattr(run_dir_module.shutil, "rmtree", halfway_rmtree)
    with pytest.raises(Killed):
        run.commit()
    monkeypatch.undo()
    RunDir(out).settle()
    assert tree(out) in (old, new)
    assert tree(out) == (old if killed_at == 0 else new)  # once the old run is aside the new one has a summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_settle_drops_an_unfinished_new_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out, "old")
    old = tree(tmp_path)
    staging = RunDir(out).staging_path
    staging.mkdir()
    (staging / "metrics.jsonl").write_text("killed before its summary\n")
    RunDir(out).settle()
    assert tree(tmp_path) == old


def test_summary_and_metrics_are_strict_json(tmp_path: Path) -> None:
    """JSON has no NaN or Infinity: a perfect PSNR or a NaN loss is written as null."""
    run = RunDir(tmp_path)
    run.write_summary({"psnr": math.inf, "loss": math.nan, "steps": 3, "nested": {"values": [1.0, -math.inf]}})
    run.append_metrics({"step": 0, "psnr": math.inf, "loss": 0.5})

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    summary = strict((tmp_path / "summary.json").read_text())
    assert summary == {"psnr": None, "loss": None, "steps": 3, "nested": {"values": [1.0, None]}}
    assert strict((tmp_path / "metrics.jsonl").read_text()) == {"step": 0, "psnr": None, "loss": 0.5}
    assert json_text({"x": 1.5}) == '{"x": 1.5}'
