"""The `ns-train` methods of the plugin, registered through the `nerfstudio.method_configs` entry point.

| method         | field                                    | sampling     | optimizer                            |
|----------------|------------------------------------------|--------------|--------------------------------------|
| gauss-esgd     | 8x256 Gaussian σ=0.1, view-dependent     | hierarchical | ESGD, lr 1 -> 0.01 (paper 2, LLFF)   |
| gauss-esgd-max | same                                     | hierarchical | ESGD-max, lr 1 -> 0.1 (paper 2, Blender) |
| gauss-adam     | same                                     | hierarchical | Adam 1e-4 -> 1e-6 (paper 2's baseline) |
| sine-esgd      | 8x256 sine (SIREN init), view-dependent  | hierarchical | ESGD, lr 1 -> 0.01                   |
| tinynerf-lbfgs | 4x128 Gaussian σ=0.1, no view dependence | uniform      | L-BFGS (paper 1)                     |
| tinynerf-adam  | same                                     | uniform      | Adam 5e-4 (the TinyNeRF notebook's)  |
| kilonerf-lbfgs | grid of 2-layer 32-wide sine MLPs        | uniform      | L-BFGS over the whole grid           |
| kilonerf-adam  | same                                     | uniform      | Adam 1e-3                            |

Arrows are exponential lr decays over the run. Every method samples forward-facing captures (LLFF) in NDC, as
NeRF does, and 360-degree / Blender scenes in world space (chosen from the dataparser's metadata, `models.py`).

Sampling. The paper-2 methods sample as NeRF does: stratified uniform (coarse) samples, then importance samples
drawn from the coarse weights by nerfstudio's `PDFSampler` (fine), both passes on the one field (`models.py` says
why), loss = coarse + fine MSE. Paper 2 itself trained "a single model without additional hierarchical sampling"
with 128 uniform samples; `--pipeline.model.num-importance-samples 0 --pipeline.model.num-samples 128` is that
setting. TinyNeRF and KiloNeRF keep paper 1's setting: uniform samples only, no view dependence.

All use `AutoDataParserConfig` (LLFF / Blender / nerfstudio folders detected). The device is picked when this
module loads: CUDA when available, else the CPU, so `ns-train gauss-esgd --data llff/fern` needs no device flag. On
CUDA the ray/sample counts and iterations are NeRF's and paper 2's (2048 rays, 64 coarse + 128 fine samples, 200K
iterations); on the CPU they are cut (`CPU_BUDGET`: fewer rays, samples and iterations); override them with
`--pipeline.datamanager.train-num-rays-per-batch`, `--pipeline.model.num-samples`,
`--pipeline.model.num-importance-samples` and `--max-num-iterations`.

KiloNeRF with L-BFGS: the rendering loss couples every cell a ray crosses, so the nets are not independent and
`BatchedLBFGS`'s per-net line searches do not apply; one L-BFGS runs over all the grid's parameters (still one
`baddbmm` per layer for the whole grid).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import OptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfstudio_plugin.dataparsers import AutoDataParserConfig
from nerfstudio_plugin.fields import KILO_FIELD, NERF_FIELD
from nerfstudio_plugin.models import PreconditionedNeRFModelConfig
from nerfstudio_plugin.optimizers import RegistryOptimizerConfig
from nerfstudio_plugin.trainer import ClosureTrainerConfig
from nf_precond.optim import OPTIMIZERS


@dataclass(frozen=True)
class Budget:
    """Ray, sample and iteration counts of one device class."""

    rays: int
    """Rays per training batch."""
    coarse_samples: int
    """Uniform samples per ray of the hierarchical methods' coarse pass."""
    fine_samples: int
    """Importance samples per ray of their fine pass (rendered together with the coarse ones)."""
    uniform_samples: int
    """Uniform samples per ray of TinyNeRF and KiloNeRF (one pass, paper 1)."""
    iterations: int
    """Training iterations (the lr schedules decay over these)."""


GPU_BUDGET = Budget(rays=2048, coarse_samples=64, fine_samples=128, uniform_samples=64, iterations=200_000)
"""Paper 2's rays and iterations; NeRF's 64 coarse + 128 fine samples."""
CPU_BUDGET = Budget(rays=256, coarse_samples=32, fine_samples=64, uniform_samples=32, iterations=20_000)
"""A tenth of the GPU's iterations, an eighth of its rays and half its samples: what two CPU cores can train."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def budget_for(device: str) -> Budget:
    return GPU_BUDGET if device == "cuda" else CPU_BUDGET


GAUSS_NERF = dict(grid="mlp", field=NERF_FIELD, view_dependent=True)
SINE_NERF = dict(GAUSS_NERF, field=dataclasses.replace(NERF_FIELD, activation="sine"))
TINY_NERF = dict(grid="mlp", field=dataclasses.replace(NERF_FIELD, layers=4, hidden=128), view_dependent=False)
KILO_NERF = dict(grid="kilo", field=KILO_FIELD, kilo_resolution=8)


def optimizer(name: str, lr: float | None = None) -> RegistryOptimizerConfig:
    """The registered optimizer `name` at `lr` (None: the registry's default lr)."""
    return RegistryOptimizerConfig(name=name, lr=OPTIMIZERS[name].lr if lr is None else lr)


def method_config(
    name: str,
    model: Dict[str, Any],
    optimizer: OptimizerConfig,
    lr_final: Optional[float],
    device: str,
    hierarchical: bool,
) -> ClosureTrainerConfig:
    """A full `ns-train` config: our model on the auto-detecting dataparser, one "fields" optimizer, the
    closure-driven Trainer, on `device` with that device's budget; `hierarchical`: coarse + fine samples (NeRF),
    else uniform samples only (paper 1)."""
    budget = budget_for(device)
    scheduler = None
    if lr_final is not None:
        scheduler = ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=budget.iterations)
    if hierarchical:
        samples = dict(num_samples=budget.coarse_samples, num_importance_samples=budget.fine_samples)
    else:
        samples = dict(num_samples=budget.uniform_samples, num_importance_samples=0)
    return ClosureTrainerConfig(
        method_name=name,
        max_num_iterations=budget.iterations,
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=2000,
        mixed_precision=False,
        machine=MachineConfig(device_type=device),
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=AutoDataParserConfig(),
                train_num_rays_per_batch=budget.rays,
                eval_num_rays_per_batch=budget.rays,
            ),
            model=PreconditionedNeRFModelConfig(**samples, **model),
        ),
        optimizers={"fields": {"optimizer": optimizer, "scheduler": scheduler}},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 12, websocket_host="127.0.0.1"),  # local only, as ns-train prints
        vis="viewer",
    )


