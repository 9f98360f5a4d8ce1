"""Atomic writes leave either the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

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
