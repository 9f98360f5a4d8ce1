"""Occupancy signal: inside/outside labels of a mesh at 3D points in [-1, 1]^3, fitted with BCE on logits.

Paper 1 (supp. Sec. 4.3) samples 100k points; paper 2 (Sec. 5.2, supp. Sec. 4.2) one million: one third uniform in
the volume, two thirds near the surface with Gaussian offsets of σ 0.1 and 0.01. Labels come from the generalized
winding number (libigl's fast winding number), which stays right on meshes with small holes, where ray tests such as
``trimesh.contains`` slip (test bone with every 100th face removed, 20k points in its box: winding number 100 %,
``contains`` 99.7 % agreement with the intact mesh). Meshes with large holes are refused: no labels are right there.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import igl
import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from fitters.memory import check_signal_fits
from fitters.signals.media import grid_coordinates
from nf_precond.atomic import atomic_path
from fitters.signals import Predict, Signal, SignalError, SignalOptions

RECONSTRUCTION_NAME = "reconstruction.ply"
MESH_HALF_EXTENT = 0.9
"""The mesh's longest side spans [-0.9, 0.9]: the margin keeps near-surface samples inside the cube and lets marching
cubes close the surface instead of cutting it at the grid border."""
NEAR_SURFACE_SIGMAS = (0.1, 0.01)
"""Gaussian offsets of the near-surface samples (paper 2), split evenly, in normalized units."""
HELD_OUT_POINTS = 100_000
"""Uniform points, drawn apart from the training points, on which ``iou`` is measured (as in Occupancy Networks)."""
POINT_BYTES = 3 * 8 + 3 * 8 + 3 * 4 + 1
"""Bytes per point at the peak of sampling: the float64 points, their float64 offsets, the float32 coordinates kept
and the 8-bit label."""
AMBIGUOUS_WINDING = (0.2, 0.8)
"""A point whose |winding number| falls in this band is neither clearly inside (1) nor outside (0)."""
MAX_AMBIGUOUS_SHARE = 0.01
"""Above this share of ambiguous held-out points the mesh has holes too large for labels to mean anything."""
PREVIEW_RESOLUTION = 128
"""Pixels per side of the preview slice."""
GRID_CHUNK_POINTS = 1 << 20
"""Grid points evaluated per call when extracting the surface, so memory stays flat at any resolution."""


class OccupancySignal(Signal):
    """``coords`` [P, 3] points in [-1, 1]^3, ``targets`` [P, 1] occupancy in {0, 1}; the field outputs logits.

    Coordinates are the mesh's own scaled by ``scale`` about ``center``; reconstructions are written back in the
    mesh's units so they overlay the input.
    """

    kind: ClassVar[str] = "occupancy"
    metric: ClassVar[str] = "iou"
    least_squares: ClassVar[bool] = False  # binary cross-entropy on logits

    def __init__(
        self, mesh: trimesh.Trimesh, options: SignalOptions, name: str = "mesh", grid_resolution: int = 128
    ) -> None:
        """``grid_resolution``: samples per axis of the grid that marching cubes runs on in ``save_reconstruction``."""
        if not (isinstance(options.num_points, int) and options.num_points >= 1):
            raise SignalError(f"{name}: --signal.num-points must be a positive integer, got {options.num_points}")
        if not 0.0 <= options.surface_fraction <= 1.0:
            raise SignalError(f"{name}: --signal.surface-fraction must lie in [0, 1], got {options.surface_fraction}")
        if grid_resolution < 2:
            raise SignalError(f"{name}: marching cubes needs at least 2 grid samples per axis, got {grid_resolution}")
        _check_mesh(mesh, name)
        self.name = name
        self.grid_resolution = grid_resolution
        self.center = mesh.bounds.mean(axis=0)
        self.scale = MESH_HALF_EXTENT / (mesh.extents.max() / 2.0)
        self._vertices = np.ascontiguousarray((mesh.vertices - self.center) * self.scale, dtype=np.float64)
        self._faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)

        rng = np.random.default_rng(options.seed)
        held_out = rng.uniform(-1.0, 1.0, size=(HELD_OUT_POINTS, 3))
        held_out_winding = self._winding(held_out)
        ambiguous = np.mean((held_out_winding > AMBIGUOUS_WINDING[0]) & (held_out_winding < AMBIGUOUS_WINDING[1]))
        if ambiguous > MAX_AMBIGUOUS_SHARE:
            raise SignalError(
                f"{name}: the mesh is not closed ({ambiguous:.1%} of points are neither clearly inside nor outside), "
                "so occupancy labels are unreliable; close its holes (e.g. trimesh.repair.fill_holes or MeshLab's "
                "'Close Holes') and retry"
            )
        self.held_out_coords = torch.from_numpy(held_out.astype(np.float32))
        self.held_out_targets = torch.from_numpy((held_out_winding > 0.5).astype(np.float32)[:, None])

        points = self._training_points(options.num_points, options.surface_fraction, rng)
        self.coords = torch.from_numpy(points.astype(np.float32))
        self.inside = torch.from_numpy(self.labels(points).astype(np.uint8)[:, None])
        """The training labels, one byte per point (``targets`` decodes them to 0./1.)."""

    def _winding(self, points: np.ndarray) -> np.ndarray:
        """|generalized winding number| of the normalized mesh at ``points``: ~1 inside, ~0 outside. The absolute
        value makes a consistently inward-facing mesh read the same as an outward-facing one."""
        query = np.ascontiguousarray(points, dtype=np.float64)
        return np.abs(igl.fast_winding_number(self._vertices, self._faces, query))

    def labels(self, points: np.ndarray) -> np.ndarray:
        """Boolean inside-ness of normalized ``points`` [P, 3]."""
        return self._winding(points) > 0.5

    def _training_points(self, count: int, surface_fraction: float, rng: np.random.Generator) -> np.ndarray:
        """``surface_fraction`` of ``count`` on the surface plus Gaussian offsets, the rest uniform in the cube."""
        near_count = round(count * surface_fraction)
        normalised = trimesh.Trimesh(self._vertices, self._faces, process=False)
        surface, _ = trimesh.sample.sample_surface(normalised, near_count, seed=rng)
        sigmas = np.array(NEAR_SURFACE_SIGMAS)[np.arange(near_count) % len(NEAR_SURFACE_SIGMAS)]
        near = surface + rng.normal(size=surface.shape) * sigmas[:, None]
        uniform = rng.uniform(-1.0, 1.0, size=(count - near_count, 3))
        return np.clip(np.concatenate([near, uniform]), -1.0, 1.0)

    def make_targets(self, indices: torch.Tensor) -> torch.Tensor:
        return self.inside[indices].float()

    @property
    def out_features(self) -> int:
        return 1

    @property
    def num_eval_samples(self) -> int:
        return len(self.held_out_coords)

    def to(self, device: torch.device | str) -> "OccupancySignal":
        super().to(device)
        self.inside = self.inside.to(device)
        self.held_out_coords = self.held_out_coords.to(device)
        self.held_out_targets = self.held_out_targets.to(device)
        return self

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy between the field's logits and the 0/1 labels (paper 2)."""
        return torch.nn.functional.binary_cross_entropy_with_logits(pred, target)

    def per_sample_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """|sigmoid(logit) - label|: the BCE gradient's magnitude at each point (|logit - label| would rank confidently
        right points, whose logits are far from 0 or 1, as the worst)."""
        return (torch.sigmoid(pred) - target).abs().reshape(pred.shape[0], -1).sum(dim=1)

    def evaluate(self, predict: Predict, indices: torch.Tensor | None = None) -> dict[str, float]:
        """``iou`` of predicted (logit > 0) and true occupancy on the held-out points (those at ``indices`` when
        given), and their ``accuracy``."""
        coords, targets = self.held_out_coords, self.held_out_targets
        if indices is not None:
            coords, targets = coords[indices], targets[indices]
        predicted = predict(coords) > 0
        truth = targets > 0.5
        union = (predicted | truth).sum()
        iou = (predicted & truth).sum() / union if union > 0 else torch.tensor(1.0)
        return {"iou": float(iou), "accuracy": float((predicted == truth).float().mean())}

    def logit_grid(self, predict: Predict, resolution: int) -> np.ndarray:
        """The field on a ``resolution``^3 grid over [-1, 1]^3, [x, y, z] indexed, evaluated chunk by chunk."""
        axis = torch.linspace(-1.0, 1.0, resolution, device=self.device)
        grid = np.empty((resolution,) * 3, dtype=np.float32)
        slabs = max(1, GRID_CHUNK_POINTS // (resolution * resolution))
        for first in range(0, resolution, slabs):
            xs = axis[first : first + slabs]
            ys, zs = axis, axis
            block = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1).reshape(-1, 3)
            grid[first : first + len(xs)] = predict(block).reshape(len(xs), resolution, resolution).cpu().numpy()
        return grid

    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        """Marching cubes at logit 0 on a ``grid_resolution``^3 grid, written as ``reconstruction.ply`` in the input
        mesh's units. A field that is everywhere inside or everywhere outside has no surface: the file is empty."""
        grid = self.logit_grid(predict, self.grid_resolution)
        if grid.min() < 0.0 < grid.max():
            spacing = 2.0 / (self.grid_resolution - 1)
            # Logits grow towards the inside; "ascent" tells marching cubes so, giving outward-facing triangles.
            vertices, faces, _, _ = marching_cubes(grid, level=0.0, spacing=(spacing,) * 3, gradient_direction="ascent")
            vertices = (vertices - 1.0) / self.scale + self.center
        else:
            vertices, faces = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
        final = Path(out_dir) / RECONSTRUCTION_NAME
        with atomic_path(final) as temporary:
            trimesh.Trimesh(vertices, faces, process=False).export(temporary, file_type="ply")
        return final

    def preview(self, predict: Predict) -> np.ndarray:
        """The field's occupancy probability on the z = 0 slice (white = inside, x to the right, y up)."""
        probability = torch.sigmoid(predict(self._slice_points().to(self.device)))
        return _gray_picture(probability.reshape(PREVIEW_RESOLUTION, PREVIEW_RESOLUTION).cpu().numpy())

    def target_preview(self) -> np.ndarray:
        """The mesh's true occupancy on the same slice as ``preview``."""
        inside = self.labels(self._slice_points().numpy())
        return _gray_picture(inside.reshape(PREVIEW_RESOLUTION, PREVIEW_RESOLUTION).astype(np.float32))

    @staticmethod
    def _slice_points() -> torch.Tensor:
        """[R*R, 3] points of the z = 0 plane in picture order: row 0 at y = +1, column 0 at x = -1."""
        plane = grid_coordinates((PREVIEW_RESOLUTION, PREVIEW_RESOLUTION))
        return torch.stack([plane[:, 1], -plane[:, 0], torch.zeros(len(plane))], dim=1)


