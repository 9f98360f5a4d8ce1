"""Posed test scenes without downloads: a small numpy ray tracer written out in the LLFF and Blender layouts.

The scenes are a few solid-textured primitives (spheres, boxes, a checkered ground plane, a back wall) lit by one
directional light with Lambert shading and hard shadows. Everything is view-independent, so a NeRF can fit it
exactly, and the camera poses that produced each image are returned so tests can check a dataparser against them.

Conventions: scenes are modeled in a y-up world; every camera-to-world matrix this module returns is in the
OpenGL/nerfstudio camera convention (columns: right, up, backwards, position). The files use each layout's own
convention: LLFF's `poses_bounds.npy` stores [down, right, backwards] columns, and the Blender layout reports the
scene in Blender's z-up world (the y-up scene rotated by `Y_UP_TO_Z_UP`).

Command line: `python -m nerfstudio_plugin.scene --layout llff --out data/synthetic_llff`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np

from nerfstudio_plugin.images import write_downscaled, write_png
from nf_precond.atomic import atomic_path, atomic_write_text

Vec3 = tuple[float, float, float]

# Rays start this far off a surface so they do not hit the surface they leave (shadow rays).
_SURFACE_OFFSET = 1e-4
# Pixels traced per chunk: bounds memory at about 100 MB whatever the image size.
_RAYS_PER_CHUNK = 1 << 16

# Blender's world is z-up: (x, y, z) in our y-up world is (x, -z, y) there.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------------------------------------------------
# Materials and primitives
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """A solid (3D) texture: the color depends on the world position only, so it is the same from every view."""

    base: Vec3
    """RGB in [0, 1]."""
    accent: Vec3 = (1.0, 1.0, 1.0)
    """Second color of the checker/stripes pattern."""
    pattern: Literal["solid", "checker", "stripes"] = "solid"
    """`checker`: 3D checkerboard; `stripes`: bands along the vertical axis."""
    period: float = 0.5
    """Size of one checker cell or stripe in world units."""

    def albedo(self, points: np.ndarray) -> np.ndarray:
        """Color [n, 3] at world points [n, 3]."""
        base = np.broadcast_to(np.asarray(self.base), points.shape)
        if self.pattern == "solid":
            return base.copy()
        if self.pattern == "checker":
            # The small shift keeps cell borders off planes at integer multiples of the period (the ground plane).
            cells = np.floor(points / self.period + 1e-3).astype(np.int64).sum(axis=1)
            use_accent = cells % 2 == 1
        else:
            use_accent = np.floor(points[:, 1] / self.period).astype(np.int64) % 2 == 1
        return np.where(use_accent[:, None], np.asarray(self.accent), base)


class Primitive(Protocol):
    material: Material

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Ray parameter t [n] of the nearest hit with t > 0 (inf on a miss); rays are origins + t * directions."""

    def normals(self, points: np.ndarray) -> np.ndarray:
        """Outward unit normals [n, 3] at surface points [n, 3]."""


@dataclass(frozen=True)
class Sphere:
    center: Vec3
    radius: float
    material: Material

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        offset = origins - np.asarray(self.center)
        a = np.einsum("ij,ij->i", directions, directions)
        half_b = np.einsum("ij,ij->i", offset, directions)
        c = np.einsum("ij,ij->i", offset, offset) - self.radius**2
        discriminant = half_b**2 - a * c
        root = np.sqrt(np.maximum(discriminant, 0.0))
        near = (-half_b - root) / a
        far = (-half_b + root) / a
        t = np.where(near > _SURFACE_OFFSET, near, far)
        return np.where((discriminant >= 0) & (t > _SURFACE_OFFSET), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.center)) / self.radius


