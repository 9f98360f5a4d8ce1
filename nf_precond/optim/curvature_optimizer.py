"""``CurvatureOptimizer``: the machinery ESGD, ESGD-max and AdaHessian share.

The curvature schedule (every step while t < warmup, then every ``update_every`` steps) that drives
``needs_graph``, one Rademacher Hessian-vector product per curvature step, and the momentum update
``θ ← θ(1 − lr·wd) − lr · m̂ / (D + eps)``. Subclasses only say what statistic of ``(v, Hv)`` to accumulate and how
to turn it into the diagonal preconditioner ``D``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from nf_precond.checks import require_in_unit_interval, require_int_at_least, require_positive
from nf_precond.curvature import hvp, rademacher_like
from nf_precond.optim._common import check_finite_loss


class CurvatureOptimizer(torch.optim.Optimizer):
    """Adam-style momentum over a diagonal preconditioner estimated from Hessian-vector products on a schedule.

    ``defaults`` must hold lr, betas, eps, weight_decay, warmup and update_every. Each parameter group carries the
    schedule's counters, which round-trip through ``state_dict``: ``step`` (steps taken, t), ``curvature_updates``
    (curvature estimates taken) and ``estimate_pending`` (a parameter is waiting for its first estimate). Per-parameter
    state: ``exp_avg`` (the gradient EMA m), the subclass's statistic, and the parameter's own ``step`` and
    ``curvature_updates`` (they differ from the group's when the parameter got its first gradient late), which the
    bias corrections use.

    A parameter whose first gradient arrives on a step without a curvature estimate has no statistic yet (it would be
    zero, a step of lr·m̂/eps): it only accumulates momentum, and the next step estimates curvature for its group.
    """

    optimizer_name: ClassVar[str]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        lr, (beta1, beta2) = defaults["lr"], defaults["betas"]
        require_positive("lr", lr)
        require_in_unit_interval("betas[0]", beta1)
        require_in_unit_interval("betas[1]", beta2)
        require_positive("eps", defaults["eps"])
        require_positive("weight_decay", defaults["weight_decay"], allow_zero=True)
        # warmup >= 1: step 0 must estimate curvature, or its preconditioner would be zero (a step of lr/eps).
        require_int_at_least("warmup", defaults["warmup"], 1)
        require_int_at_least("update_every", defaults["update_every"], 1)
        super().__init__(params, {**defaults, "step": 0, "curvature_updates": 0, "estimate_pending": False})

    def _is_curvature_step(self, group: dict[str, Any]) -> bool:
        """Whether the group's next step (number t = ``group["step"]``, from 0) estimates curvature: t < warmup,
        then every ``update_every`` steps counted from the last warm-up estimate (t = warmup − 1), and whenever a
        parameter still waits for its first estimate."""
        t, warmup = group["step"], group["warmup"]
        return group["estimate_pending"] or t < warmup or (t - warmup + 1) % group["update_every"] == 0

    def _init_curvature(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """The curvature state of a new parameter."""
        raise NotImplementedError

    def _accumulate(self, state: dict[str, Any], v: torch.Tensor, hv: torch.Tensor, group: dict[str, Any]) -> None:
        """Fold one Rademacher sample ``(v, Hv)`` into the parameter's curvature state (in place)."""
        raise NotImplementedError

    def _preconditioner(self, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        """The diagonal preconditioner D (a new tensor; ``eps`` is added by the caller). The parameter's counters
        already include the current step and, on a curvature step, the current estimate."""
        raise NotImplementedError

    @property
    def needs_graph(self) -> bool:
        """True exactly when the next ``step`` estimates curvature (the closure must use ``create_graph=True``)."""
        return any(self._is_curvature_step(group) for group in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One step; ``closure`` (from ``nf_precond.optim.make_closure``) is required and called exactly once."""
        if closure is None:
            raise ValueError(
                f"{self.optimizer_name}.step needs a closure that back-propagates with create_graph on curvature "
                "steps; build it with nf_precond.optim.make_closure(optimizer, compute_loss)"
            )
        curvature_flags = [self._is_curvature_step(group) for group in self.param_groups]
        with torch.enable_grad():
            loss = closure()
        check_finite_loss(loss, self.optimizer_name)

        samples = self._sample_curvature(curvature_flags)
        for group, is_curvature_step in zip(self.param_groups, curvature_flags):
            group["step"] += 1
            group["curvature_updates"] += int(is_curvature_step)
            group["estimate_pending"] = False
            lr, beta1 = group["lr"], group["betas"][0]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"], state["curvature_updates"] = 0, 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state.update(self._init_curvature(param))
                state["step"] += 1
                if id(param) in samples:
                    self._accumulate(state, *samples[id(param)], group)
                    state["curvature_updates"] += 1
                state["exp_avg"].lerp_(param.grad, 1.0 - beta1)
                if state["curvature_updates"] == 0:
                    group["estimate_pending"] = True
                    continue
                denominator = self._preconditioner(state, group).add_(group["eps"])
                if group["weight_decay"]:
                    param.mul_(1.0 - lr * group["weight_decay"])
                param.addcdiv_(state["exp_avg"], denominator, value=-lr / (1.0 - beta1 ** state["step"]))
        return loss

    def _sample_curvature(self, curvature_flags: list[bool]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``(v, Hv)`` per parameter (keyed by ``id``) of the groups on a curvature step; then every gradient is
        detached, so the double-backward graph is freed now rather than at the next ``zero_grad``."""
        params = [
            param
            for group, is_curvature_step in zip(self.param_groups, curvature_flags)
            if is_curvature_step
            for param in group["params"]
            if param.grad is not None
        ]
        samples = {}
        if params:
            vectors = rademacher_like(params)
            products = hvp([param.grad for param in params], params, vectors)
            samples = {id(param): (v, hv) for param, v, hv in zip(params, vectors, products)}
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.grad.requires_grad:
                    param.grad = param.grad.detach()
        return samples


__all__ = ["CurvatureOptimizer"]
