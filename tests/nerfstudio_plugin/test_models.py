"""The NeRF model: NDC or world-space sampling chosen from the dataparser's metadata, hierarchical sampling wired to
the coarse weights, depth in world units, and eval metrics computed on the held-out (llffhold) views."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nerfstudio")

from nerfstudio.cameras.rays import RayBundle  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402

from nerfstudio_plugin.dataparsers import holdout_indices  # noqa: E402
from nerfstudio_plugin.fields import FieldOutputs  # noqa: E402
from nerfstudio_plugin.methods import configure  # noqa: E402
from nerfstudio_plugin.models import PreconditionedNeRFModel, PreconditionedNeRFModelConfig  # noqa: E402
from nerfstudio_plugin.scene import RenderedViews  # noqa: E402

pytestmark = pytest.mark.nerfstudio

NDC = {"scale_x": 1.2, "scale_y": 1.6, "near": 1.0}
SCENE_BOX = SceneBox(aabb=torch.tensor([[-8.0, -8.0, -8.0], [8.0, 8.0, 8.0]]))


class OpaqueBeyond(torch.nn.Module):
    """A test field: empty where `inside(positions)` is False, opaque (density 1e4) where it is True, gray."""

    def __init__(self, inside: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inside = inside

    def forward(self, positions: torch.Tensor, directions: torch.Tensor | None = None) -> FieldOutputs:
        density = torch.where(self.inside(positions)[..., None], 1e4, 0.0)
        return FieldOutputs(density=density, rgb=torch.full_like(positions, 0.5))


def model(metadata: dict, **options) -> PreconditionedNeRFModel:
    config = PreconditionedNeRFModelConfig(**{"stratified": False, **options})
    return config.setup(scene_box=SCENE_BOX, num_train_data=1, metadata=metadata).eval()


def rays_from_origin(count: int = 20) -> RayBundle:
    """Rays from the origin into the -z half space, within about 25 degrees of -z."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(
        torch.cat([torch.rand(count, 2, generator=generator) - 0.5, -torch.ones(count, 1)], dim=-1) * 0.9, dim=-1
    )
    origins = torch.zeros(count, 3)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(count, 1))


def test_ndc_model_renders_a_plane_at_its_world_depth() -> None:
    """NDC z' = 0.5 is the world plane z = 2 near / (z' - 1) = -4: a ray from the origin reaches it after 4 / |d_z|.
    With 256 uniform samples the median depth is within one sample's world spacing there (8 x 2/256)."""
    nerf = model({"ndc": NDC, "forward_facing": True, "near": 1.2, "far": 10.0}, num_samples=256)
    assert nerf.ndc_space is not None and nerf.collider is None
    nerf.field = OpaqueBeyond(lambda ndc: ndc[..., 2] > 0.5)
    rays = rays_from_origin()
    depth = nerf(rays)["depth"]
    expected = 4.0 / -rays.directions[:, 2:]
    torch.testing.assert_close(depth, expected, rtol=0, atol=8 * 2 / 256)


@pytest.mark.parametrize(
    "metadata, options",
    [({"forward_facing": False, "near": 1.0, "far": 6.0}, {}),
     ({"ndc": NDC, "forward_facing": True, "near": 1.0, "far": 6.0}, {"ndc": False})],
)  # fmt: skip
def test_world_space_model_renders_a_plane_at_its_depth(metadata: dict, options: dict) -> None:
    """360-degree scenes (no NDC parameters), or NDC turned off: samples between the near/far bounds in world
    space, positions normalized by the scene box (world z = -4 is -0.5 in the box [-8, 8]^3)."""
    nerf = model(metadata, num_samples=256, **options)
    assert nerf.ndc_space is None and nerf.collider is not None
    nerf.field = OpaqueBeyond(lambda normalized: normalized[..., 2] < -0.5)
    rays = rays_from_origin()
    expected = 4.0 / -rays.directions[:, 2:]
    spacing = (6.0 * 1.25 - 1.0 * 0.9) / 256 / 0.9  # the widened bounds over 256 samples, along the longest ray
    torch.testing.assert_close(nerf(rays)["depth"], expected, rtol=0, atol=spacing)


