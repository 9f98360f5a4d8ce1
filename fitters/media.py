"""Helpers the audio, video and occupancy signals share: atomic file output, coordinate grids, off-screen plots."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write to; on success it replaces ``final``, on error it is removed.

    The temporary name keeps ``final``'s suffix because writers such as soundfile, imageio and trimesh pick the
    format from it; it lives in the same folder so ``os.replace`` is an atomic rename, never a copy.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 file would survive the rename; the writer creates this name with normal permissions.
    temporary = final.with_name(f".{final.stem}.{secrets.token_hex(6)}.tmp{final.suffix}")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def grid_coordinates(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """A regular grid whose first and last samples sit at -1 and 1 on every axis: ``[prod(shape), len(shape)]``.

    Column ``i`` varies along axis ``i`` in C order, so row ``k`` is the ``k``-th element of an array of ``shape``.
    An axis of length 1 sits at -1.
    """
    axes = [torch.linspace(-1.0, 1.0, size, device=device) for size in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(shape))


def render_figure(draw: Callable[[Axes], None], size_px: tuple[int, int]) -> np.ndarray:
    """Draw one matplotlib plot off-screen and return it as an HxWx3 uint8 picture of ``size_px`` = (W, H).

    Uses a bare ``Figure`` with the Agg canvas rather than pyplot, so nothing touches a global figure manager or a
    display (previews are drawn from the fit loop, possibly in a viewer thread).
    """
    dpi = 100
    figure = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, layout="tight")
    canvas = FigureCanvasAgg(figure)
    draw(figure.add_subplot())
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
