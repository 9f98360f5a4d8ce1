"""A nerfstudio Trainer that drives closure-based optimizers (L-BFGS, ESGD, ...) and every other torch optimizer.

nerfstudio's `Trainer.train_iteration` draws a batch, calls `backward()` once and steps through a grad scaler: no
closure, no `create_graph`. Here one training step is:

1. fetch ONE ray batch from the datamanager (reused for `steps_per_batch` steps);
2. build the closure with `nf_precond.optim.make_closure`: it evaluates the model on that batch and back-propagates
   with `create_graph` exactly on the optimizer's curvature steps; every call within a step replays the same random
   draws (stratified sample jitter), so L-BFGS's line search sees one deterministic function of the parameters;
3. `optimizer.step(closure)` (L-BFGS calls it as often as its line search needs; first-order optimizers once), then
   the schedulers.

`--compile auto|on|off` runs the field through torch.compile (`ClosureTrainerConfig.compile`), compiled in
`setup` before the first step; curvature steps run the eager field.

No grad scaler and no autocast: Hessian-vector products need full precision. Checkpoints (written atomically),
resume, eval, the viewer, `ns-eval`, `ns-render` and `ns-viewer` are nerfstudio's own.

Bad input ends `ns-train` with one line `ns-train: error: ...` and a non-zero exit, before the run folder exists:
ns-train writes config.yml (`save_config`) before it builds the trainer, so `ClosureTrainerConfig.save_config` first
parses the dataset and checks the viewer ports (`preflight`). A setup that still fails removes the run folder it
created, as long as that folder holds nothing but config.yml and dataparser_transforms.json.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Literal, Tuple, Type

import numpy as np
import torch

from nerfstudio.engine.trainer import Trainer, TrainerConfig

from nerfstudio_plugin.dataparsers import DatasetLayoutError
from nf_precond.atomic import atomic_path
from nf_precond.nn import AUTO_MIN_POINT_STEPS
from nf_precond.optim import OPTIMIZERS, make_closure, needs_graph


RUN_FOLDER_SCAFFOLD = frozenset({"config.yml", "dataparser_transforms.json"})
"""What ns-train writes into a run folder before training; a folder holding only these (and empty folders) after a
failed setup is removed."""


class PreflightError(ValueError):
    """A setting ns-train cannot run with, found before the run folder is created; the message names the fix."""


def preflight(config: ClosureTrainerConfig) -> None:
    """Check what would otherwise fail after ns-train created the run folder: the viewer ports, and the dataset
    (parsed once with the configured dataparser: a `DatasetLayoutError` names the folder and the fix)."""
    if config.is_viewer_enabled() or config.is_viewer_legacy_enabled():
        for flag, port in (("websocket-port", config.viewer.websocket_port),
                           ("websocket-port-default", config.viewer.websocket_port_default)):  # fmt: skip
            if port is not None and not 1 <= port <= 65535:
                raise PreflightError(
                    f"--viewer.{flag} {port} is not a TCP port; pass one in 1-65535 (or leave --viewer.websocket-port "
                    "unset to use a free one)"
                )
    if config.compile == "on" and not config.optimizer_compiles():
        raise PreflightError(
            f"--compile on: the {config.optimizer_name()} optimizer hooks or differentiates the field in ways "
            "compiled graphs do not support; use --compile auto or off"
        )
    datamanager = config.pipeline.datamanager
    parser_config = copy.deepcopy(datamanager.dataparser)
    if getattr(datamanager, "data", None) is not None:
        parser_config.data = Path(datamanager.data)  # what the datamanager does with --data
    parser_config.setup().get_dataparser_outputs(split="train")


def remove_unused_run_folder(run_folder: Path, output_dir: Path) -> None:
    """Delete `run_folder` if it holds only `RUN_FOLDER_SCAFFOLD` files and empty folders, then its parents up to
    (not including) `output_dir` while they are empty; anything else in it keeps the folder."""
    if not run_folder.is_dir():
        return
    entries = list(run_folder.rglob("*"))
    files = [entry for entry in entries if not entry.is_dir()]
    if any(entry.parent != run_folder or entry.name not in RUN_FOLDER_SCAFFOLD for entry in files):
        return
    for entry in files:
        entry.unlink()
    for folder in sorted((entry for entry in entries if entry.is_dir()), key=lambda path: -len(path.parts)):
        folder.rmdir()  # deepest first
    run_folder.rmdir()
    folder, output_dir = run_folder.resolve().parent, output_dir.resolve()
    while output_dir in folder.parents and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


@dataclass
class ClosureTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig for `ClosureTrainer`."""

    _target: Type = field(default_factory=lambda: ClosureTrainer)
    steps_per_batch: int = 1
    """Consecutive training steps that reuse one ray batch (and one closure). Above 1, L-BFGS's curvature pairs and
    its cached start point stay consistent within a batch instead of mixing gradients of different batches."""

    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the field (curvature steps run it eager: they need double backward). auto: a coordinate-MLP
    field (not the KiloNeRF grid, whose per-cell padding changes shape every batch), an optimizer that allows it, and
    a run long enough to repay the compile time; on; off. Compiled in setup, before the first step; a compile failure
    trains the eager field, with one warning line."""

    def optimizer_name(self) -> str | None:
        """The registered optimizer of the "fields" group (None: a stock nerfstudio optimizer config)."""
        return getattr(self.optimizers.get("fields", {}).get("optimizer"), "name", None)

    def optimizer_compiles(self) -> bool:
        """Whether the optimizer can train a compiled field (`OptimizerSpec.compiles`; stock optimizers can)."""
        name = self.optimizer_name()
        return name not in OPTIMIZERS or OPTIMIZERS[name].compiles

    def compiles_field(self) -> bool:
        """Whether `compile` asks for a compiled field in this run."""
        if self.compile == "off" or not self.optimizer_compiles():
            return False
        if self.compile == "on":
            return True
        model = self.pipeline.model
        samples = model.num_samples + model.num_importance_samples
        points = self.max_num_iterations * self.pipeline.datamanager.train_num_rays_per_batch * samples
        return model.grid == "mlp" and points >= AUTO_MIN_POINT_STEPS

    def save_config(self) -> None:
        """Run `preflight`, then write config.yml into a new run folder (ns-train calls this first of all); bad input
        ends the program with one line before anything is written."""
        try:
            preflight(self)
            super().save_config()
        except (DatasetLayoutError, PreflightError) as error:
            raise SystemExit(f"ns-train: error: {error}") from None
        except OSError as error:
            raise SystemExit(
                f"ns-train: error: cannot write the run folder {self.get_base_dir()} ({error.strerror or error}); "
                "pass a writable --output-dir"
            ) from None


def without_numpy_scalars(value: Any) -> Any:
    """`value` with numpy scalars (nested in dicts, lists, tuples) turned into Python numbers.

    nerfstudio's exponential-decay scheduler computes learning rates with numpy, so they land in the optimizer and
    scheduler state dicts as numpy.float64; torch >= 2.6 loads checkpoints with weights_only=True and refuses those,
    which breaks resume, ns-eval, ns-render and ns-viewer."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: without_numpy_scalars(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_numpy_scalars(item) for item in value)
    return value


