"""ClosureTrainer: one training step is exactly `optimizer.step(closure)` on one ray batch, and resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")


from nerfstudio_plugin.methods import configure  # noqa: E402
from nerfstudio_plugin.optimizers import RegistryOptimizerConfig  # noqa: E402
from nerfstudio_plugin.trainer import ClosureTrainer, PreflightError, preflight  # noqa: E402
from nf_precond.optim import make_closure  # noqa: E402

pytestmark = pytest.mark.nerfstudio

OPTIMIZERS = {
    "esgd": lambda: RegistryOptimizerConfig(name="esgd", lr=0.05, overrides={"warmup": 1, "update_every": 2}),
    "lbfgs": lambda: RegistryOptimizerConfig(name="lbfgs", overrides={"history_size": 5}),
    "adam": lambda: RegistryOptimizerConfig(name="adam", lr=1e-3),
}


def tiny_trainer(data: Path, output_dir: Path, optimizer_name: str, stratified: bool = False,
                 importance_samples: int = 0, compile: str = "auto") -> ClosureTrainer:  # fmt: skip
    """TinyNeRF-shaped model (2x16 Gaussian) on 32 rays x 8 samples (+ `importance_samples` fine ones); no
    scheduler, so the lr stays fixed."""
    config = configure("tinynerf-lbfgs", data, output_dir, rays=32, samples=8, importance_samples=importance_samples,
                       iterations=2)  # fmt: skip
    config.pipeline.model.field = dataclasses.replace(config.pipeline.model.field, layers=2, hidden=16)
    config.pipeline.model.stratified = stratified
    config.compile = compile
    config.optimizers = {"fields": {"optimizer": OPTIMIZERS[optimizer_name](), "scheduler": None}}
    config.set_timestamp()
    trainer = config.setup()
    trainer.setup()
    return trainer


def loss_of(model: torch.nn.Module, ray_bundle, batch) -> torch.Tensor:
    outputs = model(ray_bundle)
    loss_dict = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    return functools.reduce(torch.add, loss_dict.values())


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_trainer_step_equals_direct_optimizer_step(llff_scene, tmp_path: Path, optimizer_name: str) -> None:
    torch.manual_seed(0)
    trainer = tiny_trainer(llff_scene.root, tmp_path, optimizer_name)
    model = trainer.pipeline.model
    reference_model = copy.deepcopy(model)
    initial = [param.detach().clone() for param in model.parameters()]
    reference_optimizer = OPTIMIZERS[optimizer_name]().setup(reference_model.get_param_groups()["fields"])

    fetched = []
    next_train = trainer.pipeline.datamanager.next_train

    def recording_next_train(step: int):
        ray_bundle, batch = next_train(step)
        fetched.append((copy.deepcopy(ray_bundle), copy.deepcopy(batch), torch.get_rng_state()))
        return ray_bundle, batch

    trainer.pipeline.datamanager.next_train = recording_next_train
    for step in range(2):
        trainer.train_iteration(step)
        ray_bundle, batch, rng_state = fetched[step]
        torch.set_rng_state(rng_state)  # the same Rademacher vectors for ESGD
        reference_optimizer.step(make_closure(reference_optimizer, lambda: loss_of(reference_model, ray_bundle, batch)))
        for trained, reference in zip(model.parameters(), reference_model.parameters()):
            torch.testing.assert_close(trained, reference)
    assert len(fetched) == 2  # one batch per step, however often L-BFGS evaluated the closure
    assert any(not torch.equal(param, start) for param, start in zip(model.parameters(), initial))


@pytest.mark.slow
def test_closure_replays_the_same_stratified_samples(llff_scene, tmp_path: Path) -> None:
    """With stratified jitter on, every evaluation of one step's closure sees the same samples: a line search
    evaluates one deterministic function."""
    torch.manual_seed(0)
    trainer = tiny_trainer(llff_scene.root, tmp_path, "lbfgs", stratified=True)
    optimizer = trainer.optimizers.optimizers["fields"]
    closure = trainer._new_closure(0, optimizer)
    first, second = closure(), closure()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    other_step = trainer._new_closure(1, optimizer)()
    assert not torch.equal(first, other_step)


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(llff_scene, tmp_path: Path) -> None:
    """Train 2 steps and save; a trainer loading that checkpoint starts at step 2 with the same parameters and
    L-BFGS history."""
    torch.manual_seed(0)
    trainer = tiny_trainer(llff_scene.root, tmp_path / "first", "lbfgs")
    for step in range(2):
        trainer.train_iteration(step)
    trainer.save_checkpoint(1)
    checkpoints = list(trainer.checkpoint_dir.iterdir())
    assert [path.name for path in checkpoints] == ["step-000000001.ckpt"]  # no temp file left behind

    config = trainer.config
    config.load_dir = trainer.checkpoint_dir
    resumed = config.setup()
    resumed.setup()
    assert resumed._start_step == 2
    for saved, loaded in zip(trainer.pipeline.model.parameters(), resumed.pipeline.model.parameters()):
        torch.testing.assert_close(saved, loaded)
    saved_state = trainer.optimizers.optimizers["fields"].state_dict()
    loaded_state = resumed.optimizers.optimizers["fields"].state_dict()
    torch.testing.assert_close(saved_state["state"][0]["pairs"], loaded_state["state"][0]["pairs"])


def test_mixed_precision_is_refused(llff_scene, tmp_path: Path) -> None:
    config = configure("gauss-esgd", llff_scene.root, tmp_path)
    config.mixed_precision = True
    with pytest.raises(ValueError, match="full precision"):
        config.setup()


@pytest.mark.slow
def test_compiled_field_trains_like_the_eager_one(llff_scene, tmp_path: Path) -> None:
    """--compile on, ESGD with curvature steps 0 and 2: step 1 runs the compiled field (both passes), the curvature
    steps the eager one, and every step matches an eager run's on the same batches and Rademacher draws; the
    checkpoint keys are the eager model's."""
    batches, runs = [], {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        trainer = tiny_trainer(llff_scene.root, tmp_path / mode, "esgd", importance_samples=8, compile=mode)
        model = trainer.pipeline.model
        calls = []
        if mode == "on":
            twin = model.compiled_twin
            assert twin is not None and twin.compile_s > 0
            compiled_forward = twin.compiled
            twin.__dict__["compiled"] = lambda *args, **kwargs: calls.append(1) or compiled_forward(*args, **kwargs)
        next_train = trainer.pipeline.datamanager.next_train

        def replaying_next_train(step: int, mode=mode, next_train=next_train):
            if mode == "off":  # record the eager run's batches (the data loader's draws are not seeded by torch)
                batches.append((*copy.deepcopy(next_train(step)), torch.get_rng_state()))
            ray_bundle, batch, rng_state = batches[step]
            torch.set_rng_state(rng_state)
            return copy.deepcopy(ray_bundle), copy.deepcopy(batch)

        trainer.pipeline.datamanager.next_train = replaying_next_train
        parameters, compiled_calls = [], []
        for step in range(3):
            trainer.train_iteration(step)
            parameters.append([param.detach().clone() for param in model.parameters()])
            compiled_calls.append(len(calls))
        runs[mode] = (parameters, compiled_calls, list(trainer.pipeline.state_dict()))
    assert runs["off"][2] == runs["on"][2]
    assert runs["on"][1] == [0, 2, 2]  # only the non-curvature step ran the compiled graph, once per pass
    for eager_step, compiled_step in zip(runs["off"][0], runs["on"][0]):
        for eager, compiled in zip(eager_step, compiled_step):
            torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "compile", "iterations", "expected"),
    [("gauss-esgd", "auto", 20_000, True), ("gauss-esgd", "auto", 10, False), ("kilonerf-adam", "auto", 20_000, False),
     ("kilonerf-adam", "on", 10, True), ("gauss-adam", "off", 20_000, False)],
)  # fmt: skip
def test_compile_auto_compiles_long_coordinate_mlp_runs(tmp_path: Path, method, compile, iterations, expected) -> None:
    config = configure(method, tmp_path, tmp_path, iterations=iterations)
    config.compile = compile
    assert config.compiles_field() is expected


def test_compile_on_with_an_optimizer_that_cannot_is_refused(tmp_path: Path) -> None:
    config = configure("tinynerf-lbfgs", tmp_path, tmp_path)
    config.optimizers = {"fields": {"optimizer": RegistryOptimizerConfig(name="lm"), "scheduler": None}}
    config.compile = "on"
    with pytest.raises(PreflightError, match="--compile on: the lm optimizer"):
        preflight(config)
    config.compile = "auto"
    assert not config.compiles_field()