def test_importance_samples_gather_where_the_coarse_pass_found_the_surface() -> None:
    nerf = model({"ndc": NDC, "forward_facing": True}, num_samples=16, num_importance_samples=64)
    nerf.field = OpaqueBeyond(lambda ndc: ndc[..., 2] > 0.3)
    recorded = []
    nerf.sampler_pdf.register_forward_hook(lambda module, args, output: recorded.append(output))
    outputs = nerf(rays_from_origin())
    assert set(outputs) == {"rgb", "accumulation", "depth", "rgb_coarse", "accumulation_coarse"}
    (fine,) = recorded
    z = fine.frustums.get_positions()[..., 2]  # NDC z' of the fine samples
    # 17 coarse bin edges kept (include_original) + 65 importance edges: 81 fine bins.
    assert z.shape[-1] == 16 + 64 + 1
    # The coarse pass put the surface's weight in the bin whose sample lies past z' = 0.3, one coarse bin (2/16 in z')
    # from it: most samples land within that bin of the surface (81 evenly spread ones would put ~10 there; the PDF's
    # histogram padding of 0.01 per bin sends a few elsewhere).
    coarse_bin = 2.0 / 16
    near_surface = ((z > 0.3 - coarse_bin) & (z < 0.3 + coarse_bin)).sum(-1)
    assert (near_surface >= 50).all(), near_surface


@pytest.mark.parametrize("importance_samples", [0, 12])
def test_samples_per_pass_are_the_shapes_the_field_sees(importance_samples: int) -> None:
    """compile_field warms the compiled field up on these shapes: they must be the ones rendering uses."""
    nerf = model({"ndc": NDC, "forward_facing": True}, num_samples=8, num_importance_samples=importance_samples,
                 field=dataclasses.replace(PreconditionedNeRFModelConfig().field, layers=2, hidden=8))  # fmt: skip
    seen = []
    nerf.field.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-2]))
    nerf(rays_from_origin(4))
    assert seen == nerf.samples_per_pass() == ([8] if importance_samples == 0 else [8, 8 + 12 + 1])


def test_hierarchical_loss_is_coarse_plus_fine_mse() -> None:
    torch.manual_seed(0)
    nerf = model({"ndc": NDC, "forward_facing": True}, num_samples=8, num_importance_samples=8,
                 field=dataclasses.replace(PreconditionedNeRFModelConfig().field, layers=2, hidden=8))  # fmt: skip
    rays = rays_from_origin(6)
    image = torch.rand(6, 3)
    outputs = nerf(rays)
    losses = nerf.get_loss_dict(outputs, {"image": image})
    torch.testing.assert_close(losses["rgb_loss"], ((outputs["rgb"] - image) ** 2).mean())
    torch.testing.assert_close(losses["rgb_loss_coarse"], ((outputs["rgb_coarse"] - image) ** 2).mean())
    assert not torch.equal(outputs["rgb"], outputs["rgb_coarse"])


def test_eval_metrics_are_the_held_out_views_psnr(llff_scene: RenderedViews, tmp_path: Path) -> None:
    """What ns-eval reports (`get_average_eval_image_metrics`): the mean PSNR over exactly the llffhold views, equal
    to the PSNR of our own rendering of those cameras against their image files."""
    torch.manual_seed(0)
    config = configure("gauss-esgd", llff_scene.root, tmp_path, rays=16, samples=4, importance_samples=4)
    config.pipeline.model.field = dataclasses.replace(config.pipeline.model.field, layers=2, hidden=8)
    config.pipeline.datamanager.dataparser.llff.downscale_factor = 4
    config.set_timestamp()
    trainer = config.setup()
    trainer.setup()
    pipeline = trainer.pipeline
    pipeline.eval()
    assert pipeline.model.ndc_space is not None  # a forward-facing capture
    metrics = pipeline.get_average_eval_image_metrics()

    pipeline.eval()  # nerfstudio's evaluation leaves the pipeline in training mode (stratified samples)
    held_out = holdout_indices(len(llff_scene.image_paths), 8, "val")
    dataset = pipeline.datamanager.eval_dataset
    assert [path.name for path in dataset.image_filenames] == [llff_scene.image_paths[i].name for i in held_out]
    psnrs = []
    for index, path in enumerate(dataset.image_filenames):
        rgb = pipeline.model.get_outputs_for_camera(dataset.cameras[index : index + 1])["rgb"].clamp(0, 1)
        image = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0)
        assert path.parent.name == "images_4" and rgb.shape == image.shape
        psnrs.append(-10 * torch.log10(((rgb - image) ** 2).mean()))
    assert metrics["psnr"] == pytest.approx(float(torch.stack(psnrs).mean()), abs=1e-4)
    assert 0 <= metrics["ssim"] <= 1
