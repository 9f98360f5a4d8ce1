"""NDC for forward-facing scenes: the map against the formula, world rays against their NDC rays, and the rendered
scene's known cameras and surfaces against the NDC rays the parser's cameras give."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.cameras.rays import RayBundle  # noqa: E402

from nerfstudio_plugin.dataparsers import LLFFDataParserConfig  # noqa: E402
from nerfstudio_plugin.ndc import NDCSpace  # noqa: E402
from nerfstudio_plugin.scene import RenderedViews, forward_facing_scene, trace  # noqa: E402

pytestmark = pytest.mark.nerfstudio


def world_rays(origins: torch.Tensor, directions: torch.Tensor) -> RayBundle:
    directions = torch.nn.functional.normalize(directions, dim=-1)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones_like(origins[..., :1]))


def test_point_at_known_depth_maps_to_the_formula() -> None:
    # A 100x80 camera with fx = fy = 50: ax = 2 * 50 / 100 = 1, ay = 2 * 50 / 80 = 1.25; near plane at depth 1.
    space = NDCSpace(scale_x=1.0, scale_y=1.25, near=1.0)
    points = torch.tensor([[0.5, -0.25, -4.0], [0.0, 0.0, -1.0], [2.0, 1.0, -1e9]], dtype=torch.float64)
    # x' = -ax x / z, y' = -ay y / z, z' = 1 + 2 near / z: depth 4 -> z' = 0.5; the near plane -> -1; infinity -> 1.
    expected = torch.tensor(
        [[0.125, -0.078125, 0.5], [0.0, 0.0, -1.0], [2e-9, 1.25e-9, 1.0 - 2e-9]], dtype=torch.float64
    )
    torch.testing.assert_close(space.points(points), expected, rtol=0, atol=1e-12)


def test_points_along_a_world_ray_lie_on_its_ndc_ray() -> None:
    torch.manual_seed(0)
    space = NDCSpace(scale_x=1.7, scale_y=2.3, near=1.0)
    origins = torch.randn(50, 3, dtype=torch.float64) * 0.3  # cameras near the origin, behind the near plane
    directions = torch.randn(50, 3, dtype=torch.float64) * 0.3 + torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    world = world_rays(origins, directions)
    ndc = space.ray_bundle(world)
    torch.testing.assert_close(ndc.directions.norm(dim=-1), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(ndc.origins[:, 2], torch.full((50,), -1.0, dtype=torch.float64))  # on the near plane
    for depth in (1.5, 3.0, 10.0, 1e4):
        # The world point at z-depth `depth` (world z = -depth) and its distance along the world ray.
        distance = (-depth - world.origins[:, 2:]) / world.directions[:, 2:]
        points = world.origins + distance * world.directions
        # On the NDC ray at s = 1 - o_z / p_z (o on the near plane): scaled by |d'| for the unit directions.
        s = 1.0 - (-1.0) / points[:, 2:]
        along = s * ndc.fars
        torch.testing.assert_close(ndc.origins + along * ndc.directions, space.points(points))
        # And back: the NDC distance is the world distance along the world ray.
        torch.testing.assert_close(space.world_distance(world, ndc, along), distance, rtol=1e-6, atol=0)
    # s = 1 (the far end of every NDC ray) is infinitely far: NDC z = 1.
    torch.testing.assert_close(
        (ndc.origins + ndc.fars * ndc.directions)[:, 2], torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_rays_facing_away_stay_finite() -> None:
    space = NDCSpace(scale_x=1.0, scale_y=1.0, near=1.0)
    directions = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.6, -0.8]])
    ndc = space.ray_bundle(world_rays(torch.zeros(3, 3), directions))
    assert all(torch.isfinite(value).all() for value in (ndc.origins, ndc.directions, ndc.fars))


def parser_world_hits(outputs, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rays of `view` in the parser's world and the traced distance to the surface each one hits (from the
    generator's scene, taken back to the generator's world and forth)."""
    rays = outputs.cameras.generate_rays(camera_indices=view).flatten()
    transform = outputs.dataparser_transform.double().numpy()
    scale = outputs.dataparser_scale
    directions = rays.directions.double().numpy() @ transform[:, :3]
    origins = (rays.origins.double().numpy() / scale - transform[:, 3]) @ transform[:, :3]
    _, t = trace(forward_facing_scene(), origins, directions)  # directions are unit: t is a distance
    world = RayBundle(origins=rays.origins.double(), directions=rays.directions.double(), pixel_area=rays.pixel_area)
    return world, torch.from_numpy(t * scale)[:, None]


def test_rendered_views_hit_inside_the_ndc_cube_on_their_ndc_rays(llff_scene: RenderedViews) -> None:
    """Every surface a training view sees lies beyond NDC's near plane (z' in (-1, 1)) on its pixel's NDC ray, at the
    NDC distance that converts back to the traced world distance."""
    parser = LLFFDataParserConfig(data=llff_scene.root, llffhold=0, downscale_factor=1).setup()
    outputs = parser.get_dataparser_outputs()
    assert outputs.metadata["forward_facing"] is True
    space = NDCSpace(**outputs.metadata["ndc"])
    # The generator's focal length and image size give NeRF's NDC scale; the near plane sits at depth 1.
    assert space.scale_x == pytest.approx(2 * llff_scene.focal / llff_scene.width)
    assert space.scale_y == pytest.approx(2 * llff_scene.focal / llff_scene.height)
    assert space.near == 1.0
    for view in range(len(llff_scene.image_paths)):
        world, distance = parser_world_hits(outputs, view)
        assert torch.isfinite(distance).all()  # the back wall closes the scene
        hits = world.origins + distance * world.directions
        ndc_hits = space.points(hits)
        assert (ndc_hits[:, 2] > -1.0).all() and (ndc_hits[:, 2] < 1.0).all()
        ndc = space.ray_bundle(world)
        along = ((ndc_hits - ndc.origins) * ndc.directions).sum(-1, keepdim=True)
        assert (along > 0).all() and (along < ndc.fars).all()
        torch.testing.assert_close(ndc.origins + along * ndc.directions, ndc_hits, rtol=0, atol=1e-9)
        torch.testing.assert_close(space.world_distance(world, ndc, along), distance, rtol=1e-9, atol=0)

