"""K-FAC (Martens & Grosse, 2015) for the ``torch.nn.Linear`` layers of a model, as summarized in paper 2's
supplementary (Sec. 2.1): each layer's block of the Fisher is approximated by the Kronecker product

    F_layer ≈ A ⊗ G,   A = E[ã ãᵀ]  (layer inputs with a 1 appended for the bias),
                       G = E[g gᵀ]  (g = batch size x d loss / d layer output),

and the layer steps along the damped natural gradient ``(G + d_G I)^{-1} ∇W̃ (A + d_A I)^{-1}``, where ``∇W̃`` is the
weight gradient with the bias gradient appended as a last column. Choices this module makes:

- Fisher: the *empirical* one, from the gradients of the loss the closure back-propagates (paper 2 says as much,
  and it is what a closure-driven optimizer can see). ``g`` scales the per-row output gradient by the number of rows,
  which assumes the loss is a mean over rows (every leading dimension of the layer input counts as rows). On
  one-output least squares ``G`` is then ``4 · loss`` and the step is Newton's scaled by ``lr / (2 · loss)``.
- Factors: exponential moving averages, ``X <- decay X + (1 - decay) X_batch`` with ``decay = min(factor_decay,
  1 - 1/k)`` on the k-th update, so the first update is the batch statistic itself (no zero bias). Updated on every
  step, from the forward/backward passes the closure makes inside ``step``; passes outside ``step`` are ignored.
- Damping: simple factored Tikhonov, ``d_A = d_G = sqrt(damping)``, so ``(A + d_A I) ⊗ (G + d_G I)`` approximates
  ``A ⊗ G + damping I`` (paper 1's ``F + γI``); this is what the reference code paper 2 used does by default
  (EKFAC-pytorch, ``pi=False``). The π-corrected split (Martens & Grosse, Sec. 6.3) makes the damping relative to
  the factors' scales, and with the empirical Fisher that is harmful: ``G`` shrinks with the loss, so only an absolute
  floor on it keeps the step from growing like 1/loss near a minimum; the π-corrected split stalled short of the
  least-squares optimum that this version reaches (numbers: ``benchmarks/README.md``, "Measurements behind the
  defaults").
- Step-size cap ("KL clipping", Ba, Grosse & Martens 2017, as in ACKTR): the whole step is scaled by
  ``min(1, sqrt(kl_clip / (lr² Σ ∇ᵀ F̂⁻¹ ∇)))``. Not in paper 2's summary. Without it, paper 2's lr 0.1 and
  damping 0.01 diverged on a small full-batch photo fit, sine and Gaussian fields alike (numbers: same section).
  ``kl_clip=inf`` turns it off.
- Inverses: by eigendecomposition (eigenvalues clamped at 0, then damped), recomputed on the first step and every
  ``update_every`` steps (paper 2: 100).
- Parameters outside Linear layers (and Linear layers whose weight is frozen) get plain SGD with the same momentum.
  Weight decay is L2 on the gradient; momentum is heavy-ball on the preconditioned direction.

The optimizer registers one forward hook per Linear layer; ``remove_hooks()`` (or leaving a ``with KFAC(...)`` block,
or the optimizer being garbage collected) removes them. The hooks keep only a weak reference to the optimizer and
record nothing outside ``step``, so they hold no memory between steps.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nf_precond.checks import require_in_unit_interval, require_positive
from nf_precond.optim._common import check_finite_loss


def with_bias_column(inputs: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """Layer inputs as ``[rows, in (+1)]``: leading dimensions flattened, a column of ones appended for the bias."""
    rows = inputs.reshape(-1, inputs.shape[-1])
    if not has_bias:
        return rows
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


def damped_inverse(matrix: torch.Tensor, damping: float) -> torch.Tensor:
    """``(matrix + damping I)^{-1}`` of a symmetric PSD matrix, eigenvalues clamped at 0 against rounding."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors / (eigenvalues.clamp(min=0) + damping)) @ eigenvectors.mT