def _gray_picture(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] as an HxWx3 uint8 gray picture."""
    return np.repeat((values * 255.0).round().astype(np.uint8)[..., None], 3, axis=-1)


def _check_mesh(mesh: trimesh.Trimesh, name: str) -> None:
    if len(mesh.faces) == 0:
        raise SignalError(f"{name}: the file has no faces (a point cloud?); occupancy needs a triangle surface mesh")
    if not np.isfinite(mesh.vertices).all():
        raise SignalError(f"{name}: the mesh has NaN or infinite vertex positions; repair or re-export it")
    if mesh.extents.min() <= 0.0 or mesh.area <= 0.0:
        raise SignalError(f"{name}: the mesh is degenerate (flat or zero area) and encloses no volume; give a solid")


def load(path: Path, options: SignalOptions, grid_resolution: int = 128) -> OccupancySignal:
    """Read an OBJ/PLY/OFF/STL mesh (scenes are merged into one mesh) and sample labeled points around it."""
    path = Path(path)
    for option in ("resize", "frames", "max_seconds"):
        if getattr(options, option) is not None:
            flag = option.replace("_", "-")
            raise SignalError(f"{path}: --signal.{flag} applies to other signals, not meshes; drop it")
    if not path.is_file():
        raise SignalError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        raise SignalError(f"{path}: the file is empty (0 bytes); re-export or re-download it")
    if isinstance(options.num_points, int) and options.num_points > 0:
        what = f"{path} with --signal.num-points {options.num_points}"
        check_signal_fits(options.num_points + HELD_OUT_POINTS, POINT_BYTES, what, "give a smaller --signal.num-points")
    try:
        mesh = trimesh.load(path, force="mesh", process=True)
    except Exception as error:  # trimesh's parsers raise anything from ValueError to struct.error on bad files
        raise SignalError(f"{path}: cannot read this mesh ({error}); give a valid OBJ/PLY/OFF/STL file") from error
    if not isinstance(mesh, trimesh.Trimesh):
        raise SignalError(f"{path}: the file holds no triangle mesh; occupancy needs a surface mesh")
    return OccupancySignal(mesh, options, name=path.name, grid_resolution=grid_resolution)
