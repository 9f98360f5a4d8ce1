"""Occupancy signal: winding-number labels against trimesh, sampling, BCE/IoU formulas, marching cubes, bad meshes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from fitters.signals.occupancy import OccupancySignal, load
from fitters.signals import SignalError, SignalOptions
from nf_precond.nn import CoordinateMLP, FieldConfig

BONE = Path(__file__).parents[2] / "data" / "bone.ply"


@pytest.fixture(scope="module")
def bone() -> OccupancySignal:
    return load(BONE, SignalOptions(num_points=4000))


def normalised(signal: OccupancySignal) -> trimesh.Trimesh:
    """The input mesh in the signal's [-1, 1]^3 coordinates, from the file rather than the signal's internals."""
    mesh = trimesh.load(BONE, force="mesh")
    return trimesh.Trimesh((mesh.vertices - signal.center) * signal.scale, mesh.faces)


def sphere_logits(radius: float, sharpness: float = 20.0):
    return lambda coords: sharpness * (radius - coords.norm(dim=-1, keepdim=True))


def test_load_real_mesh(bone: OccupancySignal) -> None:
    assert (bone.kind, bone.metric) == ("occupancy", "iou")
    assert bone.coords.shape == (4000, 3) and bone.targets.shape == (4000, 1)
    assert bone.coords.abs().max() <= 1.0 and set(bone.targets.unique().tolist()) == {0.0, 1.0}
    vertices = normalised(bone).vertices
    assert np.abs(vertices).max() == pytest.approx(0.9)  # longest side spans [-0.9, 0.9]
    np.testing.assert_allclose(vertices.max(axis=0) + vertices.min(axis=0), 0.0, atol=1e-6)  # centered


def test_labels_agree_with_trimesh_on_a_watertight_mesh(bone: OccupancySignal) -> None:
    mesh = normalised(bone)
    assert mesh.is_watertight
    for coords, targets in ((bone.coords, bone.targets), (bone.held_out_coords, bone.held_out_targets)):
        agree = mesh.contains(coords.numpy()) == (targets[:, 0].numpy() > 0.5)
        assert agree.mean() > 0.99


def test_labels_survive_small_holes_and_flipped_faces(bone: OccupancySignal) -> None:
    """Where a mesh is not quite watertight or faces inward, the winding number still knows inside from outside."""
    watertight = normalised(bone)
    mesh = trimesh.load(BONE, force="mesh")
    holed = trimesh.Trimesh(mesh.vertices, np.delete(mesh.faces, np.arange(0, len(mesh.faces), 100), axis=0))
    flipped = trimesh.Trimesh(mesh.vertices, mesh.faces[:, ::-1])
    assert not holed.is_watertight and flipped.volume < 0
    for variant in (holed, flipped):
        signal = OccupancySignal(variant, SignalOptions(num_points=4000))
        truth = watertight.contains(signal.coords.numpy())
        assert np.mean((signal.targets[:, 0].numpy() > 0.5) == truth) > 0.99


def test_sampling_is_seeded_and_follows_surface_fraction() -> None:
    mesh = trimesh.load(BONE, force="mesh")
    again = OccupancySignal(mesh, SignalOptions(num_points=1000, seed=3))
    torch.testing.assert_close(again.coords, OccupancySignal(mesh, SignalOptions(num_points=1000, seed=3)).coords)
    assert not torch.equal(again.coords, OccupancySignal(mesh, SignalOptions(num_points=1000, seed=4)).coords)
    near = OccupancySignal(mesh, SignalOptions(num_points=400, surface_fraction=1.0))
    uniform = OccupancySignal(mesh, SignalOptions(num_points=400, surface_fraction=0.0))
    surface = normalised(near)
    near_distance = surface.nearest.on_surface(near.coords.numpy())[1]
    uniform_distance = surface.nearest.on_surface(uniform.coords.numpy())[1]
    # Offsets are N(0, 0.1) or N(0, 0.01) in normalized units: half the points lie within 0.01 * 3 of the surface.
    assert np.median(near_distance) < 0.1 and near_distance.max() < 0.6
    assert np.median(uniform_distance) > 0.3


def test_loss_is_binary_cross_entropy_on_logits(bone: OccupancySignal) -> None:
    logits = torch.randn(bone.targets.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = bone.targets.double()
    expected = -(target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(1 - torch.sigmoid(logits)))
    torch.testing.assert_close(bone.loss(logits, target), expected.mean())


def test_iou_matches_its_definition(bone: OccupancySignal) -> None:
    assert bone.evaluate(lambda coords: bone.held_out_targets * 2 - 1) == {"iou": 1.0, "accuracy": 1.0}
    assert bone.evaluate(lambda coords: 1 - bone.held_out_targets * 2)["iou"] == 0.0
    predicted = (bone.held_out_coords.norm(dim=-1) < 0.3).numpy()
    truth = bone.held_out_targets[:, 0].numpy() > 0.5
    expected = np.sum(predicted & truth) / np.sum(predicted | truth)
    assert bone.evaluate(sphere_logits(0.3))["iou"] == pytest.approx(expected)


@pytest.mark.parametrize("radius", [0.3, 0.7])
def test_marching_cubes_of_a_sphere_has_its_radius(
    bone: OccupancySignal, radius: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bone, "grid_resolution", 48)
    written = bone.save_reconstruction(sphere_logits(radius), tmp_path)
    assert written == tmp_path / "reconstruction.ply"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.ply"]  # no temporary left behind
    mesh = trimesh.load(written)
    # Written in the input mesh's units: undo the normalization to compare with the analytic sphere.
    distance = np.linalg.norm((mesh.vertices - bone.center) * bone.scale, axis=1)
    spacing = 2.0 / (bone.grid_resolution - 1)
    assert np.abs(distance - radius).max() < spacing / 2
    volume = 4 / 3 * math.pi * radius**3 / bone.scale**3
    assert mesh.is_watertight and mesh.volume == pytest.approx(volume, rel=0.03)  # positive: normals face out


def test_field_without_a_surface_writes_an_empty_mesh(bone: OccupancySignal, tmp_path: Path) -> None:
    written = bone.save_reconstruction(lambda coords: -torch.ones(len(coords), 1), tmp_path)
    assert len(trimesh.load(written, force="mesh").vertices) == 0


def test_grid_is_evaluated_in_chunks(bone: OccupancySignal, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def field(coords: torch.Tensor) -> torch.Tensor:
        calls.append(len(coords))
        return coords[:, :1] + 2 * coords[:, 1:2] + 3 * coords[:, 2:]

    monkeypatch.setattr("fitters.signals.occupancy.GRID_CHUNK_POINTS", 5 * 9 * 9)
    grid = bone.logit_grid(field, 9)
    axis = torch.linspace(-1, 1, 9)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    np.testing.assert_allclose(grid, (x + 2 * y + 3 * z).numpy(), atol=1e-6)
    assert calls == [5 * 81, 4 * 81]


def test_previews_show_the_same_slice(bone: OccupancySignal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fitters.signals.occupancy.PREVIEW_RESOLUTION", 32)
    field = bone.preview(lambda coords: (coords[:, :1] > 0).float() * 2 - 1)
    truth = bone.target_preview()
    assert field.shape == truth.shape == (32, 32, 3) and field.dtype == truth.dtype == np.uint8
    assert (field[:, 17:] > 127).all() and (field[:, :15] < 128).all()  # x grows to the right
    assert truth.max() == 255 and truth.mean() < 128  # the thin bone crosses the z = 0 plane
    tall = bone.preview(lambda coords: (coords[:, 1:2] > 0).float() * 2 - 1)
    assert (tall[:15] > 127).all() and (tall[17:] < 128).all()  # y grows upwards


@pytest.mark.slow  # ~1 s alone, but past 10 s while other jobs share the two cores
def test_a_short_fit_learns_the_shape() -> None:
    torch.manual_seed(0)
    mesh = trimesh.creation.icosphere(subdivisions=2)
    signal = OccupancySignal(mesh, SignalOptions(num_points=1000))
    model = CoordinateMLP(3, 1, FieldConfig(hidden=32, layers=2, activation="sine", omega0=5.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = signal.evaluate(lambda coords: model(coords).detach())["iou"]
    for _ in range(60):
        optimizer.zero_grad()
        loss = signal.loss(model(signal.coords), signal.targets)
        loss.backward()
        optimizer.step()
    after = signal.evaluate(lambda coords: model(coords).detach())["iou"]
    assert after > 0.9 and after > before


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def save_mesh(path: Path, vertices, faces) -> Path:
    trimesh.Trimesh(np.asarray(vertices, float), np.asarray(faces, int), process=False).export(path)
    return path


def open_hemisphere(path: Path) -> Path:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    return save_mesh(path, sphere.vertices, sphere.faces[sphere.triangles_center[:, 2] > 0])


def point_cloud(path: Path) -> Path:
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: open_hemisphere(d / "hemisphere.ply"), "not closed"),
        (lambda d: point_cloud(d / "cloud.ply"), "no faces|no triangle mesh"),
        (lambda d: save_mesh(d / "flat.obj", [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]]),
         "degenerate"),
        (lambda d: save_mesh(d / "sliver.off", [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 1]], [[0, 1, 2]]),
         "degenerate"),
        (lambda d: d / "missing.stl", "no such file"),
        (lambda d: write_bytes(d / "empty.obj", b""), "empty"),
        (lambda d: write_bytes(d / "junk.ply", b"ply\nformat nonsense\n\x00\x01"), "cannot read"),
    ],
)
def test_bad_meshes_give_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(SignalError, match=message) as caught:
        load(path, SignalOptions(num_points=100))
    assert str(path.name) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "options, message",
    [
        (SignalOptions(num_points=0), "num-points"),
        (SignalOptions(surface_fraction=1.5), "surface-fraction"),
        (SignalOptions(resize=(8, 8)), "resize"),
        (SignalOptions(frames=(0, 1)), "frames"),
    ],
)
def test_bad_options_are_rejected(options: SignalOptions, message: str) -> None:
    with pytest.raises(SignalError, match=message):
        load(BONE, options)


@pytest.mark.parametrize(
    "preset", sorted((Path(__file__).parents[3] / "configs" / "occupancy").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_presets_parse_and_load(preset: Path, tmp_path: Path) -> None:
    from fitters.cli.fit import parse_config
    from fitters.config import resolve

    config = resolve(parse_config([str(BONE), "--config", str(preset), "--out", str(tmp_path)]))
    # The presets' 100k-1M points are the papers'; a thousand show the remaining options are valid.
    signal = load(config.path, dataclasses.replace(config.signal, num_points=1000))
    assert signal.num_samples == 1000 and 0 < config.signal.surface_fraction < 1


def test_labels_are_bytes_and_progress_subsets_the_held_out_points(bone: OccupancySignal) -> None:
    assert bone.inside.dtype == torch.uint8 and set(bone.targets.unique().tolist()) == {0.0, 1.0}
    assert bone.num_eval_samples == len(bone.held_out_coords)
    subset = bone.progress_indices()
    assert subset is not None and len(subset.unique()) == len(subset) < bone.num_eval_samples
    field = sphere_logits(0.5)
    predicted, truth = field(bone.held_out_coords[subset]) > 0, bone.held_out_targets[subset] > 0.5
    expected = float((predicted & truth).sum() / (predicted | truth).sum())
    assert bone.evaluate(field, subset)["iou"] == pytest.approx(expected)
