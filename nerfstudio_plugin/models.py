"""The nerfstudio model around our radiance fields: NeRF's hierarchical sampling and NDC, on one field.

A ray batch is rendered as NeRF renders it:

1. forward-facing captures (the dataparser reports NDC parameters, LLFF) are sampled in normalized device
   coordinates (`ndc.py`): the ray from the near plane to infinity spans the NDC cube, samples are uniform in
   disparity and the field sees NDC positions. Other scenes (360 degrees, Blender) are sampled in world space
   between the near/far bounds, positions normalized by the scene box;
2. `num_samples` stratified uniform samples (nerfstudio's `UniformSampler`), volume rendered (its renderers);
3. with `num_importance_samples` > 0, NeRF's hierarchical sampling: nerfstudio's `PDFSampler` draws that many
   more samples from the coarse weights, merged with the coarse ones, and the fine pass is rendered from all of
   them; the loss is the coarse plus the fine MSE, as in NeRF.

Coarse and fine passes query ONE field (as mip-NeRF does), not NeRF's two networks: the optimizers compared here
precondition one parameter vector, so ESGD's Hessian-vector products, memory and step cost stay those of the
paper's one 8x256 network, and the coarse loss trains the same weights the fine pass renders with.

The field may run compiled (`compile_field`, asked for by the trainer's `--compile`): a `CompiledField` twin that
shares the field's parameters and is kept outside the module tree, so checkpoints are the same either way.

Metrics are PSNR and SSIM of the fine rendering; LPIPS only when AlexNet's weights are already in the torch hub
cache, because torchmetrics' LPIPS downloads them otherwise (which crashes offline, and nothing may download at
run time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Literal, Tuple, Type

import torch
from torch.nn import Parameter
from torch.nn import functional as F

from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps

from nerfstudio_plugin.fields import NERF_FIELD, KiloRadianceField, RadianceField
from nerfstudio_plugin.ndc import NDCSpace
from nf_precond.nn import FieldConfig, compiled_field

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
    """A single radiance field (coordinate MLP or KiloNeRF grid) rendered from uniform samples, optionally refined by
    NeRF's hierarchical (importance) sampling, in NDC for forward-facing captures."""

    _target: Type = field(default_factory=lambda: PreconditionedNeRFModel)
    grid: Literal["mlp", "kilo"] = "mlp"
    """mlp: one coordinate MLP (Gaussian/sine NeRF, TinyNeRF); kilo: a grid of tiny MLPs (KiloNeRF)."""
    field: FieldConfig = NERF_FIELD
    """The coordinate MLP (or each KiloNeRF net): paper 2's NeRF is 8x256 Gaussian, σ 0.1."""
    view_dependent: bool = True
    """Color depends on the view direction through a small head (mlp field only; TinyNeRF and KiloNeRF: False)."""
    kilo_resolution: int = 8
    """KiloNeRF grid cells per axis (resolution^3 tiny MLPs over the scene box, or the NDC cube)."""
    num_samples: int = 64
    """Uniform samples per ray (the coarse pass when num_importance_samples > 0)."""
    num_importance_samples: int = 0
    """Fine samples per ray drawn from the coarse weights (NeRF's hierarchical sampling, 128 in NeRF); the fine pass
    renders them together with the coarse ones. 0: one pass of uniform samples only."""
    stratified: bool = True
    """Jitter the samples within their bins while training (NeRF's stratified sampling)."""
    ndc: bool = True
    """Sample forward-facing captures in normalized device coordinates when the dataparser reports NDC parameters
    (LLFF's forward-facing scenes, as NeRF does); False samples them in world space between their bounds."""
    background_color: Literal["auto", "black", "white", "last_sample"] = "auto"
    """Color behind the field; auto: black for forward-facing (LLFF) data, as NeRF renders it, else white."""
    bounds_from_data: bool = True
    """Use the near/far bounds the dataparser reports (LLFF's poses_bounds.npy) when it reports them; otherwise
    collider_params (Blender's 2 and 6). Unused in NDC, where rays span the near plane to infinity."""
    eval_num_rays_per_chunk: int = 1024
    """Rays per chunk when rendering whole images (eval, viewer, ns-render)."""


@dataclass
class RenderPass:
    """One rendering pass: its samples, their weights and what they render to."""

    samples: RaySamples
    weights: torch.Tensor
    rgb: torch.Tensor
    accumulation: torch.Tensor


