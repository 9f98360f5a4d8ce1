"""Dataparsers: the LLFF layout (`poses_bounds.npy`) and a parser that detects a folder's layout.

`ns-train <method> llff-data --data llff/fern` reads the standard LLFF layout the way the NeRF paper's loader does;
`auto-data` (our methods' default) picks LLFF, Blender (`transforms_train.json`) or nerfstudio (`transforms.json`)
from what the folder holds. Every problem with a folder (missing, empty or garbage files included) is raised as
`DatasetLayoutError` while the dataparser runs, i.e. before training starts, with one line naming the folder, what
is wrong and how to fix it.

The LLFF parser also tells models how to sample the scene: a forward-facing capture (detected from the cameras'
viewing directions) in NeRF's recentered, rescaled world gets NDC parameters in `metadata["ndc"]` (see `ndc.py`);
360-degree captures get none and are sampled in world space, like Blender and nerfstudio folders.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.io import load_from_json

from nerfstudio_plugin.images import write_downscaled
from nf_precond.atomic import atomic_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Image files an LLFF `images*/` folder may hold (any case); other files there are ignored."""

AUTO_DOWNSCALE_FACTORS = (1, 2, 4, 8)
"""Factors `downscale_factor=None` chooses from: the ones LLFF ships as `images_{k}/` (plus 1 and 2)."""


NDC_NEAR = 1.0
"""Depth of NDC's near plane in the rescaled world (NeRF's LLFF setting; bd_factor puts content beyond it)."""


class DatasetLayoutError(ValueError):
    """A dataset folder is missing a file or holds inconsistent data; the message names the folder and the fix."""


# --------------------------------------------------------------------------------------------------------------------
# Pose math (pure numpy, [N, 3, 4] camera-to-world matrices)
# --------------------------------------------------------------------------------------------------------------------


def llff_to_opengl(llff_rotations: np.ndarray) -> np.ndarray:
    """Reorder LLFF's rotation columns [down, right, backwards] into OpenGL's [right, up, backwards]."""
    down, right, backwards = np.moveaxis(llff_rotations, -1, 0)
    return np.stack([right, -down, backwards], axis=-1)


def average_pose(camera_to_worlds: np.ndarray) -> np.ndarray:
    """The mean camera [3, 4]: at the mean position, looking along the mean viewing direction, rolled to the mean up.

    The backwards axis is the normalized sum of the backwards axes; right and up are then orthogonalized against it
    (up ⟂ backwards, right = up × backwards) so the result is a rotation.
    """
    backwards = camera_to_worlds[:, :, 2].sum(axis=0)
    backwards /= np.linalg.norm(backwards)
    up_hint = camera_to_worlds[:, :, 1].sum(axis=0)
    right = np.cross(up_hint, backwards)
    right /= np.linalg.norm(right)
    up = np.cross(backwards, right)
    return np.stack([right, up, backwards, camera_to_worlds[:, :, 3].mean(axis=0)], axis=1)


def world_transform(camera_to_worlds: np.ndarray, recenter: bool) -> np.ndarray:
    """[3, 4] rigid map x -> R x + t applied to world points: the inverse of the average pose, or identity."""
    if not recenter:
        return np.eye(3, 4)
    average = average_pose(camera_to_worlds)
    rotation = average[:, :3].T
    return np.concatenate([rotation, -rotation @ average[:, 3:]], axis=1)


def apply_world_transform(camera_to_worlds: np.ndarray, transform: np.ndarray, scale: float) -> np.ndarray:
    """Move cameras [N, 3, 4] into the parser's world: rotate and translate by `transform`, then scale positions."""
    rotations = transform[:, :3] @ camera_to_worlds[:, :, :3]
    positions = scale * (transform[:, :3] @ camera_to_worlds[:, :, 3:] + transform[:, 3:])
    return np.concatenate([rotations, positions], axis=2)


def bounds_scale(bounds: np.ndarray, bd_factor: Optional[float]) -> float:
    """The NeRF paper's rescale: the nearest bound lands at 1 / bd_factor (so the plane at depth 1 is nearer still)."""
    return 1.0 if bd_factor is None else 1.0 / (float(bounds.min()) * bd_factor)