def kl_clip_scale(steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lr: float, kl_clip: float) -> float:
    """``min(1, sqrt(kl_clip / (lr² Σ gradᵀ direction)))`` over ``(param, grad, direction)`` triples: the factor
    that caps the step's squared norm in the (approximate) Fisher metric at ``kl_clip`` (Ba et al., 2017)."""
    if math.isinf(kl_clip) or not steps:
        return 1.0
    fisher_norm = lr**2 * float(sum(torch.sum(grad * direction) for _, grad, direction in steps))  # one host sync
    if not fisher_norm > kl_clip:  # also catches a NaN norm: leave the step alone
        return 1.0
    return math.sqrt(kl_clip / fisher_norm)


@dataclass
class _BatchStatistics:
    """Sums over the rows one layer saw during the current closure (one entry per layer; reset every step)."""

    input_sum: torch.Tensor
    output_grad_sum: torch.Tensor
    rows: int

    def add(self, input_sum: torch.Tensor, output_grad_sum: torch.Tensor, rows: int) -> None:
        self.input_sum += input_sum
        self.output_grad_sum += output_grad_sum
        self.rows += rows


class KFAC(torch.optim.Optimizer):
    """K-FAC natural-gradient steps for a model's Linear layers, SGD for its other parameters (module docs).

    Args:
        model: the network; its Linear layers are hooked and all its trainable parameters are optimized.
        lr: step size η (paper 2: 0.1).
        damping: Tikhonov damping γ of ``F + γI`` (paper 2: 0.01); each factor gets ``sqrt(damping)``.
        update_every: recompute the damped inverses every this many steps, and on the first (paper 2: 100).
        factor_decay: EMA decay of the Kronecker factors, in [0, 1); 0 keeps only the latest batch.
        momentum: heavy-ball coefficient on the preconditioned direction, in [0, 1).
        weight_decay: L2 coefficient added to the gradients.
        kl_clip: cap on the step's squared Fisher norm ``lr² ∇ᵀF̂⁻¹∇`` (``math.inf``: no cap).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        damping: float = 0.01,
        update_every: int = 100,
        factor_decay: float = 0.95,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        kl_clip: float = 1e-3,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"KFAC takes the model (an nn.Module) so it can hook its Linear layers, got {type(model).__name__}; "
                "build it as KFAC(model) or build_optimizer('kfac', model)"
            )
        require_positive("lr", lr)
        require_positive("damping", damping)
        if not (isinstance(update_every, int) and update_every >= 1):
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
        require_in_unit_interval("factor_decay", factor_decay)
        require_in_unit_interval("momentum", momentum)
        require_positive("weight_decay", weight_decay, allow_zero=True)
        require_positive("kl_clip", kl_clip)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("KFAC got a model with no trainable parameters")
        defaults = dict(
            lr=lr,
            damping=damping,
            update_every=update_every,
            factor_decay=factor_decay,
            momentum=momentum,
            weight_decay=weight_decay,
            kl_clip=kl_clip,
        )
        super().__init__(params, defaults)

        self._layers: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad:
                if any(module.weight is weight for weight, _ in self._layers.values()):
                    raise ValueError("KFAC does not support a weight shared by several Linear layers")
                bias = module.bias if module.bias is not None and module.bias.requires_grad else None
                self._layers[module] = (module.weight, bias)
        self._layer_param_ids = {id(p) for pair in self._layers.values() for p in pair if p is not None}
        self._batch: dict[nn.Linear, _BatchStatistics] = {}
        self._recording = False

        optimizer_ref = weakref.ref(self)

        def forward_hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            optimizer = optimizer_ref()
            if optimizer is not None:
                optimizer._on_forward(module, inputs[0], output)

        self._handles: list[RemovableHandle] = [module.register_forward_hook(forward_hook) for module in self._layers]
        self._finalizer = weakref.finalize(self, _remove_handles, self._handles)

    # Hooks -----------------------------------------------------------------------------------------------------

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model; ``step`` refuses to run afterwards."""
        self._finalizer()

    @property
    def hooks_removed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> KFAC:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove_hooks()

    def _on_forward(self, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> None:
        if not (self._recording and isinstance(output, torch.Tensor) and output.requires_grad):
            return
        inputs = inputs.detach()  # the same storage autograd keeps for the weight gradient: no extra memory
        output.register_hook(lambda grad: self._on_output_grad(module, inputs, grad))

    def _on_output_grad(self, module: nn.Module, inputs: torch.Tensor, grad: torch.Tensor) -> None:
        if not self._recording:
            return
        rows = with_bias_column(inputs, self._layers[module][1] is not None)
        grads = grad.detach().reshape(-1, grad.shape[-1]) * rows.shape[0]
        input_sum, output_grad_sum = rows.mT @ rows, grads.mT @ grads
        if module in self._batch:
            self._batch[module].add(input_sum, output_grad_sum, rows.shape[0])
        else:
            self._batch[module] = _BatchStatistics(input_sum, output_grad_sum, rows.shape[0])

    # Step ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Evaluate ``closure`` (it back-propagates, see ``make_closure``) while recording the Kronecker factors'
        batch statistics, then take one K-FAC step."""
        if closure is None:
            raise ValueError("KFAC.step needs a closure; build one with nf_precond.optim.make_closure")
        if self.hooks_removed:
            raise ValueError("KFAC.step after remove_hooks(): the optimizer no longer sees the model; build a new one")
        self._batch = {}
        self._recording = True
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self._recording = False
        batch, self._batch = self._batch, {}
        check_finite_loss(loss, "KFAC")

        group = self.param_groups[0]
        steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for module, (weight, bias) in self._layers.items():
            if weight.grad is not None:
                steps.extend(self._layer_directions(module, weight, bias, batch.get(module), group))
        for param in group["params"]:
            if id(param) not in self._layer_param_ids and param.grad is not None:
                grad = self._regularized_grad(param, group)
                steps.append((param, grad, grad))
        scale = kl_clip_scale(steps, group["lr"], group["kl_clip"])
        for param, _, direction in steps:
            self._apply(param, direction if scale == 1.0 else direction * scale, group)
        return loss

    def _layer_directions(
        self,
        module: nn.Linear,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        batch: _BatchStatistics | None,
        group: dict[str, Any],
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        state = self.state[weight]
        if batch is None:
            if "input_inverse" not in state:
                raise ValueError(
                    f"KFAC saw a gradient but no forward/backward inside the closure for {module}; call the model "
                    "inside the closure passed to step (and do not wrap it in torch.no_grad)"
                )
        else:
            self._update_factors(state, batch, group["factor_decay"])
            if state["step"] == 1 or state["step"] % group["update_every"] == 0:
                # Simple factored Tikhonov, not π-corrected: the module docs say why.
                factor_damping = math.sqrt(group["damping"])
                state["input_inverse"] = damped_inverse(state["input_factor"], factor_damping)
                state["output_grad_inverse"] = damped_inverse(state["output_grad_factor"], factor_damping)
        grad = self._regularized_grad(weight, group)
        if bias is not None:
            grad = torch.cat([grad, self._regularized_grad(bias, group).unsqueeze(1)], dim=1)
        direction = state["output_grad_inverse"] @ grad @ state["input_inverse"]
        if bias is None:
            return [(weight, grad, direction)]
        return [(weight, grad[:, :-1], direction[:, :-1]), (bias, grad[:, -1], direction[:, -1])]

    def _update_factors(self, state: dict[str, Any], batch: _BatchStatistics, factor_decay: float) -> None:
        state["step"] = state.get("step", 0) + 1
        decay = min(factor_decay, 1.0 - 1.0 / state["step"])
        for key, batch_sum in (("input_factor", batch.input_sum), ("output_grad_factor", batch.output_grad_sum)):
            batch_mean = batch_sum / batch.rows
            if key in state:
                state[key].mul_(decay).add_(batch_mean, alpha=1.0 - decay)
            else:
                state[key] = batch_mean

    @staticmethod
    def _regularized_grad(param: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        if group["weight_decay"] == 0:
            return param.grad
        return param.grad.add(param, alpha=group["weight_decay"])

    def _apply(self, param: torch.Tensor, direction: torch.Tensor, group: dict[str, Any]) -> None:
        if group["momentum"] != 0:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = direction.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
            direction = state["momentum_buffer"]
        param.add_(direction, alpha=-group["lr"])


def _remove_handles(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
