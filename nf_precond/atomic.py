"""Atomic writes: every file and folder this project produces goes through here.

A file is written to a temporary name in the same folder and moved into place with ``os.replace`` (atomic on POSIX),
so a crash or Ctrl-C leaves either the old file or the new one, never half of one. ``tempfile`` creates files 0600
and folders 0700; the results get the modes a plain ``open``/``mkdir`` would give them under the user's umask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path | str, temp_dir: Path | str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (same suffix, so writers that go by extension work); on success it
    replaces ``final`` atomically with a 0666-minus-umask mode, on any error it is removed and ``final`` is left as
    it was. ``temp_dir`` (same file system) keeps the temporary file out of a folder that others list."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    directory = final.parent if temp_dir is None else Path(temp_dir)
    handle, name = tempfile.mkstemp(prefix=f".{final.stem}-", suffix=final.suffix, dir=directory)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it is renamed to ``final`` (0777-minus-umask), on any
    error removed. If another process created ``final`` meanwhile, theirs is kept and ours discarded."""
    final = Path(final)
    temporary = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())
        try:
            temporary.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def atomic_write_text(final: Path | str, text: str) -> None:
    with atomic_path(final) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_bytes(final: Path | str, data: bytes) -> None:
    with atomic_path(final) as temporary:
        temporary.write_bytes(data)


def atomic_torch_save(obj: Any, final: Path | str) -> None:
    with atomic_path(final) as temporary:
        torch.save(obj, temporary)