def frustum_box(
    camera_to_worlds: np.ndarray, near: np.ndarray, far: np.ndarray, half_width: np.ndarray, half_height: np.ndarray
) -> np.ndarray:
    """[2, 3] axis-aligned box around the cameras and their viewing frustums cut at their near and far depths.

    `half_width`/`half_height` [N] are the image's half extents at z-depth 1 (half the width over fx, ...).
    """
    signs = np.array([(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)])
    # Image corners at z-depth 1 in OpenGL camera space (looking down -z): [N, 4, 3].
    corners = np.stack(
        [signs[None, :, 0] * half_width[:, None], signs[None, :, 1] * half_height[:, None], -np.ones((len(near), 4))],
        axis=-1,
    )
    depths = np.stack([near, far], axis=1)  # [N, 2]
    camera_points = corners[:, None] * depths[:, :, None, None]  # [N, 2, 4, 3]
    rotations, positions = camera_to_worlds[:, :, :3], camera_to_worlds[:, :, 3]
    world_points = np.einsum("nij,nkcj->nkci", rotations, camera_points) + positions[:, None, None, :]
    points = np.concatenate([world_points.reshape(-1, 3), positions], axis=0)
    return np.stack([points.min(axis=0), points.max(axis=0)])


def faces_one_way(camera_to_worlds: np.ndarray, max_angle_degrees: float) -> bool:
    """Whether every camera's viewing direction (-backwards) lies within `max_angle_degrees` of the cameras' mean
    viewing direction: a forward-facing capture (LLFF's scenes), not one around an object (360 degrees)."""
    viewing = -camera_to_worlds[:, :, 2] / np.linalg.norm(camera_to_worlds[:, :, 2], axis=1, keepdims=True)
    mean = viewing.sum(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-9:
        return False
    return bool((viewing @ (mean / norm) >= np.cos(np.radians(max_angle_degrees))).all())


def holdout_indices(num_images: int, llffhold: int, split: str) -> np.ndarray:
    """NeRF's LLFF split: every `llffhold`-th image (0, k, 2k, ...) is held out for eval; 0 keeps all in both."""
    all_indices = np.arange(num_images)
    if llffhold <= 0:
        return all_indices
    held_out = all_indices % llffhold == 0
    return all_indices[~held_out] if split == "train" else all_indices[held_out]


# --------------------------------------------------------------------------------------------------------------------
# Folder checks
# --------------------------------------------------------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    """Image files of `folder` sorted by name (LLFF's pose order)."""
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def common_image_size(paths: Sequence[Path], folder: Path) -> tuple[int, int]:
    """(height, width) shared by all `paths`; reads headers only. Raises if any is unreadable or sized differently."""
    sizes: dict[tuple[int, int], Path] = {}
    for path in paths:
        if not path.is_file():
            raise DatasetLayoutError(f"{folder}: image {path} is missing; restore it or remove its frame/pose")
        try:
            with Image.open(path) as image:
                sizes.setdefault((image.height, image.width), path)
        except OSError as error:
            raise DatasetLayoutError(f"{folder}: cannot read image {path} ({error}); replace it with a valid image")
    if len(sizes) > 1:
        examples = ", ".join(f"{path.name} is {h}x{w}" for (h, w), path in list(sizes.items())[:3])
        raise DatasetLayoutError(
            f"{folder}: images have mixed sizes ({examples}); all views of a scene must share one size"
        )
    return next(iter(sizes))


def load_poses_bounds(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """LLFF `poses_bounds.npy` as ([N, 3, 5] pose matrices, [N, 2] near/far bounds), checked."""
    path = folder / "poses_bounds.npy"
    if not path.is_file():
        raise DatasetLayoutError(
            f"{folder}: no poses_bounds.npy; an LLFF scene needs poses_bounds.npy beside images/ "
            "(make one with LLFF's imgs2poses.py, or use auto-data for Blender/nerfstudio layouts)"
        )
    if path.stat().st_size == 0:
        raise DatasetLayoutError(f"{folder}: poses_bounds.npy is empty (0 bytes); regenerate it")
    try:
        poses_bounds = np.load(path)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise DatasetLayoutError(f"{folder}: cannot read poses_bounds.npy ({error}); regenerate it")
    if not isinstance(poses_bounds, np.ndarray) or not np.issubdtype(poses_bounds.dtype, np.number):
        raise DatasetLayoutError(f"{folder}: poses_bounds.npy does not hold a numeric array; regenerate it")
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or len(poses_bounds) == 0:
        raise DatasetLayoutError(
            f"{folder}: poses_bounds.npy has shape {poses_bounds.shape}, expected [N, 17] "
            "(3x5 pose matrix + near/far per image); regenerate it"
        )
    if not np.isfinite(poses_bounds).all() or (poses_bounds[:, 15:] <= 0).any():
        raise DatasetLayoutError(
            f"{folder}: poses_bounds.npy holds non-finite values or non-positive near/far bounds; regenerate it"
        )
    return poses_bounds[:, :15].reshape(-1, 3, 5).astype(np.float64), poses_bounds[:, 15:].astype(np.float64)


# --------------------------------------------------------------------------------------------------------------------
# LLFF dataparser
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """The LLFF layout (`poses_bounds.npy`, `images/`, `images_4/`, `images_8/`), read as the NeRF paper does."""

    _target: Type = field(default_factory=lambda: LLFF)
    """target class to instantiate"""
    data: Path = Path("data/nerf_llff_data/fern")
    """Scene folder holding poses_bounds.npy and images/."""
    downscale_factor: Optional[int] = None
    """Shrink images by this integer factor: reads images_{k}/ when it exists, else writes box-filtered copies there
    first. None picks the smallest of 1, 2, 4, 8 whose longer side fits max_auto_resolution."""
    max_auto_resolution: int = 640
    """Longest image side, in pixels, that downscale_factor=None aims for (fern's 4032x3024 -> factor 8, 504x378)."""
    bd_factor: Optional[float] = 0.75
    """Rescale the world so the nearest near-bound lands at depth 1/bd_factor, as the NeRF paper does (0.75: the
    plane at depth 1, NDC's near plane, stays in front of all content). None keeps LLFF's units."""
    recenter: bool = True
    """Move the world so the average camera sits at the origin looking down -z with +y up (NeRF's recenter_poses)."""
    llffhold: int = 8
    """Hold out every llffhold-th image (0, k, 2k, ...) for eval, as the NeRF paper does; 0 trains and evaluates on
    all images."""
    forward_facing: Optional[bool] = None
    """Whether the cameras all face one way (LLFF's captures) rather than circle the scene (360 degrees). None
    detects it: forward-facing when every camera looks within forward_facing_max_angle of the mean viewing direction.
    Forward-facing scenes in NeRF's world (recenter and bd_factor set) get NDC parameters in metadata["ndc"], so
    models sample them in normalized device coordinates as NeRF does; others are sampled in world space."""
    forward_facing_max_angle: float = 45.0
    """Largest angle, in degrees, between a camera's viewing direction and the mean one in a forward-facing capture
    (handheld LLFF captures stay within about 20 degrees; a half orbit already exceeds 45)."""


@dataclass
class LLFF(DataParser):
    """Reads an LLFF scene. Cameras come out in nerfstudio's OpenGL convention in the recentered, rescaled world;
    `dataparser_transform`/`dataparser_scale` record that change of world (transform first, then scale)."""

    config: LLFFDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        folder = self.config.data
        if not folder.is_dir():
            raise DatasetLayoutError(f"{folder}: no such folder; pass --data the folder holding poses_bounds.npy")
        poses, bounds = load_poses_bounds(folder)
        full_height, full_width, focal = poses[0, :, 4]
        image_paths, (height, width) = self._images(folder, len(poses), int(full_height), int(full_width))

        camera_to_worlds = np.concatenate([llff_to_opengl(poses[:, :, :3]), poses[:, :, 3:4]], axis=2)
        scale = bounds_scale(bounds, self.config.bd_factor)
        transform = world_transform(camera_to_worlds, self.config.recenter)
        camera_to_worlds = apply_world_transform(camera_to_worlds, transform, scale)
        bounds = bounds * scale

        # Focal lengths follow the pixels actually loaded (handles images_{k} rounding and pre-resized images/).
        fx = poses[:, 2, 4] * width / poses[:, 1, 4]
        fy = poses[:, 2, 4] * height / poses[:, 0, 4]
        cx, cy = np.full(len(poses), width / 2.0), np.full(len(poses), height / 2.0)
        box = frustum_box(camera_to_worlds, bounds[:, 0], bounds[:, 1], cx / fx, cy / fy)
        forward_facing = self.config.forward_facing
        if forward_facing is None:
            forward_facing = faces_one_way(camera_to_worlds, self.config.forward_facing_max_angle)
        ndc = None
        if forward_facing and self.config.recenter and self.config.bd_factor is not None:
            # NeRF's NDC: the mean camera's intrinsics, near plane at depth 1 (content starts at 1 / bd_factor).
            ndc = {"scale_x": float(np.mean(2.0 * fx / width)), "scale_y": float(np.mean(2.0 * fy / height)),
                   "near": NDC_NEAR}  # fmt: skip

        indices = holdout_indices(len(poses), self.config.llffhold, split)
        fx, fy, cx, cy = (torch.from_numpy(values[indices, None]).float() for values in (fx, fy, cx, cy))
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(camera_to_worlds[indices]).float(),
            fx=fx,
            fy=fy,
            cx=cx,
            cy=cy,
            width=width,
            height=height,
            camera_type=CameraType.PERSPECTIVE,
        )
        return DataparserOutputs(
            image_filenames=[image_paths[i] for i in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.from_numpy(box).float()),
            dataparser_transform=torch.from_numpy(transform).float(),
            dataparser_scale=scale,
            metadata={
                "layout": "llff",
                "forward_facing": forward_facing,
                "near": float(bounds[:, 0].min()),
                "far": float(bounds[:, 1].max()),
                **({"ndc": ndc} if ndc is not None else {}),
            },
        )

    def _images(self, folder: Path, num_poses: int, height: int, width: int) -> tuple[list[Path], tuple[int, int]]:
        """The images to train on at the configured factor, and their (height, width); writes images_{k}/ if absent.

        `height`/`width` are the full-resolution size poses_bounds.npy records."""
        factor = self.config.downscale_factor
        if factor is None:
            longest = max(height, width)
            fitting = [k for k in AUTO_DOWNSCALE_FACTORS if longest / k <= self.config.max_auto_resolution]
            factor = fitting[0] if fitting else AUTO_DOWNSCALE_FACTORS[-1]
        if factor < 1:
            raise DatasetLayoutError(f"{folder}: downscale_factor must be a positive integer, got {factor}")
        image_folder = folder / ("images" if factor == 1 else f"images_{factor}")
        if not image_folder.is_dir():
            full_images = self._checked_images(folder / "images", num_poses)[0]
            self._write_downscaled(full_images, image_folder, factor)
        return self._checked_images(image_folder, num_poses)

    @staticmethod
    def _checked_images(image_folder: Path, num_poses: int) -> tuple[list[Path], tuple[int, int]]:
        """The images of `image_folder` and their shared (height, width), one per pose."""
        if not image_folder.is_dir():
            raise DatasetLayoutError(
                f"{image_folder.parent}: no {image_folder.name}/ folder; put the {num_poses} images there"
            )
        images = list_images(image_folder)
        if len(images) != num_poses:
            raise DatasetLayoutError(
                f"{image_folder}: {len(images)} images but poses_bounds.npy has {num_poses} poses; "
                "the folder must hold exactly one image per pose (in pose order by file name)"
            )
        return images, common_image_size(images, image_folder)

    @staticmethod
    def _write_downscaled(images: list[Path], scaled_folder: Path, factor: int) -> None:
        """Write every image shrunk by `factor` into a temp folder, then move it into place as one step."""
        try:
            with atomic_folder(scaled_folder) as temp_folder:
                for path in images:
                    write_downscaled(path, temp_folder / f"{path.stem}.png", factor)
        except OSError as error:
            raise DatasetLayoutError(
                f"{scaled_folder.parent}: cannot write {scaled_folder.name}/ ({error}); make the folder writable "
                f"or create {scaled_folder.name}/ with the images shrunk {factor}x"
            ) from error


# --------------------------------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------------------------------

Layout = Literal["llff", "blender", "nerfstudio"]

LAYOUT_MARKERS: dict[Layout, str] = {
    "llff": "poses_bounds.npy",
    "blender": "transforms_train.json",
    "nerfstudio": "transforms.json",
}
"""The file that identifies each layout, checked in this order (the first found wins)."""


def detect_layout(data: Path) -> Layout:
    """Which layout `data` holds; a `.json` file is a nerfstudio transforms file."""
    if data.is_file() and data.suffix == ".json":
        return "nerfstudio"
    if not data.is_dir():
        raise DatasetLayoutError(f"{data}: no such folder; pass --data a scene folder")
    for layout, marker in LAYOUT_MARKERS.items():
        if (data / marker).is_file():
            return layout
    expected = ", ".join(f"{marker} ({layout})" for layout, marker in LAYOUT_MARKERS.items())
    raise DatasetLayoutError(f"{data}: unknown dataset layout, found none of {expected}; pass a scene folder")


NERFSTUDIO_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
"""Camera keys nerfstudio's parser needs, at the top level of transforms.json or in every frame."""


def read_transforms(transforms: Path) -> dict:
    """A transforms JSON file as a dict whose non-empty `frames` each name an image (`file_path`) and carry a finite
    4x4 `transform_matrix`."""
    try:
        content = load_from_json(transforms)
    except ValueError as error:  # includes empty files and undecodable bytes
        raise DatasetLayoutError(f"{transforms.parent}: {transforms.name} is not valid JSON ({error}); regenerate it")
    frames = content.get("frames") if isinstance(content, dict) else None
    if not frames or not isinstance(frames, list) or not all(isinstance(f, dict) and "file_path" in f for f in frames):
        raise DatasetLayoutError(
            f"{transforms.parent}: {transforms.name} needs a JSON object with a non-empty frames list, each frame with "
            "a file_path; regenerate it"
        )
    for frame in frames:
        if not is_pose_matrix(frame.get("transform_matrix")):
            raise DatasetLayoutError(
                f"{transforms.parent}: {transforms.name}: frame {frame['file_path']} has no finite 4x4 "
                "transform_matrix; regenerate it"
            )
    return content


def is_pose_matrix(value: object) -> bool:
    """Whether `value` is a finite 4x4 matrix (nested lists of numbers)."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return matrix.shape == (4, 4) and bool(np.isfinite(matrix).all())


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def check_blender_folder(data: Path) -> None:
    """transforms_train/val.json (and _test.json if present) list existing same-size images; training reads both."""
    for split in ("train", "val", "test"):
        transforms = data / f"transforms_{split}.json"
        if split == "test" and not transforms.is_file():
            continue  # only ns-eval reads it, and nerfstudio names the file if it is missing then
        if not transforms.is_file():
            raise DatasetLayoutError(f"{data}: no {transforms.name}; a Blender scene needs transforms_train/val.json")
        content = read_transforms(transforms)
        if not is_number(content.get("camera_angle_x")):
            raise DatasetLayoutError(
                f"{data}: {transforms.name} has no numeric camera_angle_x (the horizontal field of view in radians)"
            )
        # Blender's loader appends ".png" to each file_path.
        common_image_size([data / (frame["file_path"].replace("./", "") + ".png") for frame in content["frames"]], data)


def check_nerfstudio_folder(data: Path) -> None:
    """The transforms file lists frames whose images exist, with the camera intrinsics nerfstudio's parser needs
    (sizes may differ: each frame may carry its own)."""
    transforms = data if data.is_file() else data / "transforms.json"
    content = read_transforms(transforms)
    for frame in content["frames"]:
        path = transforms.parent / frame["file_path"]
        if not path.is_file():
            raise DatasetLayoutError(f"{transforms.parent}: image {path} is missing; restore it or remove its frame")
        missing = [key for key in NERFSTUDIO_INTRINSICS if not is_number(frame.get(key, content.get(key)))]
        if missing:
            raise DatasetLayoutError(
                f"{transforms.parent}: {transforms.name}: frame {frame['file_path']} has no numeric "
                f"{', '.join(missing)}; give them at the top level or in every frame"
            )


def select_dataparser(config: AutoDataParserConfig) -> DataParser:
    """Check the folder and build the dataparser its layout needs, with `config.data` as the data path."""
    layout = detect_layout(config.data)
    if layout == "llff":
        return dataclasses.replace(config.llff, data=config.data).setup()
    if layout == "blender":
        check_blender_folder(config.data)
        return dataclasses.replace(config.blender, data=config.data).setup()
    check_nerfstudio_folder(config.data)
    return dataclasses.replace(config.nerfstudio, data=config.data).setup()


@dataclass
class AutoDataParserConfig(DataParserConfig):
    """Detects the layout of `data` (LLFF poses_bounds.npy, Blender transforms_train.json, nerfstudio
    transforms.json, checked in that order) and reads it with the matching parser; that parser's own options are
    under llff/blender/nerfstudio (their `data` is ignored)."""

    _target: Callable[[AutoDataParserConfig], DataParser] = field(default_factory=lambda: select_dataparser)
    """builds the parser for the detected layout"""
    data: Path = Path()
    """Scene folder (or a nerfstudio transforms .json file)."""
    llff: LLFFDataParserConfig = field(default_factory=LLFFDataParserConfig)
    """Options for LLFF folders."""
    blender: BlenderDataParserConfig = field(default_factory=BlenderDataParserConfig)
    """Options for Blender folders."""
    nerfstudio: NerfstudioDataParserConfig = field(default_factory=NerfstudioDataParserConfig)
    """Options for nerfstudio folders."""


llff_dataparser = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description="LLFF layout (poses_bounds.npy + images/, images_4/, images_8/), recentered and rescaled as NeRF does",
)
auto_dataparser = DataParserSpecification(
    config=AutoDataParserConfig(),
    description="Detects LLFF (poses_bounds.npy), Blender (transforms_train.json) or nerfstudio (transforms.json)",
)