class PreconditionedNeRFModel(Model):
    """(NDC) rays -> uniform samples -> field -> volume rendering [-> importance samples -> field -> rendering]
    -> MSE; one parameter group, "fields"."""

    config: PreconditionedNeRFModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        config = self.config
        metadata = self.kwargs.get("metadata") or {}
        self.ndc_space = NDCSpace(**metadata["ndc"]) if config.ndc and "ndc" in metadata else None
        near, far = config.collider_params["near_plane"], config.collider_params["far_plane"]
        if config.bounds_from_data and "near" in metadata and "far" in metadata:
            near, far = metadata["near"] * BOUNDS_MARGIN[0], metadata["far"] * BOUNDS_MARGIN[1]
        self.near, self.far = float(near), float(far)
        # NDC rays get their bounds from the NDC map. Otherwise keep the near plane at inference too (nerfstudio's
        # default resets it to 0, wasting samples on empty space).
        self.collider = None if self.ndc_space else NearFarCollider(self.near, self.far, reset_near_plane=False)

        if config.grid == "kilo":
            self.field = KiloRadianceField(config.field, resolution=config.kilo_resolution)
        else:
            self.field = RadianceField(config.field, view_dependent=config.view_dependent)
        self.sampler = UniformSampler(num_samples=config.num_samples, train_stratified=config.stratified)
        self.sampler_pdf = None
        if config.num_importance_samples > 0:
            self.sampler_pdf = PDFSampler(num_samples=config.num_importance_samples, train_stratified=config.stratified)
        self.__dict__["compiled_twin"] = None  # set by compile_field; kept outside the module tree
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

    def samples_per_pass(self) -> List[int]:
        """Samples per ray the field sees in each rendering pass: the coarse pass, then the fine one, whose
        `PDFSampler` merges its bin edges with the coarse ones (one sample more than the two counts together)."""
        coarse = self.config.num_samples
        return [coarse] if self.sampler_pdf is None else [coarse, coarse + self.config.num_importance_samples + 1]

    def compile_field(self, train_rays: int, eager_when: Callable[[], bool]) -> None:
        """Query a compiled twin of the field from now on, compiled now on the shapes it will see: each pass of a
        training batch of `train_rays` rays (forward and backward) and of an evaluation chunk (forward). It runs
        eager while `eager_when()` (curvature steps need double backward); a compile failure keeps the eager
        field, with one warning line."""
        device = next(self.field.parameters()).device

        def inputs(rays: int, samples: int) -> Tuple[torch.Tensor, torch.Tensor]:
            # The layout render_pass passes: positions [rays, samples, 3], one direction per ray expanded over its
            # samples (compiled graphs are specialized on strides too).
            positions = torch.rand(rays, samples, 3, device=device) * 2.0 - 1.0
            directions = F.normalize(torch.randn(rays, 3, device=device), dim=-1)[:, None, :]
            return positions, directions.expand(rays, samples, 3)

        def warm_up(field: torch.nn.Module) -> None:
            for samples in self.samples_per_pass():
                outputs = field(*inputs(train_rays, samples))
                (outputs.density.sum() + outputs.rgb.sum()).backward()
            with torch.no_grad():
                for samples in self.samples_per_pass():
                    field(*inputs(self.config.eval_num_rays_per_chunk, samples))

        twin = compiled_field(self.field, warm_up, device, eager_when=eager_when)
        self.__dict__["compiled_twin"] = twin if twin is not self.field else None

    def render_pass(self, samples: RaySamples, view_directions: torch.Tensor) -> RenderPass:
        """Query the field at `samples` (viewed along the world directions [..., 3]) and volume render them."""
        positions = samples.frustums.get_positions()
        if self.ndc_space is None:
            aabb = self.scene_box.aabb.to(positions.device)
            positions = SceneBox.get_normalized_positions(positions, aabb) * 2.0 - 1.0
        directions = view_directions[..., None, :].expand(positions.shape)
        field = self.field if self.compiled_twin is None else self.compiled_twin
        outputs = field(positions, directions)
        weights = samples.get_weights(outputs.density)
        rgb = self.renderer_rgb(rgb=outputs.rgb, weights=weights)
        return RenderPass(samples, weights, rgb, self.renderer_accumulation(weights))

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, torch.Tensor]:
        world = ray_bundle
        if self.ndc_space is not None:
            ray_bundle = self.ndc_space.ray_bundle(world)
        coarse = self.render_pass(self.sampler(ray_bundle), world.directions)
        final = coarse
        if self.sampler_pdf is not None:
            final = self.render_pass(self.sampler_pdf(ray_bundle, coarse.samples, coarse.weights), world.directions)
        depth = self.renderer_depth(final.weights, final.samples)
        if self.ndc_space is not None:
            depth = self.ndc_space.world_distance(world, ray_bundle, depth)
        outputs = {"rgb": final.rgb, "accumulation": final.accumulation, "depth": depth}
        if final is not coarse:
            outputs.update(rgb_coarse=coarse.rgb, accumulation_coarse=coarse.accumulation)
        return outputs

    def get_metrics_dict(self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        return {"psnr": self.psnr(outputs["rgb"].detach(), image)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        image = batch["image"].to(outputs["rgb"].device)
        losses = {}
        for level in ("", "_coarse"):
            if f"rgb{level}" in outputs:
                prediction, target = self.renderer_rgb.blend_background_for_loss_computation(
                    pred_image=outputs[f"rgb{level}"], pred_accumulation=outputs[f"accumulation{level}"], gt_image=image
                )
                losses[f"rgb_loss{level}"] = self.rgb_loss(target, prediction)
        return losses

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


__all__ = ["BOUNDS_MARGIN", "PreconditionedNeRFModel", "PreconditionedNeRFModelConfig", "lpips_weights_present"]
