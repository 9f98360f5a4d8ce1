"""The nerfstudio model around our radiance fields: one field, uniform samples, no hierarchical sampling.

Paper 2's Gaussian NeRF and paper 1's TinyNeRF both train "a single model without additional hierarchical sampling":
stratified uniform samples between the near and far bounds, volume rendering, MSE on color. Metrics are PSNR and
SSIM; LPIPS only when AlexNet's weights are already in the torch hub cache, because torchmetrics' LPIPS downloads
them otherwise (which crashes offline, and nothing may download at run time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Tuple, Type

import torch
from torch.nn import Parameter

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps

from nerfstudio_plugin.fields import NERF_FIELD, KiloRadianceField, RadianceField
from nf_precond.nn import FieldConfig

BOUNDS_MARGIN = (0.9, 1.25)
"""Near/far bounds from the data are z-depths; samples are placed by distance along unit ray directions, which is
up to 1/cos(half the diagonal field of view) longer, so the interval is widened by these factors."""


def lpips_weights_present() -> bool:
    """Whether torchmetrics' LPIPS (AlexNet) can be built without a download: its torchvision weights are cached."""
    from torchvision.models import AlexNet_Weights

    file_name = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / file_name).is_file()


@dataclass
class PreconditionedNeRFModelConfig(ModelConfig):
    """A single radiance field (coordinate MLP or KiloNeRF grid) rendered from uniform samples."""

    _target: Type = field(default_factory=lambda: PreconditionedNeRFModel)
    grid: Literal["mlp", "kilo"] = "mlp"
    """mlp: one coordinate MLP (Gaussian/sine NeRF, TinyNeRF); kilo: a grid of tiny MLPs (KiloNeRF)."""
    field: FieldConfig = NERF_FIELD
    """The coordinate MLP (or each KiloNeRF net): paper 2's NeRF is 8x256 Gaussian, σ 0.1."""
    view_dependent: bool = True
    """Color depends on the view direction through a small head (mlp field only; TinyNeRF and KiloNeRF: False)."""
    kilo_resolution: int = 8
    """KiloNeRF grid cells per axis (resolution^3 tiny MLPs over the scene box)."""
    num_samples: int = 128
    """Uniform samples per ray."""
    stratified: bool = True
    """Jitter the samples within their bins while training (NeRF's stratified sampling)."""
    background_color: Literal["auto", "black", "white", "last_sample"] = "auto"
    """Color behind the field; auto: black for forward-facing (LLFF) data, as NeRF renders it, else white."""
    bounds_from_data: bool = True
    """Use the near/far bounds the dataparser reports (LLFF's poses_bounds.npy) when it reports them; otherwise
    collider_params (Blender's 2 and 6)."""
    eval_num_rays_per_chunk: int = 1024
    """Rays per chunk when rendering whole images (eval, viewer, ns-render)."""


class PreconditionedNeRFModel(Model):
    """Uniform samples between near and far -> field -> volume rendering -> MSE; one parameter group, "fields"."""

    config: PreconditionedNeRFModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        metadata = self.kwargs.get("metadata") or {}
        near, far = self.config.collider_params["near_plane"], self.config.collider_params["far_plane"]
        if self.config.bounds_from_data and "near" in metadata and "far" in metadata:
            near, far = metadata["near"] * BOUNDS_MARGIN[0], metadata["far"] * BOUNDS_MARGIN[1]
        self.near, self.far = float(near), float(far)
        # Keep the near plane at inference too (nerfstudio's default resets it to 0, wasting samples on empty space).
        self.collider = NearFarCollider(near_plane=self.near, far_plane=self.far, reset_near_plane=False)

        config = self.config
        if config.grid == "kilo":
            self.field = KiloRadianceField(config.field, resolution=config.kilo_resolution)
        else:
            self.field = RadianceField(config.field, view_dependent=config.view_dependent)
        self.sampler = UniformSampler(num_samples=config.num_samples, train_stratified=config.stratified)
        background = config.background_color
        if background == "auto":
            background = "black" if metadata.get("forward_facing") else "white"
        self.renderer_rgb = RGBRenderer(background_color=background)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()
        self.rgb_loss = MSELoss()

        from torchmetrics.functional import structural_similarity_index_measure
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = structural_similarity_index_measure
        self.lpips = None
        if lpips_weights_present():
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.lpips = LearnedPerceptualImagePatchSimilarity(normalize=True)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"fields": list(self.field.parameters())}

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, torch.Tensor]:
        ray_samples = self.sampler(ray_bundle)
        positions = SceneBox.get_normalized_positions(ray_samples.frustums.get_positions(), self.scene_box.aabb.to(
            ray_bundle.origins.device)) * 2.0 - 1.0  # fmt: skip
        outputs = self.field(positions, ray_samples.frustums.directions)
        weights = ray_samples.get_weights(outputs.density)
        return {
            "rgb": self.renderer_rgb(rgb=outputs.rgb, weights=weights),
            "accumulation": self.renderer_accumulation(weights),
            "depth": self.renderer_depth(weights, ray_samples),
        }

    def get_metrics_dict(self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        return {"psnr": self.psnr(outputs["rgb"].detach(), image)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        image = batch["image"].to(outputs["rgb"].device)
        prediction, target = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=image
        )
        return {"rgb_loss": self.rgb_loss(target, prediction)}

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        rgb = outputs["rgb"].clamp(0.0, 1.0)
        depth = colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"],
                                               near_plane=self.near, far_plane=self.far)  # fmt: skip
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": depth,
        }
        # [H, W, C] -> [1, C, H, W] for torchmetrics.
        image, rgb = (torch.moveaxis(x, -1, 0)[None] for x in (image, rgb))
        metrics = {"psnr": float(self.psnr(rgb, image)), "ssim": float(self.ssim(rgb, image))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(rgb, image))
        return metrics, images


__all__ = ["PreconditionedNeRFModel", "PreconditionedNeRFModelConfig", "lpips_weights_present"]
