"""Muon on the hidden weight matrices of a coordinate network, AdamW on everything else, as one optimizer.

Muon (Jordan et al. 2024, ``torch.optim.Muon``) replaces a matrix's momentum by its nearest semi-orthogonal matrix
(Newton–Schulz iterations), so every update has a flat singular spectrum. Its authors apply it to the hidden 2-D
weights only and leave the first layer, the last layer and all biases to AdamW; "Optimizing Rank for High-Fidelity
Implicit Neural Representations" (McGinnis et al. 2025) does the same for coordinate networks, with no weight decay
and Adam's usual betas. ``MuonWithAdamW`` does that split for a ``CoordinateMLP`` (or any model whose ``nn.Linear``
layers, in registration order, are the network's layers) and drives both halves from one ``step(closure)``.

Learning rates: ``lr`` is Muon's, and the AdamW group's rate is ``lr * adamw_lr_ratio``, applied at every step. Both
param groups carry the same ``lr``, so a schedule that writes ``group["lr"]`` (the fit loop's cosine annealing, or any
torch LR scheduler) moves the two rates together and keeps their ratio fixed.

Defaults: momentum 0.95 with Nesterov and 5 Newton–Schulz steps are the Muon authors' (and torch's); no weight decay
on either half, as in the INR paper, since a field should fit its one signal exactly. The rate is not the authors'
0.02 for transformers: a SIREN's hidden pre-activations are multiplied by ω0, so an orthogonal update of that size
shifts the phase of every hidden sine by a sizable fraction of a radian per step. ``lr=1e-3`` with the AdamW half at
the same rate (ratio 1) is the starting point a short sweep on a sine field picked; tune both per signal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nf_precond.checks import require_in_unit_interval, require_int_at_least, require_positive
from nf_precond.optim._common import check_finite_loss


def hidden_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the ``nn.Linear`` layers that are neither the first nor the last: the matrices Muon updates."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return [linear.weight for linear in linears[1:-1] if linear.weight.requires_grad]


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on ``hidden_weights(model)``, ``torch.optim.AdamW`` on the other trainable parameters.

    ``param_groups`` is [the Muon matrices, the rest], each marked by ``use_muon``; an empty one is left out (a network
    with one hidden layer has no hidden matrix). The two torch optimizers do the arithmetic; this class owns their
    hyperparameters and state, so ``state_dict``/``load_state_dict`` and lr schedules see one ordinary optimizer.
    ``step`` returns the loss before the step.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
        adamw_lr_ratio: float = 1.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ) -> None:
        """``model``: the network (its ``nn.Linear`` layers decide the split). ``lr``, ``momentum``, ``nesterov``,
        ``ns_steps``, ``weight_decay`` and ``adjust_lr_fn`` are ``torch.optim.Muon``'s. ``adamw_lr_ratio`` is AdamW's
        learning rate as a fraction of ``lr``; ``adamw_betas``, ``adamw_eps`` and ``adamw_weight_decay`` are AdamW's.
        """
        if not isinstance(model, nn.Module):
            raise ValueError("MuonWithAdamW is built from the model (it splits its Linear layers); pass the module")
        require_positive("lr", lr)
        require_in_unit_interval("momentum", momentum)
        require_positive("weight_decay", weight_decay, allow_zero=True)
        require_positive("adamw_lr_ratio", adamw_lr_ratio)
        require_positive("adamw_eps", adamw_eps)
        require_positive("adamw_weight_decay", adamw_weight_decay, allow_zero=True)
        for beta in adamw_betas:
            require_in_unit_interval("adamw_betas", beta)
        require_int_at_least("ns_steps", ns_steps, 1)
        stacked = [tuple(param.shape) for param in model.parameters() if param.ndim > 2]
        if stacked:
            raise ValueError(
                f"Muon orthogonalizes 2-D weight matrices but this model has stacked weights {stacked[0]} (a "
                "BatchedMLP?); train many nets at once with an optimizer that keeps them independent, e.g. adam"
            )
        muon_params = hidden_weights(model)
        muon_ids = {id(param) for param in muon_params}
        adamw_params = [param for param in model.parameters() if param.requires_grad and id(param) not in muon_ids]
        if not muon_params and not adamw_params:
            raise ValueError("MuonWithAdamW got a model with no trainable parameters")
        muon_group = {"params": muon_params, "use_muon": True}
        adamw_group = {
            "params": adamw_params,
            "use_muon": False,
            "adamw_lr_ratio": adamw_lr_ratio,
            "betas": tuple(adamw_betas),
            "eps": adamw_eps,
            "weight_decay": adamw_weight_decay,
        }
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "weight_decay": weight_decay,
            "adjust_lr_fn": adjust_lr_fn,
        }
        # Optimizer refuses empty groups, so build with the non-empty ones and keep the layout fixed: [muon, adamw].
        super().__init__([group for group in (muon_group, adamw_group) if group["params"]], defaults)
        # The two torch optimizers validate their own arguments here; an empty half gets a placeholder it never steps.
        self._muon = torch.optim.Muon(
            muon_params or [torch.zeros(1, 1, requires_grad=True)],
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
            adjust_lr_fn=adjust_lr_fn,
        )
        self._adamw = torch.optim.AdamW(
            adamw_params or [torch.zeros(1, requires_grad=True)],
            lr=lr * adamw_lr_ratio, betas=tuple(adamw_betas), eps=adamw_eps, weight_decay=adamw_weight_decay,
        )

    def _sync(self) -> None:
        """Hand this optimizer's hyperparameters and state to the two torch optimizers before they step.

        The state dict is shared, not copied (the parameter sets are disjoint); it is re-linked every step because
        ``load_state_dict`` replaces ``self.state`` with a new dict.
        """
        for group in self.param_groups:
            if group["use_muon"]:
                inner = self._muon.param_groups[0]
                for key in ("lr", "momentum", "nesterov", "ns_steps", "weight_decay", "adjust_lr_fn"):
                    inner[key] = group[key]
                self._muon.state = self.state
            else:
                inner = self._adamw.param_groups[0]
                inner["lr"] = group["lr"] * group["adamw_lr_ratio"]
                for key in ("betas", "eps", "weight_decay"):
                    inner[key] = group[key]
                self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Evaluate ``closure`` (gradients included), then one Muon step and one AdamW step; returns the loss."""
        with torch.enable_grad():
            loss = closure()
        check_finite_loss(loss, "MuonWithAdamW")
        self._sync()
        for group in self.param_groups:
            (self._muon if group["use_muon"] else self._adamw).step()
        return loss

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_muon": self._muon, "_adamw": self._adamw}