def all_method_configs(device: str) -> Dict[str, ClosureTrainerConfig]:
    """Every method's config for `device` (tests build them for the CPU explicitly)."""
    return {
        # Paper 2's NeRF: ESGD lr 1 decayed to 0.01 (ESGD-max: to 0.1), Adam 1e-4 decayed to 1e-6.
        "gauss-esgd": method_config("gauss-esgd", GAUSS_NERF, optimizer("esgd", 1.0), 0.01, device, True),
        "gauss-esgd-max": method_config("gauss-esgd-max", GAUSS_NERF, optimizer("esgd-max", 1.0), 0.1, device, True),
        "gauss-adam": method_config("gauss-adam", GAUSS_NERF, optimizer("adam", 1e-4), 1e-6, device, True),
        "sine-esgd": method_config("sine-esgd", SINE_NERF, optimizer("esgd", 1.0), 0.01, device, True),
        "tinynerf-lbfgs": method_config("tinynerf-lbfgs", TINY_NERF, optimizer("lbfgs"), None, device, False),
        "tinynerf-adam": method_config("tinynerf-adam", TINY_NERF, optimizer("adam", 5e-4), None, device, False),
        "kilonerf-lbfgs": method_config("kilonerf-lbfgs", KILO_NERF, optimizer("lbfgs"), None, device, False),
        "kilonerf-adam": method_config("kilonerf-adam", KILO_NERF, optimizer("adam", 1e-3), None, device, False),
    }


def configure(
    name: str,
    data: Path,
    output_dir: Path,
    *,
    device: str = "cpu",
    rays: Optional[int] = None,
    samples: Optional[int] = None,
    importance_samples: Optional[int] = None,
    iterations: Optional[int] = None,
    vis: str = "tensorboard",
) -> ClosureTrainerConfig:
    """Method `name` set up the way `ns-train NAME --data DATA --output-dir OUT ...` would, for Python callers
    (tests, benchmarks); None keeps the method's default."""
    config = all_method_configs(device)[name]
    config.data = config.pipeline.datamanager.data = Path(data)
    config.output_dir = Path(output_dir)
    config.vis = vis
    datamanager, model = config.pipeline.datamanager, config.pipeline.model
    if rays is not None:
        datamanager.train_num_rays_per_batch = datamanager.eval_num_rays_per_batch = rays
    if samples is not None:
        model.num_samples = samples
    if importance_samples is not None:
        model.num_importance_samples = importance_samples
    if iterations is not None:
        config.max_num_iterations = iterations
        scheduler = config.optimizers["fields"]["scheduler"]
        if scheduler is not None:
            scheduler.max_steps = iterations
    return config


DESCRIPTIONS = {
    "gauss-esgd": "8x256 Gaussian NeRF trained with ESGD (paper 2, LLFF settings)",
    "gauss-esgd-max": "8x256 Gaussian NeRF trained with ESGD-max (paper 2, Blender settings)",
    "gauss-adam": "8x256 Gaussian NeRF trained with Adam (paper 2's baseline)",
    "sine-esgd": "8x256 sine (SIREN) NeRF trained with ESGD",
    "tinynerf-lbfgs": "TinyNeRF: 4x128 Gaussian, no view dependence, trained with L-BFGS (paper 1)",
    "tinynerf-adam": "TinyNeRF trained with Adam (paper 1's baseline)",
    "kilonerf-lbfgs": "KiloNeRF: grid of 2-layer 32-wide sine MLPs trained with L-BFGS (paper 1)",
    "kilonerf-adam": "KiloNeRF trained with Adam (paper 1's baseline)",
}

_CONFIGS = all_method_configs(default_device())


def _specification(name: str) -> MethodSpecification:
    return MethodSpecification(config=_CONFIGS[name], description=DESCRIPTIONS[name])


gauss_esgd = _specification("gauss-esgd")
gauss_esgd_max = _specification("gauss-esgd-max")
gauss_adam = _specification("gauss-adam")
sine_esgd = _specification("sine-esgd")
tinynerf_lbfgs = _specification("tinynerf-lbfgs")
tinynerf_adam = _specification("tinynerf-adam")
kilonerf_lbfgs = _specification("kilonerf-lbfgs")
kilonerf_adam = _specification("kilonerf-adam")

__all__ = ["CPU_BUDGET", "DESCRIPTIONS", "GPU_BUDGET", "all_method_configs", "budget_for", "configure", "method_config"]
