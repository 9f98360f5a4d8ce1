"""Helpers the signals share: coordinate grids, shrinking to a maximum side, and off-screen plots."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fitters.signals.base import SignalError


def grid_coordinates(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """A regular grid whose first and last samples sit at -1 and 1 on every axis: ``[prod(shape), len(shape)]``.

    Column ``i`` varies along axis ``i`` in C order, so row ``k`` is the ``k``-th element of an array of ``shape``.
    An axis of length 1 sits at -1.
    """
    axes = [torch.linspace(-1.0, 1.0, size, device=device) for size in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(shape))


def shrunk_size(shape: tuple[int, ...], max_side: int | None, minimum: int = 1) -> tuple[int, int] | None:
    """(H, W) scaled down, aspect ratio kept, so the longer side is ``max_side`` (each side at least ``minimum``);
    None when it already fits or ``max_side`` is 0/None (--signal.max-side)."""
    if max_side is not None and max_side < 0:
        raise SignalError(f"--signal.max-side must be >= 0 pixels (0 keeps the size), got {max_side}")
    height, width = shape[:2]
    if not max_side or max(height, width) <= max_side:
        return None
    scale = max_side / max(height, width)
    return max(minimum, round(height * scale)), max(minimum, round(width * scale))


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