def single_optimizer(optimizers: Dict[str, torch.optim.Optimizer]) -> Tuple[str, torch.optim.Optimizer]:
    """The one (parameter group name, optimizer) of a model; a closure evaluates the whole loss, so it cannot be
    shared between several optimizers stepping in turn."""
    if len(optimizers) != 1:
        raise ValueError(
            f"ClosureTrainer needs exactly one parameter group, got {sorted(optimizers)}; put every trained parameter "
            "in one group (our models use 'fields')"
        )
    return next(iter(optimizers.items()))


class ClosureTrainer(Trainer):
    """`Trainer` whose `train_iteration` is `optimizer.step(closure)` on one ray batch (see the module docstring)."""

    config: ClosureTrainerConfig

    def __init__(self, config: ClosureTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        if config.mixed_precision or config.use_grad_scaler:
            raise ValueError(
                "ClosureTrainer trains in full precision (Hessian-vector products and line searches need it); "
                "set --mixed-precision False --use-grad-scaler False"
            )
        if config.steps_per_batch < 1:
            raise ValueError(f"steps_per_batch must be >= 1, got {config.steps_per_batch}")
        if any(steps != 1 for steps in config.gradient_accumulation_steps.values()):
            raise ValueError("ClosureTrainer does not accumulate gradients; leave gradient_accumulation_steps empty")
        super().__init__(config, local_rank, world_size)
        self._closure: Callable[[], torch.Tensor] | None = None
        self._closure_outputs: Dict[str, Any] = {}
        self._batch_age = 0
        # Seeds for the closure's random draws come from a private generator, so the global stream (batches,
        # Rademacher vectors) is the same as without the replay.
        self._seed_generator = torch.Generator().manual_seed(config.machine.seed)

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        """nerfstudio's setup; if it fails, the run folder goes too (when nothing but config.yml is in it), and a
        dataset folder that cannot be used ends ns-train with its one-line message, without a traceback."""
        try:
            super().setup(test_mode)
        except BaseException as error:
            remove_unused_run_folder(self.base_dir, Path(self.config.output_dir))
            if isinstance(error, DatasetLayoutError):
                raise SystemExit(f"ns-train: error: {error}") from None
            raise
        if self.config.compiles_field():
            _, optimizer = single_optimizer(self.optimizers.optimizers)
            self.pipeline._model.compile_field(self.config.pipeline.datamanager.train_num_rays_per_batch,
                                               eager_when=lambda: needs_graph(optimizer))  # fmt: skip

    def _new_closure(self, step: int, optimizer: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
        """Fetch a ray batch and return the closure that evaluates the model on it."""
        ray_bundle, batch = self.pipeline.datamanager.next_train(step)
        model = self.pipeline._model
        seed = int(torch.randint(0, 2**62, (), generator=self._seed_generator))
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        outputs = self._closure_outputs

        def compute_loss() -> torch.Tensor:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                model_outputs = model(ray_bundle)
            metrics_dict = model.get_metrics_dict(model_outputs, batch)
            loss_dict = model.get_loss_dict(model_outputs, batch, metrics_dict)
            outputs["loss_dict"] = {name: value.detach() for name, value in loss_dict.items()}
            outputs["metrics_dict"] = metrics_dict
            return functools.reduce(torch.add, loss_dict.values())

        return make_closure(optimizer, compute_loss)

    def train_iteration(self, step: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """One optimizer step on the current ray batch. Returns the loss at the start of the step (what `step`
        returns) and the loss/metrics dicts of the last closure evaluation."""
        _, optimizer = single_optimizer(self.optimizers.optimizers)
        if self._closure is None or self._batch_age >= self.config.steps_per_batch:
            self._closure, self._batch_age = self._new_closure(step, optimizer), 0
        self._batch_age += 1
        loss = optimizer.step(self._closure)
        self.optimizers.scheduler_step_all(step)
        return loss.detach(), self._closure_outputs["loss_dict"], self._closure_outputs["metrics_dict"]

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, loadable with weights_only=True, written to a temp file and moved into place
        (a crash never leaves half a file)."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = without_numpy_scalars({
            "step": step,
            "pipeline": self.pipeline.module.state_dict() if hasattr(self.pipeline, "module") else self.pipeline.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        })
        # The temp file lives beside the folder: nerfstudio's resume parses every file name inside it as a step.
        with atomic_path(path, temp_dir=self.checkpoint_dir.parent) as temporary:
            torch.save(state, temporary)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()


__all__ = [
    "ClosureTrainer",
    "ClosureTrainerConfig",
    "PreflightError",
    "preflight",
    "remove_unused_run_folder",
    "single_optimizer",
    "without_numpy_scalars",
]