@dataclass(frozen=True)
class Box:
    """A box turned by `yaw` radians about the vertical (y) axis."""

    center: Vec3
    half_size: Vec3
    material: Material
    yaw: float = 0.0

    def _rotation(self) -> np.ndarray:
        """Box-to-world rotation about the y axis."""
        cos, sin = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])

    def _to_local(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self._rotation()  # row vectors: v @ R applies R^T, the inverse rotation

    def _to_world(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self._rotation().T

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        local_origins = self._to_local(origins - np.asarray(self.center))
        local_directions = self._to_local(directions)
        half = np.asarray(self.half_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / local_directions
            t0 = (-half - local_origins) * inverse
            t1 = (half - local_origins) * inverse
        # A ray parallel to a slab gives nan (0 * inf) when it starts on the slab's border: treat that as outside.
        t_enter = np.nan_to_num(np.minimum(t0, t1), nan=np.inf).max(axis=1)
        t_exit = np.nan_to_num(np.maximum(t0, t1), nan=-np.inf).min(axis=1)
        t = np.where(t_enter > _SURFACE_OFFSET, t_enter, t_exit)
        return np.where((t_enter <= t_exit) & (t > _SURFACE_OFFSET), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        local = self._to_local(points - np.asarray(self.center)) / np.asarray(self.half_size)
        axis = np.abs(local).argmax(axis=1)
        local_normals = np.zeros_like(local)
        rows = np.arange(len(points))
        local_normals[rows, axis] = np.sign(local[rows, axis])
        return self._to_world(local_normals)


@dataclass(frozen=True)
class Plane:
    point: Vec3
    normal: Vec3
    material: Material

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        normal = np.asarray(self.normal)
        facing = directions @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((np.asarray(self.point) - origins) @ normal) / facing
        return np.where((facing != 0) & (t > _SURFACE_OFFSET), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.normal, dtype=np.float64), points.shape).copy()


@dataclass(frozen=True)
class Scene:
    primitives: tuple[Primitive, ...]
    light_direction: Vec3 = (-0.4, 0.8, 0.45)
    """Direction towards the (directional) light, in the scene's y-up world; normalized when used."""
    ambient: float = 0.25
    """Light that reaches shadowed and back-facing surfaces."""


def forward_facing_scene() -> Scene:
    """A table-top scene in front of cameras near the origin that look down -z (like LLFF's fern or trex)."""
    blue_checker = Material((0.2, 0.35, 0.85), (0.9, 0.9, 0.95), "checker", 0.25)
    return Scene(
        primitives=(
            Plane((0.0, -1.0, 0.0), (0.0, 1.0, 0.0), Material((0.85, 0.85, 0.8), (0.25, 0.3, 0.35), "checker", 0.5)),
            Plane((0.0, 0.0, -9.0), (0.0, 0.0, 1.0), Material((0.55, 0.7, 0.9), (0.9, 0.85, 0.6), "stripes", 0.6)),
            Sphere((-0.9, -0.3, -4.0), 0.7, Material((0.85, 0.2, 0.15), (0.95, 0.8, 0.2), "stripes", 0.2)),
            Sphere((0.25, -0.75, -3.0), 0.25, Material((0.2, 0.75, 0.3))),
            Sphere((1.8, 0.4, -7.0), 0.8, Material((0.95, 0.8, 0.25), (0.6, 0.3, 0.7), "checker", 0.4)),
            Box((0.9, -0.5, -5.0), (0.5, 0.5, 0.5), blue_checker, yaw=0.5),
        )
    )


def object_scene() -> Scene:
    """An object on a pedestal around the origin, inside [-1.5, 1.5]^3 (nerfstudio's Blender scene box)."""
    return Scene(
        primitives=(
            Box((0.0, -0.75, 0.0), (0.8, 0.25, 0.8), Material((0.9, 0.9, 0.85), (0.3, 0.3, 0.35), "checker", 0.2)),
            Sphere((0.0, 0.1, 0.0), 0.6, Material((0.85, 0.25, 0.15), (0.95, 0.85, 0.3), "stripes", 0.15)),
            Sphere((0.6, -0.3, 0.5), 0.2, Material((0.2, 0.75, 0.3))),
            Box((-0.5, -0.3, -0.45), (0.2, 0.2, 0.2), Material((0.2, 0.35, 0.85)), 0.6),
        ),
        light_direction=(0.5, 0.9, 0.6),
    )


# --------------------------------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------------------------------


def _nearest_hits(scene: Scene, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ray: t of the nearest hit (inf on a miss) and the index of the primitive hit."""
    hits = np.stack([primitive.intersect(origins, directions) for primitive in scene.primitives])
    nearest = hits.argmin(axis=0)
    return hits[nearest, np.arange(len(origins))], nearest


def trace(scene: Scene, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shade rays [n, 3] (directions need not be unit): color [n, 3] in [0, 1] (0 on a miss) and hit t [n]."""
    t, primitive_index = _nearest_hits(scene, origins, directions)
    colour = np.zeros_like(origins)
    hit = np.isfinite(t)
    if not hit.any():
        return colour, t
    points = origins[hit] + t[hit, None] * directions[hit]
    normals = np.empty_like(points)
    albedo = np.empty_like(points)
    for index, primitive in enumerate(scene.primitives):
        mine = primitive_index[hit] == index
        if mine.any():
            normals[mine] = primitive.normals(points[mine])
            albedo[mine] = primitive.material.albedo(points[mine])
    # Planes are two-sided: light the side the ray sees.
    facing_away = np.einsum("ij,ij->i", normals, directions[hit]) > 0
    normals[facing_away] *= -1
    light = np.asarray(scene.light_direction) / np.linalg.norm(scene.light_direction)
    lambert = np.clip(normals @ light, 0.0, None)
    shadow_t, _ = _nearest_hits(scene, points + _SURFACE_OFFSET * normals, np.broadcast_to(light, points.shape))
    lit = np.isinf(shadow_t)
    colour[hit] = albedo * (scene.ambient + (1.0 - scene.ambient) * (lambert * lit))[:, None]
    return np.clip(colour, 0.0, 1.0), t


def look_at(position: Sequence[float], target: Sequence[float], up: Sequence[float]) -> np.ndarray:
    """Camera-to-world [3, 4] (OpenGL: right, up, backwards, position) of a camera at `position` facing `target`."""
    position = np.asarray(position, dtype=np.float64)
    backwards = position - np.asarray(target, dtype=np.float64)
    backwards /= np.linalg.norm(backwards)
    right = np.cross(np.asarray(up, dtype=np.float64), backwards)
    right /= np.linalg.norm(right)
    true_up = np.cross(backwards, right)
    return np.stack([right, true_up, backwards, position], axis=1)


def focal_from_fov(width: int, fov_x_degrees: float) -> float:
    """Focal length in pixels of a pinhole camera `width` pixels wide with horizontal field of view `fov_x_degrees`."""
    return 0.5 * width / math.tan(math.radians(fov_x_degrees) / 2)


def render_view(
    scene: Scene, camera_to_world: np.ndarray, height: int, width: int, focal: float, supersample: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one pinhole view (principal point at the image center, OpenGL camera-to-world [3, 4]).

    Returns straight (not premultiplied) color [H, W, 3], coverage alpha [H, W] and the camera z-depth of each
    pixel's nearest hit [H, W] (inf where no subsample hit anything). `supersample`² jittered-grid samples per pixel
    anti-alias edges and give fractional alpha on silhouettes.
    """
    offsets = (np.arange(supersample) + 0.5) / supersample
    rows = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    cols = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    # Camera-space directions with z = -1, so the hit parameter t is the z-depth.
    camera_directions = np.stack(
        [(grid_cols - width / 2) / focal, -(grid_rows - height / 2) / focal, -np.ones_like(grid_rows)], axis=-1
    ).reshape(-1, 3)
    directions = camera_directions @ camera_to_world[:, :3].T
    origins = np.broadcast_to(camera_to_world[:, 3], directions.shape)
    colour = np.empty_like(directions)
    depth = np.empty(len(directions))
    for start in range(0, len(directions), _RAYS_PER_CHUNK):
        chunk = slice(start, start + _RAYS_PER_CHUNK)
        colour[chunk], depth[chunk] = trace(scene, origins[chunk], directions[chunk])
    # [H*s, W*s] samples -> [H, s, W, s] blocks, one per pixel.
    colour = colour.reshape(height, supersample, width, supersample, 3)
    depth = depth.reshape(height, supersample, width, supersample)
    covered = np.isfinite(depth)
    coverage = covered.sum(axis=(1, 3))
    alpha = coverage / supersample**2
    summed = (colour * covered[..., None]).sum(axis=(1, 3))
    straight = np.where(coverage[..., None] > 0, summed / np.maximum(coverage, 1)[..., None], 0.0)
    return straight, alpha, depth.min(axis=(1, 3))


# --------------------------------------------------------------------------------------------------------------------
# Writing files (atomically, through nf_precond.atomic)
# --------------------------------------------------------------------------------------------------------------------


def write_json(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, indent=2))


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        np.save(temporary, array)


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedViews:
    """What the generator rendered: the ground truth a dataparser is checked against."""

    root: Path
    """The scene folder (what `--data` takes)."""
    image_paths: list[Path]
    """Full-resolution images, in pose order."""
    camera_to_worlds: np.ndarray
    """[N, 3, 4] OpenGL convention (right, up, backwards, position) in the layout's world frame."""
    height: int
    width: int
    focal: float
    """Focal length in pixels at full resolution."""
    near: np.ndarray
    """[N] smallest camera z-depth of any visible surface (inf where a view sees nothing)."""
    far: np.ndarray
    """[N] largest camera z-depth of any visible surface."""


def forward_facing_poses(num_views: int, radius: float = 0.5, focus: Vec3 = (0.0, -0.3, -5.0)) -> np.ndarray:
    """[N, 3, 4] handheld-like cameras spread over a small disc in the plane z = 0, all turned towards `focus`.

    Positions follow Vogel's sunflower spiral (even coverage for any N), squashed vertically like a landscape capture.
    """
    index = np.arange(num_views) + 0.5
    spread = radius * np.sqrt(index / num_views)
    angle = index * math.pi * (3.0 - math.sqrt(5.0))
    positions = np.stack([spread * np.cos(angle), 0.6 * spread * np.sin(angle), np.zeros(num_views)], axis=1)
    return np.stack([look_at(position, focus, up=(0.0, 1.0, 0.0)) for position in positions])


def render_llff(
    out_dir: Path | str,
    num_views: int = 20,
    height: int = 96,
    width: int = 128,
    *,
    fov_x_degrees: float = 60.0,
    supersample: int = 2,
    downscale_factors: Sequence[int] = (4, 8),
    scene: Scene | None = None,
) -> RenderedViews:
    """Render a forward-facing scene into the LLFF layout of `out_dir`.

    Writes `images/image_{i:03d}.png`, box-filtered copies in `images_{k}/` for each k in `downscale_factors`, and
    `poses_bounds.npy` [N, 17]: per view the 3x5 matrix [down, right, backwards, position, (H, W, focal)] flattened
    row-major, then the near and far z-depth bounds of the visible surfaces.
    """
    _require_view_size(num_views, height, width, supersample)
    out_dir = Path(out_dir)
    scene = scene or forward_facing_scene()
    focal = focal_from_fov(width, fov_x_degrees)
    camera_to_worlds = forward_facing_poses(num_views)
    image_paths, near, far = [], np.empty(num_views), np.empty(num_views)
    for index, camera_to_world in enumerate(camera_to_worlds):
        colour, _, depth = render_view(scene, camera_to_world, height, width, focal, supersample)
        path = out_dir / "images" / f"image_{index:03d}.png"
        write_png(path, colour)
        image_paths.append(path)
        near[index], far[index] = depth.min(), depth.max()
        for factor in downscale_factors:
            write_downscaled(path, out_dir / f"images_{factor}" / path.name, factor)
    right, up, backwards, position = np.moveaxis(camera_to_worlds, 2, 0)
    hwf = np.broadcast_to(np.array([height, width, focal]), position.shape)
    llff_matrices = np.stack([-up, right, backwards, position, hwf], axis=2)  # [N, 3, 5]
    poses_bounds = np.concatenate([llff_matrices.reshape(num_views, 15), near[:, None], far[:, None]], axis=1)
    write_npy(out_dir / "poses_bounds.npy", poses_bounds)
    return RenderedViews(out_dir, image_paths, camera_to_worlds, height, width, focal, near, far)


def orbit_poses(elevations_degrees: np.ndarray, azimuths_degrees: np.ndarray, radius: float) -> np.ndarray:
    """[N, 3, 4] cameras on a sphere of `radius` around the origin (y-up world) looking at the origin."""
    elevation, azimuth = np.radians(elevations_degrees), np.radians(azimuths_degrees)
    positions = radius * np.stack(
        [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)], axis=1
    )
    return np.stack([look_at(position, (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) for position in positions])


def _hemisphere_views(num_views: int) -> tuple[np.ndarray, np.ndarray]:
    """Elevations/azimuths spread evenly over the upper hemisphere (Fibonacci lattice), 5 to 75 degrees up."""
    index = np.arange(num_views) + 0.5
    heights = np.sin(np.radians(5.0)) + (np.sin(np.radians(75.0)) - np.sin(np.radians(5.0))) * index / num_views
    elevations = np.degrees(np.arcsin(heights))
    azimuths = np.degrees(index * math.pi * (3.0 - math.sqrt(5.0))) % 360.0
    return elevations, azimuths


def render_blender(
    out_dir: Path | str,
    num_views: int = 16,
    height: int = 64,
    width: int = 64,
    *,
    num_val_views: int = 4,
    num_test_views: int = 4,
    radius: float = 4.0,
    fov_x_degrees: float = 39.6,
    supersample: int = 2,
    scene: Scene | None = None,
) -> dict[str, RenderedViews]:
    """Render an object into the Blender (NeRF synthetic) layout of `out_dir`.

    Training views cover the upper hemisphere; val and test views orbit at 30 degrees elevation (like the NeRF
    synthetic set's). Writes `{split}/r_{i}.png` (RGBA, transparent background) and `transforms_{split}.json` with
    `camera_angle_x` and frames of `file_path` (no extension, as Blender's exporter writes it) and the 4x4 OpenGL
    `transform_matrix` in Blender's z-up world. The default radius and field of view match the NeRF synthetic scenes.
    """
    out_dir = Path(out_dir)
    scene = scene or object_scene()
    focal = focal_from_fov(width, fov_x_degrees)
    orbit_azimuths = {
        "val": np.linspace(0.0, 360.0, num_val_views, endpoint=False) + 15.0,
        "test": np.linspace(0.0, 360.0, num_test_views, endpoint=False) + 40.0,
    }
    rendered = {}
    for split, count in (("train", num_views), ("val", num_val_views), ("test", num_test_views)):
        _require_view_size(count, height, width, supersample, what=f"{split} views")
        if split == "train":
            elevations, azimuths = _hemisphere_views(count)
        else:
            elevations, azimuths = np.full(count, 30.0), orbit_azimuths[split]
        camera_to_worlds = orbit_poses(elevations, azimuths, radius)
        frames, image_paths, near, far = [], [], np.empty(count), np.empty(count)
        for index, camera_to_world in enumerate(camera_to_worlds):
            colour, alpha, depth = render_view(scene, camera_to_world, height, width, focal, supersample)
            path = out_dir / split / f"r_{index}.png"
            write_png(path, np.concatenate([colour, alpha[..., None]], axis=-1))
            image_paths.append(path)
            covered = np.isfinite(depth)
            near[index] = depth[covered].min() if covered.any() else np.inf
            far[index] = depth[covered].max() if covered.any() else np.inf
            blender_pose = np.vstack([Y_UP_TO_Z_UP @ camera_to_world, [0.0, 0.0, 0.0, 1.0]])
            frames.append(
                {"file_path": f"./{split}/r_{index}", "rotation": 0.0, "transform_matrix": blender_pose.tolist()}
            )
        transforms = {"camera_angle_x": math.radians(fov_x_degrees), "frames": frames}
        write_json(out_dir / f"transforms_{split}.json", transforms)
        world_poses = np.einsum("ij,njk->nik", Y_UP_TO_Z_UP, camera_to_worlds)
        rendered[split] = RenderedViews(out_dir, image_paths, world_poses, height, width, focal, near, far)
    return rendered


def _require_view_size(count: int, height: int, width: int, supersample: int, what: str = "views") -> None:
    if count < 1:
        raise ValueError(f"need at least 1 of the {what}, got {count}; pass a positive count")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}; pass --height/--width >= 1")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nerfstudio_plugin.scene",
        description="Render a small posed test scene (numpy ray tracer) in the LLFF or Blender layout.",
    )
    parser.add_argument("--layout", choices=("llff", "blender"), required=True, help="folder layout to write")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; files are overwritten)")
    parser.add_argument("--num-views", type=int, default=None, help="views (Blender: training views); default 20 / 16")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels; default 96 / 64")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels; default 128 / 64")
    parser.add_argument("--supersample", type=int, default=2, help="samples per pixel along each axis (anti-aliasing)")
    args = parser.parse_args(argv)
    render = render_llff if args.layout == "llff" else render_blender
    sizes = {key: getattr(args, key) for key in ("num_views", "height", "width") if getattr(args, key) is not None}
    try:
        rendered = render(args.out, supersample=args.supersample, **sizes)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    views = rendered if isinstance(rendered, RenderedViews) else rendered["train"]
    print(f"wrote a {args.layout} scene to {args.out} ({len(views.image_paths)} views at {views.height}x{views.width})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
