"""ESGD: equilibrated SGD (Dauphin et al. 2015) with Adam-style momentum, as used by paper 2 for neural fields.

Also home of ``CurvatureOptimizer``, the machinery ESGD, ESGD-max and AdaHessian share: the curvature schedule
(every step while t < warmup, then every ``update_every`` steps) that drives ``needs_graph``, one Rademacher
Hessian-vector product per curvature step, and the momentum update ``θ ← θ(1 − lr·wd) − lr · m̂ / (D + eps)``.
Subclasses only say what statistic of ``(v, Hv)`` to accumulate and how to turn it into the diagonal
preconditioner ``D``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from nf_precond.curvature import hvp, rademacher_like
from nf_precond.optim._common import check_finite_loss, require_in_unit_interval, require_positive

BIAS_CORRECTIONS = ("updates", "steps")
POWER_HINT = "0.5: the released code, step m/D^E; 0.25: paper 2 Eq. 6, step m/sqrt(D^E)"


def require_int_at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def require_power(name: str, value: float, hint: str) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r} ({hint})")


class CurvatureOptimizer(torch.optim.Optimizer):
    """Adam-style momentum over a diagonal preconditioner estimated from Hessian-vector products on a schedule.

    ``defaults`` must hold lr, betas, eps, weight_decay, warmup and update_every. Each parameter group carries two
    counters that round-trip through ``state_dict``: ``step`` (steps taken, t) and ``curvature_updates`` (curvature
    estimates taken, k). Per-parameter state: ``exp_avg`` (the gradient EMA m) plus the subclass's statistic.
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
        super().__init__(params, {**defaults, "step": 0, "curvature_updates": 0})

    def _is_curvature_step(self, group: dict[str, Any]) -> bool:
        """Whether the group's next step (number t = ``group["step"]``, from 0) estimates curvature: t < warmup,
        then every ``update_every`` steps counted from the last warm-up estimate (t = warmup − 1)."""
        t, warmup = group["step"], group["warmup"]
        return t < warmup or (t - warmup + 1) % group["update_every"] == 0

    def _init_curvature(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """The curvature state of a new parameter."""
        raise NotImplementedError

    def _accumulate(self, state: dict[str, Any], v: torch.Tensor, hv: torch.Tensor, group: dict[str, Any]) -> None:
        """Fold one Rademacher sample ``(v, Hv)`` into the parameter's curvature state (in place)."""
        raise NotImplementedError

    def _preconditioner(self, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        """The diagonal preconditioner D (a new tensor; ``eps`` is added by the caller). The group's counters
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
            lr, beta1 = group["lr"], group["betas"][0]
            momentum_correction = 1.0 - beta1 ** group["step"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state.update(self._init_curvature(param))
                if id(param) in samples:
                    self._accumulate(state, *samples[id(param)], group)
                state["exp_avg"].lerp_(param.grad, 1.0 - beta1)
                denominator = self._preconditioner(state, group).add_(group["eps"])
                if group["weight_decay"]:
                    param.mul_(1.0 - lr * group["weight_decay"])
                param.addcdiv_(state["exp_avg"], denominator, value=-lr / momentum_correction)
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


class ESGD(CurvatureOptimizer):
    """Equilibrated SGD with momentum: ``θ ← θ − lr · m̂ / (d̂^p + eps)``.

    ``d`` is the EMA of ``(Hv)²`` over Rademacher vectors v, so ``sqrt(d̂) → D^E``, the row norms of the Hessian
    (the equilibration preconditioner); ``m̂`` is the bias-corrected gradient EMA. Curvature is estimated on every
    step while ``t < warmup`` and then once every ``update_every`` steps after the last warm-up estimate (steps
    t = 0..49, 149, 249, ... with the paper's 50/100); other steps reuse ``d``, so they cost what Adam's do.

    Two forms (``preconditioner_power`` p):
    - ``0.5``: step ``m̂ / D^E`` — the paper authors' released code (crowsonkb/esgd lineage).
    - ``0.25``: step ``m̂ / (D^E)^{1/2}`` — paper 2's Eq. 6, ``x ← x − η D^{-1/2} ∇f``, read literally with D = D^E.
    ``bias_correction`` divides ``d`` by ``1 − β₂ⁿ`` with n = the number of curvature estimates k (``"updates"``,
    an unbiased weighted mean of the samples) or all steps t (``"steps"``, the released code: after warm-up this
    shrinks d̂ by (1 − β₂ᵏ)/(1 − β₂ᵗ), a growing lr multiplier: at t = 1000 (k = 59) ~3.3x for p = ½, ~1.8x for
    p = ¼).

    Defaults (p = 0.25, ``"steps"``), by measurement (PSNR in dB, Gaussian σ 0.05 / sine ω0 30):
    - ``benchmarks/results/esgd_variants.md`` (astronaut 128², 4x128, batch 512, 1000 steps, lr 0.15; Adam 1e-4
      reaches 19.12 / 30.01): p = ¼ over t 25.04 / 32.96, p = ¼ over k 23.92 / 28.64, p = ½ over t (released)
      22.51 / 31.40, p = ½ over k 20.77 / 22.83. Amortized step time 1.06-1.14x Adam's.
    - ``/work/shared/findings/esgd-vs-adam.md`` (Gaussian only, 256², 4x256, 1500 steps): p = ¼ over k 24.21,
      p = ¼ over t 23.47, released 15.56, Adam 22.29.
    p = ¼ wins everywhere. The bias correction is mixed (k ahead by 0.7 dB in the finding, t ahead by 1.1 dB
    (Gaussian) and 4.3 dB (sine) here); "steps" is the default because it never fell below Adam. Other defaults
    are paper 2's: lr 0.15, betas (0.9, 0.999), eps 1e-4, warm-up 50, update every 100. Weight decay is
    decoupled: ``θ ← θ(1 − lr·wd)``.

    Differences from the released code, on purpose: plain (not Nesterov) momentum with Adam's bias correction, no
    exponential lr warm-up (both were worse in the finding's runs).
    """

    optimizer_name = "ESGD"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: int = 50,
        update_every: int = 100,
        preconditioner_power: float = 0.25,
        bias_correction: str = "steps",
    ) -> None:
        require_power("preconditioner_power", preconditioner_power, POWER_HINT)
        if bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"bias_correction must be one of {', '.join(BIAS_CORRECTIONS)}, got {bias_correction!r}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup=warmup,
                        update_every=update_every, preconditioner_power=preconditioner_power,
                        bias_correction=bias_correction)  # fmt: skip
        super().__init__(params, defaults)

    def _init_curvature(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"exp_avg_hv_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _accumulate(self, state: dict[str, Any], v: torch.Tensor, hv: torch.Tensor, group: dict[str, Any]) -> None:
        state["exp_avg_hv_sq"].lerp_(hv.square(), 1.0 - group["betas"][1])

    def _preconditioner(self, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        count = group["curvature_updates"] if group["bias_correction"] == "updates" else group["step"]
        correction = 1.0 - group["betas"][1] ** count
        return (state["exp_avg_hv_sq"] / correction).pow_(group["preconditioner_power"])


__all__ = ["BIAS_CORRECTIONS", "ESGD", "CurvatureOptimizer", "require_int_at_least", "require_power"]
