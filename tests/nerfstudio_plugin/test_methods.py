"""The eight ns-train methods: registered, paper defaults, each trains a few steps on a rendered scene and saves a
checkpoint; ns-eval works on a finished run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("nerfstudio")

from nerfstudio_plugin.methods import DESCRIPTIONS, all_method_configs, configure, default_device  # noqa: E402
from nerfstudio_plugin.optimizers import RegistryOptimizerConfig  # noqa: E402
from nf_precond.optim import OPTIMIZERS  # noqa: E402
from nf_precond.optim.esgd import ESGD  # noqa: E402
from nf_precond.optim.esgd_max import ESGDMax  # noqa: E402
from nf_precond.optim.lbfgs import LBFGS  # noqa: E402

pytestmark = pytest.mark.nerfstudio

METHODS = ["gauss-esgd", "gauss-esgd-max", "gauss-adam", "sine-esgd", "tinynerf-lbfgs", "tinynerf-adam",
           "kilonerf-lbfgs", "kilonerf-adam"]  # fmt: skip
BIN = Path(sys.executable).parent


def test_every_method_is_described_and_configured() -> None:
    assert sorted(DESCRIPTIONS) == sorted(METHODS)
    assert sorted(all_method_configs("cpu")) == sorted(METHODS)


def test_paper_defaults() -> None:
    configs = all_method_configs("cuda")  # the papers' settings (built without needing a GPU)
    gauss = configs["gauss-esgd"]
    model = gauss.pipeline.model
    field = model.field
    assert (field.activation, field.layers, field.hidden, field.sigma) == ("gauss", 8, 256, 0.1)
    # NeRF's hierarchical sampling (64 coarse + 128 fine), in NDC for forward-facing scenes.
    assert (model.num_samples, model.num_importance_samples, model.ndc) == (64, 128, True)
    assert gauss.pipeline.datamanager.train_num_rays_per_batch == 2048
    fields = gauss.optimizers["fields"]
    assert (fields["optimizer"].name, fields["optimizer"].lr) == ("esgd", 1.0)
    assert fields["scheduler"].lr_final == 0.01 and fields["scheduler"].max_steps == gauss.max_num_iterations
    names = {name: config.optimizers["fields"]["optimizer"].name for name, config in configs.items()}
    assert names == {"gauss-esgd": "esgd", "gauss-esgd-max": "esgd-max", "gauss-adam": "adam", "sine-esgd": "esgd",
                     "tinynerf-lbfgs": "lbfgs", "tinynerf-adam": "adam", "kilonerf-lbfgs": "lbfgs",
                     "kilonerf-adam": "adam"}  # fmt: skip
    for name in ("gauss-esgd-max", "gauss-adam", "sine-esgd"):
        assert configs[name].pipeline.model.num_importance_samples == 128
    tiny = configs["tinynerf-lbfgs"].pipeline.model
    assert (tiny.field.layers, tiny.field.hidden, tiny.field.activation, tiny.view_dependent) == (4, 128, "gauss", False)
    kilo = configs["kilonerf-lbfgs"].pipeline.model
    assert (kilo.grid, kilo.field.layers, kilo.field.hidden, kilo.field.activation) == ("kilo", 2, 32, "sine")
    # Paper 1 keeps uniform samples only (no hierarchical sampling).
    assert tiny.num_importance_samples == kilo.num_importance_samples == 0
    # Baselines train the same fields as the methods they compare against.
    for method, baseline in (("gauss-esgd", "gauss-adam"), ("tinynerf-lbfgs", "tinynerf-adam"),
                             ("kilonerf-lbfgs", "kilonerf-adam")):  # fmt: skip
        assert configs[method].pipeline.model == configs[baseline].pipeline.model


def test_optimizer_configs_build_our_optimizers() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(RegistryOptimizerConfig(name="esgd").setup(params), ESGD)
    assert isinstance(RegistryOptimizerConfig(name="esgd-max").setup(params), ESGDMax)
    lbfgs = RegistryOptimizerConfig(name="lbfgs", overrides={"history_size": 7}).setup(params)
    assert isinstance(lbfgs, LBFGS) and lbfgs.param_groups[0]["history_size"] == 7
    with pytest.raises(ValueError, match="max_norm"):
        RegistryOptimizerConfig(name="esgd", max_norm=1.0).setup(params)


@pytest.mark.parametrize("method", METHODS)
def test_method_optimizers_keep_the_registry_defaults(method: str) -> None:
    """A method overrides only its lr: every other hyperparameter is the core registry's (a default that moves in the
    core moves in ns-train too; gauss-esgd once kept an outdated ESGD bias correction)."""
    config = all_method_configs("cpu")[method].optimizers["fields"]["optimizer"]
    params = [torch.nn.Parameter(torch.zeros(3))]
    built = config.setup(params).param_groups[0]
    reference = OPTIMIZERS[config.name].load()(params, **{**OPTIMIZERS[config.name].defaults, "lr": config.lr})
    expected = {key: value for key, value in reference.param_groups[0].items() if key != "params"}
    assert {key: value for key, value in built.items() if key != "params"} == expected


def test_device_follows_cuda_availability() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == expected
    from nerfstudio_plugin import methods

    assert methods.gauss_esgd.config.machine.device_type == expected


def train(name: str, data: Path, output_dir: Path, steps: int = 2) -> Path:
    """Train `name` for `steps` tiny steps in-process, as ns-train does; returns the run folder."""
    config = configure(name, data, output_dir, rays=16, samples=8, importance_samples=8, iterations=steps)
    if config.pipeline.model.grid == "kilo":
        config.pipeline.model.kilo_resolution = 2
    else:
        config.pipeline.model.field = dataclasses.replace(config.pipeline.model.field, layers=2, hidden=16)
    config.set_timestamp()
    config.save_config()
    trainer = config.setup()
    trainer.setup()
    trainer.train()
    return config.get_base_dir()


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_and_writes_a_checkpoint(name: str, llff_scene, blender_scene, tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = blender_scene["train"].root if name == "gauss-esgd-max" else llff_scene.root
    run = train(name, data, tmp_path)
    checkpoints = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    assert [path.name for path in checkpoints] == ["step-000000001.ckpt"]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)  # as resume and ns-eval load it
    assert state["step"] == 1
    assert all(torch.isfinite(value).all() for value in state["pipeline"].values() if value.is_floating_point())


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=env)


def test_entry_points_register_every_method() -> None:
    """What `ns-train --help` lists: nerfstudio discovers the methods through the entry point."""
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    for name in METHODS:
        assert methods[name].method_name == name and descriptions[name] == DESCRIPTIONS[name]


@pytest.mark.slow
def test_ns_train_on_cpu_without_device_flag_then_ns_eval_and_ns_render(llff_scene, tmp_path: Path) -> None:
    """`ns-train gauss-esgd --data <scene>` with no device flag trains on the CPU (hierarchical sampling in NDC);
    `ns-eval` reads the finished run and reports PSNR/SSIM (LPIPS only with cached weights: nothing downloads);
    `ns-render dataset` renders the held-out views at their size. `--compile on`: the compiled field trains (ESGD's
    first steps are curvature steps and run it eager) and the checkpoint reads back without it."""
    result = run_cli(str(BIN / "ns-train"), "gauss-esgd", "--data", str(llff_scene.root), "--output-dir",
                     str(tmp_path), "--max-num-iterations", "2", "--vis", "tensorboard", "--compile", "on",
                     "--pipeline.datamanager.train-num-rays-per-batch", "16", "--pipeline.model.num-samples", "8",
                     "--pipeline.model.num-importance-samples", "8",
                     "--pipeline.model.field.layers", "2", "--pipeline.model.field.hidden", "16")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "compiled the field in" in result.stdout
    (config_path,) = tmp_path.glob("*/gauss-esgd/*/config.yml")
    saved = config_path.read_text()
    assert "device_type: cpu" in saved and "num_importance_samples: 8" in saved and "ndc: true" in saved
    output = tmp_path / "eval.json"
    result = run_cli(str(BIN / "ns-eval"), "--load-config", str(config_path), "--output-path", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads(output.read_text())["results"]
    assert 0 < metrics["psnr"] < 60 and 0 <= metrics["ssim"] <= 1
    renders = tmp_path / "renders"
    result = run_cli(str(BIN / "ns-render"), "dataset", "--load-config", str(config_path), "--output-path",
                     str(renders), "--split", "test", "--rendered-output-names", "rgb")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # One held-out view (8 views, every 8th held out); nerfstudio names a lone render after its output ("rgb").
    (rendered,) = [path for path in (renders / "test").rglob("*") if path.suffix in (".png", ".jpg")]
    assert Image.open(rendered).size == Image.open(llff_scene.image_paths[0]).size
