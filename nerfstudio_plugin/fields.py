"""Radiance fields on the `nf_precond` core: a coordinate MLP (Gaussian / sine NeRF, TinyNeRF) and a KiloNeRF grid.

Both map normalized positions in [-1, 1]^3 (and, optionally, unit view directions) to a density >= 0 and an RGB
color in [0, 1]. They are plain `torch.nn.Module`s with smooth heads (softplus density, sigmoid color) so
Hessian-vector products through them are well defined; the nerfstudio model (`models.py`) does sampling and
rendering around them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from nf_precond.nn import BatchedMLP, CoordinateMLP, FieldConfig

NERF_FIELD = FieldConfig(activation="gauss", layers=8, hidden=256, sigma=0.1)
"""Paper 2's NeRF trunk: 8x256 Gaussian, σ 0.1 (as GaussNeRF)."""
KILO_FIELD = FieldConfig(activation="sine", layers=2, hidden=32)
"""Paper 1's KiloNeRF cell: a 2-layer, 32-wide sine MLP."""

DENSITY_SHIFT = 1.0
"""Raw density outputs are shifted down by this before the softplus, so a fresh field starts mostly transparent
(softplus(-1) ~ 0.31 instead of 0.69) and does not paint every ray with the color of its first samples."""


@dataclass(frozen=True)
class FieldOutputs:
    density: torch.Tensor
    """[..., 1] volume density >= 0."""
    rgb: torch.Tensor
    """[..., 3] color in [0, 1]."""


def density_and_colour(raw: torch.Tensor) -> FieldOutputs:
    """Split raw outputs [..., 4] (density logit, 3 color logits) into a `FieldOutputs`."""
    return FieldOutputs(density=F.softplus(raw[..., :1] - DENSITY_SHIFT), rgb=torch.sigmoid(raw[..., 1:4]))


class RadianceField(nn.Module):
    """One coordinate MLP over positions: density + color, with an optional view-dependent color head.

    Without view dependence the trunk outputs 4 values (TinyNeRF: "no view dependence"). With it the trunk outputs
    the density and a `hidden`-wide feature; a one-hidden-layer head of the same activation maps (feature, view
    direction) to the color, as in NeRF, so density cannot depend on the view.
    """

    def __init__(self, field: FieldConfig = NERF_FIELD, view_dependent: bool = True) -> None:
        super().__init__()
        self.view_dependent = view_dependent
        trunk_out = 1 + field.hidden if view_dependent else 4
        self.trunk = CoordinateMLP(3, trunk_out, field)
        # The head's inputs are features, not coordinates: a sine head uses ω0 = 1 (SIREN's hidden-layer scale).
        head = dataclasses.replace(field, layers=1, hidden=max(field.hidden // 2, 1),
                                   omega0=(1.0,) if field.activation == "sine" else field.omega0[:1])  # fmt: skip
        self.colour_head = CoordinateMLP(field.hidden + 3, 3, head) if view_dependent else None

    def forward(self, positions: torch.Tensor, directions: torch.Tensor | None = None) -> FieldOutputs:
        """`positions` [..., 3] in [-1, 1]; `directions` [..., 3] unit vectors (needed when view-dependent)."""
        trunk = self.trunk(positions)
        if self.colour_head is None:
            return density_and_colour(trunk)
        if directions is None:
            raise ValueError("this RadianceField is view-dependent: pass directions [..., 3] with the positions")
        colour = self.colour_head(torch.cat([trunk[..., 1:], directions], dim=-1))
        return density_and_colour(torch.cat([trunk[..., :1], colour], dim=-1))


def cell_indices(positions: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat cell index [M], position inside its cell in [-1, 1] [M, 3]) of points [M, 3] in [-1, 1]^3 on a
    `resolution`^3 grid; points outside the cube belong to the nearest boundary cell (clamped)."""
    unit = ((positions + 1.0) * 0.5).clamp(0.0, 1.0)
    scaled = unit * resolution
    cell = scaled.detach().floor().clamp(max=resolution - 1).long()
    local = (scaled - cell) * 2.0 - 1.0
    flat = (cell[:, 0] * resolution + cell[:, 1]) * resolution + cell[:, 2]
    return flat, local


class KiloRadianceField(nn.Module):
    """KiloNeRF: a `resolution`^3 grid of tiny MLPs (one `BatchedMLP`), each owning one cell of [-1, 1]^3.

    A point is evaluated by the net of its cell, on its position inside the cell rescaled to [-1, 1] (each tiny net
    sees the same input range, so one initialization suits all). Points are grouped per net and padded to the
    fullest cell, so the whole grid is one `baddbmm` per layer. No view dependence (paper 1's KiloNeRF is 2-layer
    32-wide sine MLPs).
    """

    def __init__(self, field: FieldConfig = KILO_FIELD, resolution: int = 8) -> None:
        super().__init__()
        if not (isinstance(resolution, int) and resolution >= 1):
            raise ValueError(f"KiloNeRF grid resolution must be an integer >= 1, got {resolution!r}")
        self.resolution = resolution
        self.nets = BatchedMLP(resolution**3, 3, 4, field)

    def forward(self, positions: torch.Tensor, directions: torch.Tensor | None = None) -> FieldOutputs:
        """`positions` [..., 3] in [-1, 1]; `directions` is ignored (no view dependence)."""
        flat_positions = positions.reshape(-1, 3)
        cells, local = cell_indices(flat_positions, self.resolution)
        order = torch.argsort(cells)
        sorted_cells = cells[order]
        counts = torch.bincount(sorted_cells, minlength=self.nets.num_nets)
        starts = torch.cumsum(counts, 0) - counts
        slots = torch.arange(len(order), device=positions.device) - starts[sorted_cells]
        width = int(counts.max()) if len(order) else 0
        padded = local.new_zeros(self.nets.num_nets, max(width, 1), 3)
        padded = padded.index_put((sorted_cells, slots), local[order])
        raw_sorted = self.nets(padded)[sorted_cells, slots]
        raw = torch.empty_like(raw_sorted).index_put((order,), raw_sorted)
        return density_and_colour(raw.reshape(*positions.shape[:-1], 4))

    def reference_forward(self, positions: torch.Tensor) -> FieldOutputs:
        """The same field evaluated point by point with each cell's net as a plain `CoordinateMLP` (test twin)."""
        flat_positions = positions.reshape(-1, 3)
        cells, local = cell_indices(flat_positions, self.resolution)
        raw = torch.stack([self.nets.net(int(cell))(point) for cell, point in zip(cells, local)])
        return density_and_colour(raw.reshape(*positions.shape[:-1], 4))


__all__ = [
    "DENSITY_SHIFT",
    "KILO_FIELD",
    "NERF_FIELD",
    "FieldOutputs",
    "KiloRadianceField",
    "RadianceField",
    "cell_indices",
    "density_and_colour",
]
