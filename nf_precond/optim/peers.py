"""heavyball's SOAP and PSGD-Kron, adapted to this project's optimizer contract (registry names ``soap``, ``psgd``).

heavyball's classes already take ``step(closure)`` and round-trip ``state_dict``; the adapters add the project's
checks (a positive ``lr``, a finite loss before any parameter moves) and decide where heavyball may use
``torch.compile``. heavyball compiles its update kernels (``mode="max-autotune-no-cudagraphs"``) the first time they
run, once per set of shapes: on a GPU that pays off, on the CPU the inductor autotunes every matmul through a C++
compiler and the first step of a tiny network stalls for far longer than its whole fit takes. So a step over CPU
parameters runs heavyball's eager code (its ``heavyball.utils.compile_mode = None`` switch, set for that step only)
and a step over GPU parameters keeps heavyball's compiled default.

heavyball is an optional dependency (the ``peers`` extra, pinned to the newest release that allows numpy < 2, which
nerfstudio needs); this module is imported only when one of these optimizers is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from nf_precond.checks import require_positive
from nf_precond.optim._common import check_finite_loss

try:
    import heavyball
    import heavyball.utils
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the soap and psgd optimizers need heavyball; install the peers extra: pip install -e '.[peers]'"
    ) from error


@contextmanager
def eager_on_cpu(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Run heavyball without ``torch.compile`` while ``optimizer`` holds any CPU parameter; restore the mode after."""
    on_cpu = any(param.device.type == "cpu" for group in optimizer.param_groups for param in group["params"])
    previous = heavyball.utils.compile_mode
    if on_cpu:
        heavyball.utils.compile_mode = None
    try:
        yield
    finally:
        heavyball.utils.compile_mode = previous


class _HeavyballAdapter:
    """What SOAP and PSGDKron add to heavyball's classes: the checks, eager CPU steps, exact state round trips."""

    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Evaluate ``closure`` here, so a non-finite loss is refused before heavyball touches the parameters, then
        hand heavyball the evaluated loss (it calls its closure once per step: no Hessian-vector products here)."""
        with torch.enable_grad():
            loss = closure()
        check_finite_loss(loss, type(self).__name__)
        with eager_on_cpu(self):  # type: ignore[arg-type]
            super().step(lambda: loss)  # type: ignore[misc]
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` casts every floating-point state tensor to its parameter's dtype, but PSGD keeps
        float64 running bounds and step counters next to float32 weights: put those back at their saved precision so
        a resumed run takes the very steps the uninterrupted one would. heavyball's own load hook pops its entry from
        the dict it is given, so it gets a copy and the caller's dict stays loadable."""
        saved = dict(state_dict)
        super().load_state_dict(dict(saved))  # type: ignore[misc]
        saved_ids = [index for group in saved["param_groups"] for index in group["params"]]
        params = [param for group in self.param_groups for param in group["params"]]  # type: ignore[attr-defined]
        state = self.state  # type: ignore[attr-defined]
        for index, param in zip(saved_ids, params):
            if index in saved["state"]:
                state[param] = _saved_precision(state[param], saved["state"][index])


def _saved_precision(loaded: Any, saved: Any) -> Any:
    """``loaded`` with every tensor whose dtype differs from its counterpart in ``saved`` replaced by a copy of it."""
    if isinstance(loaded, Tensor):
        return loaded if loaded.dtype == saved.dtype else saved.to(device=loaded.device, copy=True)
    if isinstance(loaded, dict):
        return type(loaded)({key: _saved_precision(value, saved[key]) for key, value in loaded.items()})
    if isinstance(loaded, (list, tuple)):
        return type(loaded)(_saved_precision(value, other) for value, other in zip(loaded, saved))
    return loaded


class SOAP(_HeavyballAdapter, heavyball.ForeachSOAP):
    """SOAP (Vyas et al. 2024): Adam run in the eigenbasis of Shampoo's Kronecker-factored preconditioner.

    heavyball's ``ForeachSOAP`` with its arguments; ``step`` returns the loss, refuses a non-finite one, and runs
    eagerly on the CPU (see the module docstring).
    """

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.0, **kwargs: Any) -> None:
        """heavyball's defaults except ``lr`` (a third of heavyball's and the paper's, for sine fields) and no
        weight decay (a field fits its one signal); ``kwargs`` go to ``heavyball.ForeachSOAP``."""
        require_positive("lr", lr)
        require_positive("weight_decay", weight_decay, allow_zero=True)
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)


class PSGDKron(_HeavyballAdapter, heavyball.ForeachPSGDKron):
    """PSGD with Kronecker-factored preconditioners (Li 2018; Kron as in Evan Walters' kron_torch).

    heavyball's ``ForeachPSGDKron`` with its arguments; ``step`` returns the loss, refuses a non-finite one, and runs
    eagerly on the CPU (see the module docstring).
    """

    def __init__(self, params: Any, lr: float = 3e-4, **kwargs: Any) -> None:
        """heavyball's defaults (no weight decay) except ``lr``, kron_torch's default rather than heavyball's
        larger one; ``kwargs`` go to ``heavyball.ForeachPSGDKron``."""
        require_positive("lr", lr)
        super().__init__(params, lr=lr, **kwargs)
