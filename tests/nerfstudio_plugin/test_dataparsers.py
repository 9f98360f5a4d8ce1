"""The LLFF dataparser and layout detection, checked against hand-built folders and the generator's known cameras."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nerfstudio")

from nerfstudio.data.dataparsers.blender_dataparser import Blender  # noqa: E402
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio  # noqa: E402

from nerfstudio_plugin.dataparsers import (  # noqa: E402
    LLFF,
    AutoDataParserConfig,
    DatasetLayoutError,
    LLFFDataParserConfig,
    apply_world_transform,
    average_pose,
    holdout_indices,
    llff_to_opengl,
    world_transform,
)
from nerfstudio_plugin.scene import RenderedViews, forward_facing_scene, look_at, render_llff, trace  # noqa: E402

pytestmark = pytest.mark.nerfstudio


def parse(data: Path, split: str = "train", **options):
    return LLFFDataParserConfig(data=data, **options).setup().get_dataparser_outputs(split)


def write_llff_folder(root: Path, positions: np.ndarray, near: float, far: float, size=(6, 8), focal=10.0) -> None:
    """An LLFF folder by hand: cameras at `positions` all with the OpenGL identity orientation, blank images."""
    height, width = size
    # OpenGL identity (right = x, up = y, backwards = z) in LLFF's [down, right, backwards] columns.
    rotation = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rows = []
    for position in positions:
        matrix = np.concatenate([rotation, position[:, None], [[height], [width], [focal]]], axis=1)
        rows.append(np.concatenate([matrix.reshape(-1), [near, far]]))
    (root / "images").mkdir(parents=True)
    np.save(root / "poses_bounds.npy", np.array(rows))
    for index in range(len(positions)):
        Image.new("RGB", (width, height), (index * 20, 0, 0)).save(root / "images" / f"{index:03d}.png")


# ---------------------------------------------------------------------------------------------------------------------
# Pose math


def test_llff_to_opengl_reorders_columns() -> None:
    down, right, backwards = np.eye(3)
    llff = np.stack([down, right, backwards], axis=1)
    np.testing.assert_allclose(llff_to_opengl(llff), np.stack([right, -down, backwards], axis=1))


def test_average_pose_of_identical_cameras_is_that_camera() -> None:
    camera = look_at((1.0, 2.0, 3.0), (0.0, 0.0, -4.0), up=(0.0, 1.0, 0.0))
    np.testing.assert_allclose(average_pose(np.stack([camera] * 3)), camera, atol=1e-12)


def test_recentring_puts_the_average_camera_at_the_origin_looking_down_minus_z() -> None:
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(6, 3)) + np.array([3.0, -1.0, 2.0])
    cameras = np.stack([look_at(p, (0.0, 0.0, -10.0), up=(0.1, 1.0, 0.0)) for p in positions])
    transform = world_transform(cameras, recenter=True)
    moved = apply_world_transform(cameras, transform, scale=1.0)
    np.testing.assert_allclose(average_pose(moved), np.eye(3, 4), atol=1e-12)
    # A rigid change of world: distances between cameras and relative rotations are unchanged.
    np.testing.assert_allclose(
        np.linalg.norm(moved[:, None, :, 3] - moved[None, :, :, 3], axis=-1),
        np.linalg.norm(positions[:, None] - positions[None], axis=-1),
    )
    np.testing.assert_allclose(
        moved[0, :, :3].T @ moved[1, :, :3], cameras[0, :, :3].T @ cameras[1, :, :3], atol=1e-12
    )


def test_holdout_every_eighth_image() -> None:
    np.testing.assert_array_equal(holdout_indices(17, 8, "val"), [0, 8, 16])
    np.testing.assert_array_equal(holdout_indices(17, 8, "train"), [i for i in range(17) if i % 8])
    np.testing.assert_array_equal(holdout_indices(5, 0, "test"), np.arange(5))


# ---------------------------------------------------------------------------------------------------------------------
# LLFF parser on a hand-built folder: every expected number below is worked out by hand


def test_parser_on_hand_built_folder(tmp_path: Path) -> None:
    positions = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    write_llff_folder(tmp_path, positions, near=2.0, far=10.0)
    outputs = parse(tmp_path, llffhold=0, downscale_factor=1)
    cameras = outputs.cameras
    # Scale: the nearest bound 2 lands at 1 / 0.75, so scale = 1 / (2 * 0.75) = 2/3. The cameras all share the
    # identity orientation, so recentring only subtracts the mean position (0.5, 0, 0).
    scale = 2.0 / 3.0
    expected_positions = (positions - [0.5, 0.0, 0.0]) * scale
    torch.testing.assert_close(cameras.camera_to_worlds[:, :, :3], torch.eye(3).expand(4, 3, 3))
    torch.testing.assert_close(cameras.camera_to_worlds[:, :, 3], torch.tensor(expected_positions).float())
    assert outputs.dataparser_scale == pytest.approx(scale)
    assert outputs.metadata["near"] == pytest.approx(2.0 * scale)
    assert outputs.metadata["far"] == pytest.approx(10.0 * scale)
    assert outputs.metadata["forward_facing"] is True
    # NeRF's NDC for forward-facing captures: scales 2 fx / W = 2 * 10 / 8 and 2 fy / H = 2 * 10 / 6, near plane 1.
    assert outputs.metadata["ndc"] == {"scale_x": 2.5, "scale_y": pytest.approx(10.0 / 3.0), "near": 1.0}
    torch.testing.assert_close(cameras.fx, torch.full((4, 1), 10.0))
    torch.testing.assert_close(cameras.cx, torch.full((4, 1), 4.0))
    torch.testing.assert_close(cameras.cy, torch.full((4, 1), 3.0))
    assert cameras.width.flatten().tolist() == [8] * 4 and cameras.height.flatten().tolist() == [6] * 4
    # Scene box: the frustums reach z = -far (scaled) and spread sideways by far * half-width / fx = 10 * 4 / 10.
    box = outputs.scene_box.aabb
    torch.testing.assert_close(box[0, 2], torch.tensor(-10.0 * scale))
    torch.testing.assert_close(box[1, 2], torch.tensor(0.0))
    torch.testing.assert_close(box[1, 0], torch.tensor((1.5 + 10.0 * 4 / 10) * scale))
    torch.testing.assert_close(box[1, 1], torch.tensor(10.0 * 3 / 10 * scale))


def test_parser_without_rescale_or_recentre_keeps_llff_units(tmp_path: Path) -> None:
    positions = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    write_llff_folder(tmp_path, positions, near=2.0, far=10.0)
    outputs = parse(tmp_path, llffhold=0, downscale_factor=1, bd_factor=None, recenter=False)
    torch.testing.assert_close(outputs.cameras.camera_to_worlds[:, :, 3], torch.tensor(positions).float())
    assert outputs.metadata["near"] == 2.0 and outputs.dataparser_scale == 1.0
    # Still forward-facing, but not NeRF's world (no near plane at depth 1 in front of the content): no NDC.
    assert outputs.metadata["forward_facing"] is True and "ndc" not in outputs.metadata


def write_posed_llff_folder(root: Path, camera_to_worlds: np.ndarray, size=(6, 8), focal=10.0) -> None:
    """An LLFF folder by hand from OpenGL cameras [N, 3, 4] (stored in LLFF's [down, right, backwards] columns)."""
    height, width = size
    right, up, backwards, position = np.moveaxis(camera_to_worlds, 2, 0)
    hwf = np.broadcast_to(np.array([height, width, focal]), position.shape)
    matrices = np.stack([-up, right, backwards, position, hwf], axis=2).reshape(len(position), 15)
    bounds = np.tile([1.0, 6.0], (len(position), 1))
    (root / "images").mkdir(parents=True)
    np.save(root / "poses_bounds.npy", np.concatenate([matrices, bounds], axis=1))
    for index in range(len(position)):
        Image.new("RGB", (width, height)).save(root / "images" / f"{index:03d}.png")


@pytest.mark.parametrize("spread_degrees, forward_facing", [(0.0, True), (30.0, True), (60.0, False), (180.0, False)])
def test_forward_facing_is_detected_from_the_viewing_directions(
    tmp_path: Path, spread_degrees: float, forward_facing: bool
) -> None:
    """Cameras on an arc around a point, looking at it; the arc's end cameras look `spread_degrees` away from the
    mean viewing direction: within 45 degrees a forward-facing capture (NDC), beyond it one around the scene."""
    angles = np.radians(np.linspace(-spread_degrees, spread_degrees, 5))
    positions = 4.0 * np.stack([np.sin(angles), np.zeros_like(angles), np.cos(angles)], axis=1)
    cameras = np.stack([look_at(position, (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) for position in positions])
    write_posed_llff_folder(tmp_path, cameras)
    metadata = parse(tmp_path, llffhold=0, downscale_factor=1).metadata
    assert metadata["forward_facing"] is forward_facing
    assert ("ndc" in metadata) is forward_facing
    # An explicit setting wins over the detection.
    assert parse(tmp_path, llffhold=0, downscale_factor=1, forward_facing=True).metadata["forward_facing"] is True


def test_cameras_rotated_in_llff_frame_come_out_rotated_in_opengl(tmp_path: Path) -> None:
    """A camera turned 90 degrees left (looking down -x) in a non-recentered world keeps that orientation."""
    write_llff_folder(tmp_path, np.zeros((1, 3)), near=1.0, far=2.0)
    poses_bounds = np.load(tmp_path / "poses_bounds.npy")
    # Looking down -x: right = -z, up = y, backwards = +x -> LLFF columns down = -y, right = -z, backwards = +x.
    llff_rotation = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    matrix = poses_bounds[0, :15].reshape(3, 5)
    matrix[:, :3] = llff_rotation
    poses_bounds[0, :15] = matrix.reshape(-1)
    np.save(tmp_path / "poses_bounds.npy", poses_bounds)
    rotation = parse(tmp_path, llffhold=0, recenter=False).cameras.camera_to_worlds[0, :, :3]
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # columns: right, up, backwards
    torch.testing.assert_close(rotation, expected)
    torch.testing.assert_close(-rotation[:, 2], torch.tensor([-1.0, 0.0, 0.0]))  # looks down -x


# ---------------------------------------------------------------------------------------------------------------------
# LLFF parser on rendered scenes: against the cameras the generator used


def test_rendered_cameras_map_back_to_the_known_cameras(llff_scene: RenderedViews) -> None:
    outputs = parse(llff_scene.root, llffhold=0, downscale_factor=1)
    # nerfstudio's own inverse of dataparser_transform/scale must give back the generator's cameras exactly.
    original = outputs.transform_poses_to_original_space(outputs.cameras.camera_to_worlds, camera_convention="opengl")
    torch.testing.assert_close(original, torch.from_numpy(llff_scene.camera_to_worlds).float(), atol=1e-5, rtol=0)
    # Documented normalization: scale = 1 / (nearest bound * 0.75) from the generator's bounds; recentered cameras
    # have mean position 0 and mean viewing direction -z.
    scale = 1.0 / (llff_scene.near.min() * 0.75)
    assert outputs.dataparser_scale == pytest.approx(scale)
    assert outputs.metadata["near"] == pytest.approx(1.0 / 0.75)
    parsed = outputs.cameras.camera_to_worlds.double().numpy()
    np.testing.assert_allclose(parsed[:, :, 3].mean(axis=0), 0.0, atol=1e-6)
    mean_forward = -parsed[:, :, 2].sum(axis=0)
    np.testing.assert_allclose(mean_forward / np.linalg.norm(mean_forward), [0.0, 0.0, -1.0], atol=1e-6)
    known_positions = llff_scene.camera_to_worlds[:, :, 3]
    np.testing.assert_allclose(
        np.linalg.norm(parsed[:, None, :, 3] - parsed[None, :, :, 3], axis=-1),
        scale * np.linalg.norm(known_positions[:, None] - known_positions[None], axis=-1),
        atol=1e-6,
    )


def test_nerfstudio_rays_see_what_the_generator_rendered(tmp_path: Path) -> None:
    """End to end: rays nerfstudio generates from the parsed cameras, taken back to the generator's world and traced
    through the scene, reproduce the rendered pixels (intrinsics, pixel centers, conventions, world change)."""
    render_llff(tmp_path, num_views=3, height=24, width=32, supersample=1, downscale_factors=())
    outputs = parse(tmp_path, llffhold=0, downscale_factor=1)
    transform = outputs.dataparser_transform.double().numpy()
    for view in range(3):
        rays = outputs.cameras.generate_rays(camera_indices=view)
        # Undo x -> scale * (R x + t): positions x = R^T (y / scale - t); directions d = R^T d'.
        directions = rays.directions.reshape(-1, 3).double().numpy() @ transform[:, :3]
        positions = rays.origins.reshape(-1, 3).double().numpy() / outputs.dataparser_scale
        origins = (positions - transform[:, 3]) @ transform[:, :3]
        colour, _ = trace(forward_facing_scene(), origins, directions)
        rendered = np.asarray(Image.open(outputs.image_filenames[view]), dtype=np.float64) / 255.0
        error = np.abs(colour.reshape(rendered.shape) - rendered).max(axis=-1)
        # 8-bit rounding everywhere; float32 rays may land across a texture edge on a few pixels.
        assert np.median(error) <= 0.5 / 255 + 1e-9 and np.mean(error < 0.01) > 0.97, view


def test_eval_split_holds_out_every_eighth_image(llff_scene: RenderedViews) -> None:
    train = parse(llff_scene.root, "train", downscale_factor=1)
    val = parse(llff_scene.root, "val", downscale_factor=1)
    names = [path.name for path in llff_scene.image_paths]
    assert [path.name for path in val.image_filenames] == names[::8]
    assert [path.name for path in train.image_filenames] == [n for i, n in enumerate(names) if i % 8]
    # One world for both splits: the held-out camera is where the generator put it relative to the others.
    torch.testing.assert_close(val.dataparser_transform, train.dataparser_transform)


def test_downscale_reads_images_k(llff_scene: RenderedViews) -> None:
    outputs = parse(llff_scene.root, llffhold=0, downscale_factor=4)
    assert all(path.parent.name == "images_4" for path in outputs.image_filenames)
    assert outputs.cameras.width[0].item() == llff_scene.width // 4
    assert outputs.cameras.height[0].item() == llff_scene.height // 4
    torch.testing.assert_close(outputs.cameras.fx[0], torch.tensor([llff_scene.focal / 4]).float())
    torch.testing.assert_close(outputs.cameras.cx[0], torch.tensor([llff_scene.width / 8]))


def test_downscale_without_images_k_writes_box_filtered_copies(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    outputs = parse(root, llffhold=0, downscale_factor=2)
    written = sorted((root / "images_2").glob("*.png"))
    assert len(written) == len(llff_scene.image_paths) and outputs.image_filenames == written
    full = np.asarray(Image.open(llff_scene.image_paths[3]), dtype=np.float64)
    half = np.asarray(Image.open(written[3]), dtype=np.float64)
    h, w = llff_scene.height // 2, llff_scene.width // 2
    np.testing.assert_allclose(half, full.reshape(h, 2, w, 2, 3).mean(axis=(1, 3)), atol=1.0)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_auto_downscale_fits_max_resolution(llff_scene: RenderedViews) -> None:
    longest = max(llff_scene.height, llff_scene.width)
    assert parse(llff_scene.root, llffhold=0).cameras.width[0].item() == llff_scene.width
    small = parse(llff_scene.root, llffhold=0, max_auto_resolution=longest // 4)
    assert small.image_filenames[0].parent.name == "images_4"


# ---------------------------------------------------------------------------------------------------------------------
# Layout detection


def test_auto_detects_llff(llff_scene: RenderedViews) -> None:
    config = AutoDataParserConfig(data=llff_scene.root)
    config.llff.downscale_factor = 4
    parser = config.setup()
    assert isinstance(parser, LLFF)
    assert parser.get_dataparser_outputs("train").image_filenames[0].parent.name == "images_4"


def test_auto_detects_blender(blender_scene: dict[str, RenderedViews]) -> None:
    parser = AutoDataParserConfig(data=blender_scene["train"].root).setup()
    assert isinstance(parser, Blender)
    for split in ("train", "val", "test"):
        outputs = parser.get_dataparser_outputs(split)
        assert outputs.image_filenames == blender_scene[split].image_paths
        torch.testing.assert_close(
            outputs.cameras.camera_to_worlds, torch.from_numpy(blender_scene[split].camera_to_worlds).float()
        )
        assert outputs.cameras.fx[0].item() == pytest.approx(blender_scene[split].focal)


def test_auto_detects_nerfstudio(blender_scene: dict[str, RenderedViews], copy_scene) -> None:
    root = copy_scene(blender_scene)
    views = blender_scene["train"]
    frames = [
        {"file_path": f"train/{path.name}", "transform_matrix": np.vstack([pose, [0, 0, 0, 1]]).tolist()}
        for path, pose in zip(views.image_paths, views.camera_to_worlds)
    ]
    meta = {"fl_x": views.focal, "fl_y": views.focal, "cx": views.width / 2, "cy": views.height / 2,
            "w": views.width, "h": views.height, "frames": frames}  # fmt: skip
    for name in ("transforms_train.json", "transforms_val.json", "transforms_test.json"):
        (root / name).unlink()
    (root / "transforms.json").write_text(json.dumps(meta))
    config = AutoDataParserConfig(data=root)
    config.nerfstudio.downscale_factor = 1
    parser = config.setup()
    assert isinstance(parser, Nerfstudio)
    train, val = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("val")
    assert len(train.image_filenames) + len(val.image_filenames) == len(views.image_paths)


def test_llff_marker_wins_over_transforms_json(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    (root / "transforms.json").write_text("{}")
    assert isinstance(AutoDataParserConfig(data=root).setup(), LLFF)


def test_nerfstudio_datamanager_draws_rays_and_pixels_from_a_rendered_scene(llff_scene: RenderedViews) -> None:
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    config = VanillaDataManagerConfig(
        dataparser=AutoDataParserConfig(), data=llff_scene.root, train_num_rays_per_batch=32
    )
    manager = config.setup(device="cpu")
    assert len(manager.train_dataset) == 7 and len(manager.eval_dataset) == 1  # 8 views, every 8th held out
    ray_bundle, batch = manager.next_train(0)
    assert ray_bundle.origins.shape == (32, 3) and batch["image"].shape == (32, 3)
    filenames = manager.train_dataparser_outputs.image_filenames
    for (camera, row, col), colour in zip(batch["indices"].tolist(), batch["image"]):
        pixel = np.asarray(Image.open(filenames[camera]), dtype=np.float32)[row, col] / 255.0
        torch.testing.assert_close(colour, torch.from_numpy(pixel))


def test_bad_folder_fails_when_the_datamanager_is_built(tmp_path: Path) -> None:
    """Training never starts: nerfstudio builds the dataparser (and so checks the folder) in datamanager setup."""
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    with pytest.raises(DatasetLayoutError, match="unknown dataset layout"):
        VanillaDataManagerConfig(dataparser=AutoDataParserConfig(), data=tmp_path).setup(device="cpu")


def test_dataparsers_are_registered_with_nerfstudio() -> None:
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    dataparsers, _ = discover_dataparsers()
    assert isinstance(dataparsers.get("llff-data"), LLFFDataParserConfig)
    assert isinstance(dataparsers.get("auto-data"), AutoDataParserConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the folder and what is wrong, raised while parsing (before training)


def assert_clear_error(error: pytest.ExceptionInfo, folder: Path, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(folder) in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_llff_folder_without_poses_bounds(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        parse(root)
    assert_clear_error(error, root, "no poses_bounds.npy")


def test_llff_image_count_differs_from_pose_count(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    sorted((root / "images").glob("*.png"))[-1].unlink()
    n = len(llff_scene.image_paths)
    with pytest.raises(DatasetLayoutError) as error:
        parse(root, downscale_factor=1)
    assert_clear_error(error, root / "images", f"{n - 1} images", f"{n} poses")


def test_llff_images_k_with_a_missing_image(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    sorted((root / "images_8").glob("*.png"))[0].unlink()
    with pytest.raises(DatasetLayoutError) as error:
        parse(root, downscale_factor=8)
    assert_clear_error(error, root / "images_8", "images but poses_bounds.npy has")


def test_llff_without_images_folder(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetLayoutError) as error:
        parse(root, downscale_factor=2)  # no images_2/ either: the full-size images are needed to make it
    assert_clear_error(error, root, "no images/ folder")


def test_llff_mixed_size_images(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    odd_one = sorted((root / "images").glob("*.png"))[2]
    Image.new("RGB", (llff_scene.width + 1, llff_scene.height)).save(odd_one)
    with pytest.raises(DatasetLayoutError) as error:
        parse(root, downscale_factor=1)
    assert_clear_error(error, root / "images", "mixed sizes", odd_one.name)


def test_llff_unreadable_image(llff_scene: RenderedViews, copy_scene) -> None:
    root = copy_scene(llff_scene)
    broken = sorted((root / "images").glob("*.png"))[1]
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetLayoutError) as error:
        parse(root, downscale_factor=1)
    assert_clear_error(error, root / "images", "cannot read image", broken.name)


@pytest.mark.parametrize("rows", [np.zeros((3, 15)), np.zeros((0, 17)), np.ones((17,))])
def test_llff_malformed_poses_bounds(tmp_path: Path, rows: np.ndarray) -> None:
    (tmp_path / "images").mkdir()
    np.save(tmp_path / "poses_bounds.npy", rows)
    with pytest.raises(DatasetLayoutError) as error:
        parse(tmp_path)
    assert_clear_error(error, tmp_path, "expected [N, 17]")


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "empty (0 bytes)"), (b"\x93NUMPY garbage \xff\x00" * 3, "cannot read poses_bounds.npy"),
     (b"just some text", "cannot read poses_bounds.npy")],
)  # fmt: skip
def test_llff_empty_or_garbage_poses_bounds(tmp_path: Path, content: bytes, fragment: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "poses_bounds.npy").write_bytes(content)
    for make in (lambda: parse(tmp_path), lambda: AutoDataParserConfig(data=tmp_path).setup().get_dataparser_outputs()):
        with pytest.raises(DatasetLayoutError) as error:
            make()
        assert_clear_error(error, tmp_path, fragment, "regenerate it")


def test_llff_poses_bounds_of_strings(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    np.save(tmp_path / "poses_bounds.npy", np.array([["a"] * 17]))
    with pytest.raises(DatasetLayoutError) as error:
        parse(tmp_path)
    assert_clear_error(error, tmp_path, "numeric array")


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for make in (lambda: parse(missing), lambda: AutoDataParserConfig(data=missing).setup()):
        with pytest.raises(DatasetLayoutError) as error:
            make()
        assert_clear_error(error, missing, "no such folder")


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=tmp_path).setup()
    markers = ("poses_bounds.npy", "transforms_train.json", "transforms.json")
    assert_clear_error(error, tmp_path, "unknown dataset layout", *markers)


def test_blender_missing_image(blender_scene: dict[str, RenderedViews], copy_scene) -> None:
    root = copy_scene(blender_scene)
    (root / "val" / "r_1.png").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=root).setup()
    assert_clear_error(error, root, "r_1.png is missing")


def test_blender_mixed_size_images(blender_scene: dict[str, RenderedViews], copy_scene) -> None:
    root = copy_scene(blender_scene)
    Image.new("RGBA", (5, 5)).save(root / "train" / "r_2.png")
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=root).setup()
    assert_clear_error(error, root, "mixed sizes")


def test_blender_missing_val_transforms(blender_scene: dict[str, RenderedViews], copy_scene) -> None:
    root = copy_scene(blender_scene)
    (root / "transforms_val.json").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=root).setup()
    assert_clear_error(error, root, "no transforms_val.json")


def test_nerfstudio_missing_image(tmp_path: Path) -> None:
    frames = [{"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist()}]
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=tmp_path).setup()
    assert_clear_error(error, tmp_path, "a.png is missing")


@pytest.mark.parametrize(
    "content, fragment",
    [(b"{not json", "not valid JSON"), (b"", "not valid JSON"), (b"\xff\xfe\x00garbage", "not valid JSON"),
     (b"[1, 2]", "JSON object"), (b'{"frames": []}', "non-empty frames"), (b'{"frames": [{}]}', "file_path"),
     (b'{"frames": [{"file_path": "a.png"}]}', "transform_matrix"),
     (b'{"frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]}', "4x4 transform_matrix")],
)  # fmt: skip
@pytest.mark.parametrize("name", ["transforms.json", "transforms_train.json"])
def test_malformed_transforms_json(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    """nerfstudio and Blender layouts: empty, garbage or malformed transforms files are one clear line."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=tmp_path).setup()
    assert_clear_error(error, tmp_path, name, fragment)


def test_nerfstudio_frame_without_intrinsics(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    frames = [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 10.0}]
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames, "cx": 4, "cy": 3, "w": 8, "h": 6}))
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=tmp_path).setup()
    assert_clear_error(error, tmp_path, "a.png has no numeric fl_y")


def test_blender_without_camera_angle(blender_scene: dict[str, RenderedViews], copy_scene) -> None:
    root = copy_scene(blender_scene)
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["camera_angle_x"] = "wide"
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=root).setup()
    assert_clear_error(error, root, "numeric camera_angle_x")
    del meta["camera_angle_x"]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetLayoutError) as error:
        AutoDataParserConfig(data=root).setup()
    assert_clear_error(error, root, "camera_angle_x")
