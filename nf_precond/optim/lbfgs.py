"""Full-batch L-BFGS with a strong-Wolfe line search for one coordinate network (paper 1).

``LBFGS`` is ``BatchedLBFGS`` with a single net (see ``batched_lbfgs.py`` for why one core serves both): it follows
torch.optim.LBFGS's algorithm, but one ``step`` is ``max_iter`` (default 1) iterations that resume where the last
step stopped, reusing its loss and gradient instead of re-evaluating them, so the fit loop can log every iteration
without stalling. Call ``reset()`` when the training data change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from nf_precond.optim.batched_lbfgs import BatchedLBFGS


class LBFGS(BatchedLBFGS):
    """L-BFGS for one network: parameters of any shape, a scalar loss; ``step`` returns the loss before the step.

    ``closure_evals`` counts closure calls since construction. Memory: ``2 * history_size + 4`` copies of the
    parameters (about 10 MB for a 4x64 SIREN with the default history of 100, torch.optim.LBFGS's default).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        history_size: int = 100,
        max_iter: int = 1,
        line_search: str | None = "strong_wolfe",
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        max_eval: int | None = None,
    ) -> None:
        """See ``BatchedLBFGS`` for the arguments (here ``num_nets`` is 1)."""
        super().__init__(
            params,
            num_nets=1,
            lr=lr,
            history_size=history_size,
            max_iter=max_iter,
            line_search=line_search,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            max_eval=max_eval,
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Run ``max_iter`` L-BFGS iterations; returns the (scalar) loss at the start of the step."""
        return super().step(closure).reshape(())
