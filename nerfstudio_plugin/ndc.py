"""Normalized device coordinates (NDC) for forward-facing scenes, as the NeRF paper samples LLFF captures.

In a world where the average camera sits at the origin looking down -z and all content lies beyond the plane
z = -near (what the LLFF dataparser's recentering and `bd_factor` rescale produce), the perspective map

    (x, y, z) -> (-ax x / z, -ay y / z, 1 + 2 near / z),    ax = 2 fx / W, ay = 2 fy / H

sends the reference camera's frustum from depth `near` to infinity into the cube [-1, 1]^3 and straight lines to
straight lines. A world ray, moved along itself to the plane z = -near, becomes the NDC ray o' + s d' with s from 0
(the near plane) to 1 (infinity); samples uniform in s are uniform in disparity, so an unbounded scene needs no far
bound. nerfstudio 1.1.5 has no NDC rays, so the map lives here; its samplers and renderers run on the NDC rays
unchanged (directions are made unit length and s scaled by |d'|, so their deltas are NDC distances as in NeRF).

Rays that do not point into the scene (d_z >= 0, e.g. a viewer camera turned around) have no NDC image; their
d_z is clamped to a small negative value so they stay finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from nerfstudio.cameras.rays import RayBundle

MIN_FORWARD = 1e-6
"""Smallest |d_z| (unit directions) a ray keeps: rays parallel to or facing away from the image plane are clamped
to it so the NDC map stays finite."""


@dataclass(frozen=True)
class NDCSpace:
    """The NDC map of one forward-facing capture (its reference intrinsics and near plane)."""

    scale_x: float
    """2 fx / W of the capture's cameras."""
    scale_y: float
    """2 fy / H of the capture's cameras."""
    near: float
    """Depth of the near plane (the LLFF dataparser's NDC_NEAR: 1, with the nearest content at 1 / bd_factor)."""

    def points(self, points: torch.Tensor) -> torch.Tensor:
        """World points [..., 3] (z < 0) mapped to NDC [..., 3]."""
        x, y, z = points.unbind(-1)
        return torch.stack([-self.scale_x * x / z, -self.scale_y * y / z, 1.0 + 2.0 * self.near / z], dim=-1)

    def rays(self, origins: torch.Tensor, directions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """World rays [..., 3] -> (NDC origins on the plane z' = -1, NDC directions d' spanning s in [0, 1])."""
        dz = directions[..., 2].clamp(max=-MIN_FORWARD)
        directions = torch.cat([directions[..., :2], dz[..., None]], dim=-1)
        shift = -(self.near + origins[..., 2]) / dz
        origins = origins + shift[..., None] * directions
        ox, oy, oz = origins.unbind(-1)
        dx, dy, _ = directions.unbind(-1)
        ndc_origins = torch.stack([-self.scale_x * ox / oz, -self.scale_y * oy / oz, 1.0 + 2.0 * self.near / oz], -1)
        ndc_directions = torch.stack(
            [-self.scale_x * (dx / dz - ox / oz), -self.scale_y * (dy / dz - oy / oz), -2.0 * self.near / oz], dim=-1
        )
        return ndc_origins, ndc_directions

    def ray_bundle(self, world: RayBundle) -> RayBundle:
        """`world` as NDC rays with unit directions, nears 0 and fars |d'| (s = 1: infinitely far)."""
        origins, directions = self.rays(world.origins, world.directions)
        length = directions.norm(dim=-1, keepdim=True)
        return RayBundle(
            origins=origins,
            directions=directions / length,
            pixel_area=world.pixel_area,
            camera_indices=world.camera_indices,
            nears=torch.zeros_like(length),
            fars=length,
            metadata=world.metadata,
            times=world.times,
        )

    def world_distance(self, world: RayBundle, ndc: RayBundle, distance: torch.Tensor) -> torch.Tensor:
        """Distances [..., 1] along the NDC rays `ndc` turned into distances from the world rays' origins along the
        world rays `world` (unit directions), e.g. a rendered NDC depth into a metric depth; points at infinity
        (z' >= 1) come out very far but finite."""
        z_ndc = ndc.origins[..., 2:] + distance * ndc.directions[..., 2:]
        z_world = 2.0 * self.near / (z_ndc - 1.0).clamp(max=-torch.finfo(z_ndc.dtype).eps)
        dz = world.directions[..., 2:].clamp(max=-MIN_FORWARD)
        return (z_world - world.origins[..., 2:]) / dz


__all__ = ["MIN_FORWARD", "NDCSpace"]
