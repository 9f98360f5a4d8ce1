"""The ray tracer against hand-computed geometry, and the LLFF / Blender files it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerfstudio_plugin.scene import (
    Box,
    Material,
    Plane,
    RenderedViews,
    Scene,
    Sphere,
    focal_from_fov,
    look_at,
    main,
    render_view,
    trace,
    write_downscaled,
    write_png,
)

WHITE = Material((1.0, 1.0, 1.0))
DOWN_THE_Z_AXIS = (np.array([[0.0, 0.0, 5.0]]), np.array([[0.0, 0.0, -1.0]]))


# ---------------------------------------------------------------------------------------------------------------------
# Ray tracer


def test_sphere_hit_distance_and_normal() -> None:
    sphere = Sphere((0.0, 0.0, 0.0), 1.0, WHITE)
    origins, directions = DOWN_THE_Z_AXIS
    t = sphere.intersect(origins, directions)
    np.testing.assert_allclose(t, [4.0])
    np.testing.assert_allclose(sphere.normals(origins + t[:, None] * directions), [[0.0, 0.0, 1.0]])
    # Unnormalized directions: t scales inversely; a ray that passes beside the sphere misses.
    np.testing.assert_allclose(sphere.intersect(origins, 2 * directions), [2.0])
    assert np.isinf(sphere.intersect(np.array([[2.0, 0.0, 5.0]]), directions)).all()


def test_ray_starting_inside_a_sphere_hits_its_far_side() -> None:
    sphere = Sphere((0.0, 0.0, 0.0), 1.0, WHITE)
    np.testing.assert_allclose(sphere.intersect(np.zeros((1, 3)), np.array([[0.0, 0.0, -1.0]])), [1.0])


@pytest.mark.parametrize("yaw, expected_t", [(0.0, 4.0), (math.pi / 4, 5.0 - math.sqrt(2.0))])
def test_box_hit_distance_with_yaw(yaw: float, expected_t: float) -> None:
    box = Box((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), WHITE, yaw)
    origins, directions = DOWN_THE_Z_AXIS
    np.testing.assert_allclose(box.intersect(origins, directions), [expected_t])


def test_box_normals_are_the_rotated_face_normals() -> None:
    yaw = 0.3
    box = Box((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), WHITE, yaw)
    # The center of the face that is +x before turning, after turning by yaw about y.
    face_normal = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    point = np.array([[1.0, 0.0, 0.0]]) + 0.5 * face_normal
    np.testing.assert_allclose(box.normals(point), [face_normal], atol=1e-12)
    # A ray cast back along that normal hits the face at distance 1.
    np.testing.assert_allclose(box.intersect(point + face_normal, -face_normal[None]), [1.0])


def test_plane_is_hit_from_both_sides_and_missed_when_parallel() -> None:
    plane = Plane((0.0, -1.0, 0.0), (0.0, 1.0, 0.0), WHITE)
    origins = np.array([[0.0, 0.0, 0.0], [0.0, -3.0, 0.0], [0.0, 0.0, 0.0]])
    directions = np.array([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    t = plane.intersect(origins, directions)
    np.testing.assert_allclose(t[:2], [1.0, 2.0])
    assert np.isinf(t[2])


def test_lambert_shading_ambient_and_shadows() -> None:
    ambient = 0.25
    ground = Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), Material((0.5, 0.5, 0.5)))
    blocker = Sphere((0.0, 2.0, 0.0), 0.5, WHITE)
    scene = Scene((ground, blocker), light_direction=(0.0, 1.0, 0.0), ambient=ambient)
    origins = np.array([[0.0, 1.0, 0.0], [5.0, 1.0, 0.0], [0.0, 1.0, 0.0], [5.0, 1.0, 5.0]])
    directions = np.array([[0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    colour, t = trace(scene, origins, directions)
    # Under the sphere: in its shadow, ambient only. Beside it: fully lit (normal = light direction).
    np.testing.assert_allclose(colour[0], [0.5 * ambient] * 3)
    np.testing.assert_allclose(colour[1], [0.5] * 3)
    # The sphere's underside faces away from the light: ambient only. A ray into the sky: black, t = inf.
    np.testing.assert_allclose(colour[2], [ambient] * 3)
    np.testing.assert_allclose(t[2], 0.5)
    np.testing.assert_allclose(colour[3], [0.0] * 3)
    assert np.isinf(t[3])


def test_checker_texture_alternates_per_cell() -> None:
    checker = Material((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "checker", period=1.0)
    points = np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [1.5, 1.5, 0.5], [-0.5, 0.5, 0.5]])
    np.testing.assert_allclose(checker.albedo(points)[:, 0], [0.0, 1.0, 0.0, 1.0])


def test_render_view_depth_alpha_and_pinhole_geometry() -> None:
    """A camera 5 units from a unit sphere: the center pixel sees depth 4 and a lit surface; corners see nothing."""
    scene = Scene((Sphere((0.0, 0.0, 0.0), 1.0, WHITE),), light_direction=(0.0, 0.0, 1.0), ambient=0.25)
    camera = look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    size, focal = 21, focal_from_fov(21, 60.0)
    colour, alpha, depth = render_view(scene, camera, size, size, focal, supersample=1)
    centre = size // 2
    np.testing.assert_allclose(depth[centre, centre], 4.0)
    np.testing.assert_allclose(colour[centre, centre], [1.0, 1.0, 1.0])
    assert alpha[centre, centre] == 1.0 and alpha[0, 0] == 0.0 and np.isinf(depth[0, 0])
    assert colour[0, 0].tolist() == [0.0, 0.0, 0.0]
    # The silhouette: a pixel is covered iff its ray passes within radius 1 of the center, i.e. its angle off the
    # axis is below asin(1/5).
    offsets = (np.arange(size) + 0.5 - size / 2) / focal
    off_axis = np.hypot(offsets[:, None], offsets[None, :])
    inside = np.arctan(off_axis) < math.asin(1 / 5)
    np.testing.assert_array_equal(alpha == 1.0, inside)


def test_supersampling_gives_fractional_alpha_on_silhouettes() -> None:
    scene = Scene((Sphere((0.0, 0.0, 0.0), 1.0, WHITE),))
    camera = look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    _, alpha, _ = render_view(scene, camera, 16, 16, focal_from_fov(16, 60.0), supersample=3)
    fractional = (alpha > 0) & (alpha < 1)
    assert fractional.any()
    np.testing.assert_allclose(alpha * 9, np.round(alpha * 9))  # multiples of 1/9


def test_look_at_is_a_right_handed_opengl_frame() -> None:
    position, target = np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.5, 0.0])
    camera = look_at(position, target, up=(0.0, 1.0, 0.0))
    rotation = camera[:, :3]
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0)
    forward = (target - position) / np.linalg.norm(target - position)
    np.testing.assert_allclose(-rotation[:, 2], forward)
    np.testing.assert_allclose(camera[:, 3], position)
    assert rotation[1, 1] > 0  # up column points up: the image is not upside down
    np.testing.assert_allclose(rotation[1, 0], 0.0, atol=1e-12)  # no roll: the right axis stays horizontal


def test_write_downscaled_takes_block_means(tmp_path: Path) -> None:
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    write_png(tmp_path / "full.png", Image.fromarray(pixels))
    write_downscaled(tmp_path / "full.png", tmp_path / "small.png", 2)
    small = np.asarray(Image.open(tmp_path / "small.png"), dtype=np.float64)
    expected = pixels.reshape(2, 2, 2, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(small, expected, atol=1.0)  # 8-bit rounding


# ---------------------------------------------------------------------------------------------------------------------
# LLFF layout


def test_llff_layout_files_and_sizes(llff_scene: RenderedViews) -> None:
    root, n = llff_scene.root, len(llff_scene.image_paths)
    height, width = llff_scene.height, llff_scene.width
    assert height % 8 == 0 and width % 8 == 0, "the fixture's size should divide by 8"
    for factor in (1, 4, 8):
        folder, size = ("images" if factor == 1 else f"images_{factor}"), (height // factor, width // factor)
        files = sorted((root / folder).glob("*.png"))
        assert len(files) == n, folder
        for file in files:
            image = Image.open(file)
            assert (image.height, image.width) == size and image.mode == "RGB", file
    poses_bounds = np.load(root / "poses_bounds.npy")
    assert poses_bounds.shape == (n, 17)
    hwf = poses_bounds[:, :15].reshape(n, 3, 5)[:, :, 4]
    np.testing.assert_allclose(hwf, np.tile([height, width, focal_from_fov(width, 60.0)], (n, 1)))


def test_llff_poses_are_the_rendered_cameras_in_llff_column_order(llff_scene: RenderedViews) -> None:
    matrices = np.load(llff_scene.root / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    down, right, backwards, position = (matrices[:, :, i] for i in range(4))
    known = llff_scene.camera_to_worlds
    np.testing.assert_allclose(right, known[:, :, 0])
    np.testing.assert_allclose(-down, known[:, :, 1])
    np.testing.assert_allclose(backwards, known[:, :, 2])
    np.testing.assert_allclose(position, known[:, :, 3])
    # Right-handed camera frame: right x up = backwards.
    np.testing.assert_allclose(np.cross(right, -down), backwards, atol=1e-12)


def test_llff_cameras_face_the_scene_from_a_small_plane(llff_scene: RenderedViews) -> None:
    positions = llff_scene.camera_to_worlds[:, :, 3]
    assert len(np.unique(positions.round(6), axis=0)) == len(positions)  # all views distinct
    np.testing.assert_allclose(positions[:, 2], 0.0)  # on the plane z = 0
    assert np.abs(positions[:, :2]).max() < 1.0  # a small baseline, like a handheld capture
    forward = -llff_scene.camera_to_worlds[:, :, 2]
    assert (forward[:, 2] < -0.9).all()  # all look down -z, within ~25 degrees


def test_llff_bounds_bracket_the_visible_depths(llff_scene: RenderedViews) -> None:
    bounds = np.load(llff_scene.root / "poses_bounds.npy")[:, 15:]
    assert (bounds[:, 0] > 0).all() and (bounds[:, 0] < bounds[:, 1]).all()
    # The back wall at z = -9 is the farthest surface; the view axis meets it at z-depth 9 / |forward_z|, and the
    # image corners see it farther still, so the far bound is at least that.
    forward_z = -llff_scene.camera_to_worlds[:, 2, 2]
    assert (bounds[:, 1] >= 9.0 / forward_z - 1e-6).all()
    # The nearest surface is the ground or the small sphere, both more than 2 units in front of the cameras.
    assert (bounds[:, 0] > 1.0).all()


# ---------------------------------------------------------------------------------------------------------------------
# Blender layout


def test_blender_layout_files_and_json(blender_scene: dict[str, RenderedViews]) -> None:
    root = blender_scene["train"].root
    for split, views in blender_scene.items():
        size, count = views.width, len(views.image_paths)
        meta = json.loads((root / f"transforms_{split}.json").read_text())
        assert set(meta) == {"camera_angle_x", "frames"}
        np.testing.assert_allclose(0.5 * size / math.tan(meta["camera_angle_x"] / 2), blender_scene[split].focal)
        assert len(meta["frames"]) == count
        for frame, known_pose in zip(meta["frames"], blender_scene[split].camera_to_worlds):
            image = Image.open(root / (frame["file_path"].replace("./", "") + ".png"))
            assert image.mode == "RGBA" and image.size == (size, size)
            matrix = np.array(frame["transform_matrix"])
            assert matrix.shape == (4, 4)
            np.testing.assert_allclose(matrix[3], [0.0, 0.0, 0.0, 1.0])
            np.testing.assert_allclose(matrix[:3], known_pose)


def test_blender_images_are_transparent_outside_the_object(blender_scene: dict[str, RenderedViews]) -> None:
    for path in blender_scene["train"].image_paths:
        alpha = np.asarray(Image.open(path))[..., 3]
        assert alpha[0, 0] == 0 and alpha[-1, -1] == 0  # background corners
        assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255  # the object fills the center


def test_blender_cameras_orbit_the_origin_in_a_z_up_world(blender_scene: dict[str, RenderedViews]) -> None:
    for views in blender_scene.values():
        poses = views.camera_to_worlds
        positions = poses[:, :, 3]
        np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 4.0)
        assert (positions[:, 2] > 0).all()  # upper hemisphere of Blender's z-up world
        # Looking at the origin: the viewing direction (-backwards) is -position / radius.
        np.testing.assert_allclose(-poses[:, :, 2], -positions / 4.0, atol=1e-12)
        assert (poses[:, 2, 1] > 0).all()  # camera up has a +z component: images are upright
        np.testing.assert_allclose(np.linalg.det(poses[:, :, :3]), 1.0)
    # Val/test views orbit at 30 degrees elevation.
    np.testing.assert_allclose(blender_scene["val"].camera_to_worlds[:, 2, 3], 4.0 * math.sin(math.radians(30.0)))


# ---------------------------------------------------------------------------------------------------------------------
# Command line


@pytest.mark.parametrize("layout, marker", [("llff", "poses_bounds.npy"), ("blender", "transforms_train.json")])
def test_cli_writes_a_scene(tmp_path: Path, layout: str, marker: str, capsys: pytest.CaptureFixture) -> None:
    args = ["--layout", layout, "--out", str(tmp_path), "--num-views", "2", "--height", "8", "--width", "8"]
    assert main(args) == 0
    assert (tmp_path / marker).is_file()
    assert "wrote" in capsys.readouterr().out


def test_cli_bad_size_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--layout", "llff", "--out", str(tmp_path), "--num-views", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "positive" in error and error.count("\n") == 1
