"""A nerfstudio Trainer that drives closure-based optimizers (L-BFGS, ESGD, ...) and every other torch optimizer.

nerfstudio's `Trainer.train_iteration` draws a batch, calls `backward()` once and steps through a grad scaler: no
closure, no `create_graph`. Here one training step is:

1. fetch ONE ray batch from the datamanager (reused for `steps_per_batch` steps);
2. build the closure with `nf_precond.optim.make_closure`: it evaluates the model on that batch and back-propagates
   with `create_graph` exactly on the optimizer's curvature steps; every call within a step replays the same random
   draws (stratified sample jitter), so L-BFGS's line search sees one deterministic function of the parameters;
3. `optimizer.step(closure)` (L-BFGS calls it as often as its line search needs; first-order optimizers once), then
   the schedulers.

No grad scaler and no autocast: Hessian-vector products need full precision. Checkpoints (written atomically),
resume, eval, the viewer, `ns-eval`, `ns-render` and `ns-viewer` are nerfstudio's own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Literal, Tuple, Type

import numpy as np
import torch

from nerfstudio.engine.trainer import Trainer, TrainerConfig

from nerfstudio_plugin.dataparsers import DatasetLayoutError
from nf_precond.atomic import atomic_path
from nf_precond.optim import make_closure


@dataclass
class ClosureTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig for `ClosureTrainer`."""

    _target: Type = field(default_factory=lambda: ClosureTrainer)
    steps_per_batch: int = 1
    """Consecutive training steps that reuse one ray batch (and one closure). Above 1, L-BFGS's curvature pairs and
    its cached start point stay consistent within a batch instead of mixing gradients of different batches."""


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
        """nerfstudio's setup; a dataset folder that cannot be used ends ns-train with its one-line message, before
        any training and without a traceback."""
        try:
            super().setup(test_mode)
        except DatasetLayoutError as error:
            raise SystemExit(f"error: {error}") from None

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


__all__ = ["ClosureTrainer", "ClosureTrainerConfig", "single_optimizer", "without_numpy_scalars"]
