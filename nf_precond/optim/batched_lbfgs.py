"""L-BFGS for N independent networks at once; ``LBFGS`` (``lbfgs.py``) is the same optimizer with N = 1.

KiloImage / KiloNeRF (paper 1) fit thousands of tiny MLPs, each with its own L-BFGS. ``BatchedLBFGS`` runs them all
in lock-step: parameters carry a leading net axis (``nf_precond.nn.BatchedMLP``: weights ``[N, fan_in, fan_out]``,
biases ``[N, 1, fan_out]``), the closure returns N losses, and every net keeps its own curvature history, step size,
line search and convergence state.

Why one core for both optimizers: the batched form keeps every per-net scalar (loss, step, directional derivative,
line-search phase) in an ``[N]`` tensor and runs the strong-Wolfe line search as a masked state machine, so the host
synchronizes once per line-search trial (to ask "is any net still searching?") and never per Wolfe test. That is
also what a single-network L-BFGS on a GPU wants. With N = 1 the core follows torch.optim.LBFGS's algorithm
(minFunc's strong-Wolfe search, the same curvature-pair rule and initial step) to rounding — the tests use it as the
reference twin — at the price of a few dozen small tensor operations per iteration more than torch's Python-scalar
code, which on a CPU shows on tiny problems only; ``benchmarks/lbfgs_vs_torch.py`` measures the two side by side.
The curvature history uses the compact (Gram-matrix) form, two batched products per iteration instead of the
two-loop recursion's 4m vector operations, because a two-loop recursion over per-net histories must gather pair by
pair and was several times slower than torch's (the measurement is in ``benchmarks/README.md``, "Measurements
behind the defaults").

Two things differ from torch.optim.LBFGS on purpose:

- ``step`` performs ``max_iter`` iterations (default 1, one per logged step of the fit loop) and does not stall
  across calls: the (loss, gradient) at the accepted point is cached and reused by the next ``step`` when the
  parameters' ``_version`` counters are unchanged and the closure is the same object, so one iteration costs only its
  line-search evaluations. Every line search may use up to ``LINE_SEARCH_EVALS`` closure calls (torch's default
  ``max_eval = 1.25 * max_iter`` leaves a single ``max_iter=1`` step one evaluation, hence the stall).
- A non-finite loss or gradient at a line-search trial reads as an infinitely high loss ("step too long"): the
  bracket shrinks towards the last good point and the bad point is never written into the parameters. A non-finite
  loss at the start of a step raises ``NonFiniteLossError`` before anything changes.

Call ``reset()`` when the objective changes under the same parameters (a new training set, INT's selected points):
the cached gradient and the curvature pairs describe the old objective.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nf_precond.checks import require_positive
from nf_precond.optim._common import NonFiniteLossError, check_finite_loss
from nf_precond.optim.closure import evaluates_nets

LINE_SEARCH_EVALS = 25
"""Most closure evaluations one line search may make (torch's strong-Wolfe search with max_ls = 24)."""
SUFFICIENT_DECREASE = 1e-4
"""Armijo constant c1 of the strong Wolfe conditions."""
CURVATURE = 0.9
"""Curvature constant c2 of the strong Wolfe conditions (loose, as is usual for quasi-Newton methods)."""
CURVATURE_PAIR_EPS = 1e-10
"""A pair (s, y) enters the history only if yᵀs exceeds this, which keeps the inverse Hessian positive definite."""
LINE_SEARCHES = ("strong_wolfe", None)
SUBSET_SHARE = 0.5
"""A line-search trial evaluates only the nets still searching (with a closure that can, see ``make_closure``) when
they are fewer than this share of all nets; above it, gathering their parameters costs about what it saves."""

# Per-net line-search phases.
_BRACKETING, _ZOOMING, _DONE = 0, 1, 2


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of two ``[N, P]`` matrices: ``[N]``."""
    return torch.linalg.vecdot(a, b)


def cubic_minimizer(
    x1: Tensor, f1: Tensor, g1: Tensor, x2: Tensor, f2: Tensor, g2: Tensor, lower: Tensor, upper: Tensor
) -> Tensor:
    """Minimizer of the cubic through two points with values f and slopes g, clamped to ``[lower, upper]``.

    Element-wise over nets. Where the cubic has no minimizer, or any input is not finite (an infinite loss marks a
    step that was too long), the midpoint of the bounds is returned instead: bisection.
    """
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    d2 = d2_square.clamp(min=0).sqrt()
    # The formula is symmetric in the two points once written from the right-hand one.
    first_is_left = x1 <= x2
    x_right, x_left = torch.where(first_is_left, x2, x1), torch.where(first_is_left, x1, x2)
    g_right, g_left = torch.where(first_is_left, g2, g1), torch.where(first_is_left, g1, g2)
    minimiser = x_right - (x_right - x_left) * ((g_right + d2 - d1) / (g_right - g_left + 2 * d2))
    usable = (d2_square >= 0) & torch.isfinite(minimiser)
    return torch.where(usable, torch.minimum(torch.maximum(minimiser, lower), upper), (lower + upper) / 2)


@dataclass
class CurvatureHistory:
    """Each net's last m curvature pairs (s = Δx, y = Δg) in a ring buffer, with their Gram matrices.

    The Gram matrices SᵀY and YᵀY are kept up to date one row and column per new pair, so the L-BFGS direction needs
    only two passes over the stored pairs per iteration (``add`` + ``direction``), each a single batched matrix
    product: no per-pair Python loop, no per-pair kernel launches.
    """

    pairs: Tensor
    """``[N, m, 2, P]``: ``pairs[n, k, 0]`` is s and ``pairs[n, k, 1]`` is y of net n's pair in slot k."""
    sy: Tensor
    """``[N, m, m]``: sᵢᵀyⱼ by slot."""
    yy: Tensor
    """``[N, m, m]``: yᵢᵀyⱼ by slot."""
    newest: Tensor
    """``[N]`` long: the slot of each net's newest pair (-1 before the first)."""
    count: Tensor
    """``[N]`` long: pairs each net holds (at most m)."""
    gamma: Tensor
    """``[N]``: the initial inverse Hessian is γI with γ = yᵀs / yᵀy of the newest pair (1 before the first)."""
    filled: int
    """Slots ever offered a pair (host-side, at most m): slots from here on are empty for every net, so the products
    skip them and early iterations cost less."""

    @classmethod
    def empty(cls, num_nets: int, slots: int, like: Tensor) -> CurvatureHistory:
        width = like.shape[1]
        long = dict(dtype=torch.long, device=like.device)
        return cls(
            pairs=like.new_zeros(num_nets, slots, 2, width),
            sy=like.new_zeros(num_nets, slots, slots),
            yy=like.new_zeros(num_nets, slots, slots),
            newest=torch.full((num_nets,), -1, **long),
            count=torch.zeros(num_nets, **long),
            gamma=like.new_ones(num_nets),
            filled=0,
        )

    def _used(self) -> tuple[Tensor, Tensor, Tensor]:
        """Views of the F filled slots: pairs ``[N, 2F, P]`` (rows s₀, y₀, s₁, ...), SᵀY and YᵀY ``[N, F, F]``."""
        used = self.filled
        num_nets, _, _, width = self.pairs.shape
        flat = self.pairs[:, :used].view(num_nets, 2 * used, width)
        return flat, self.sy[:, :used, :used], self.yy[:, :used, :used]

    def add(self, step: Tensor, grad_diff: Tensor, grad: Tensor) -> Tensor:
        """Store (s, y) = (``step``, ``grad_diff``) for every net where yᵀs > ``CURVATURE_PAIR_EPS``.

        Returns the projections [s₀, y₀, s₁, y₁, ...]ᵀ(-``grad``) of the updated history ``[N, 2F]`` for
        ``direction``, computed in the same pass over the history as the new Gram entries.
        """
        self.filled = min(self.filled + 1, self.pairs.shape[1])
        flat, sy, yy = self._used()
        used = self.filled
        vectors = torch.stack([step, grad_diff, grad.neg()], dim=1)
        products = torch.bmm(vectors, flat.mT)  # [N, 3, 2F], against the history before the write
        curvature = rowdot(grad_diff, step)
        accept = curvature > CURVATURE_PAIR_EPS
        nets = torch.arange(len(accept), device=accept.device)
        slot = (self.newest + 1) % used
        keep = accept[:, None, None]
        self.pairs[nets, slot] = torch.where(keep, vectors[:, :2], self.pairs[nets, slot])
        # The written slot now holds (s, y): patch its two columns of the products.
        columns = torch.stack([2 * slot, 2 * slot + 1], dim=1)[:, None, :].expand(-1, 3, -1)
        written = torch.bmm(vectors, vectors[:, :2].mT)  # [N, 3, 2]
        products.scatter_(2, columns, torch.where(keep, written, products.gather(2, columns)))
        keep = accept[:, None]
        s_new, y_new = products[:, 0], products[:, 1]
        sy[nets, slot, :] = torch.where(keep, s_new[:, 1::2], sy[nets, slot, :])  # s_newᵀ yⱼ
        sy[nets, :, slot] = torch.where(keep, y_new[:, 0::2], sy[nets, :, slot])  # sⱼᵀ y_new
        yy[nets, slot, :] = torch.where(keep, y_new[:, 1::2], yy[nets, slot, :])
        yy[nets, :, slot] = yy[nets, slot, :]
        self.newest = torch.where(accept, slot, self.newest)
        self.count = torch.where(accept, (self.count + 1).clamp(max=used), self.count)
        self.gamma = torch.where(accept, curvature / rowdot(grad_diff, grad_diff), self.gamma)
        return products[:, 2]

    def direction(self, grad: Tensor, projections: Tensor | None = None) -> Tensor:
        """The L-BFGS direction ``-H g`` per net, in the compact form of Byrd, Nocedal & Schnabel (1994).

        Equal to the two-loop recursion (Nocedal & Wright, Alg. 7.4; the tests' reference twin): with a = Sᵀq and
        b = Yᵀq for q = -g, R the upper triangle of SᵀY in age order (oldest first) and D its diagonal,
        α = R⁻¹a, c = R⁻ᵀ(Dα - γ(b - YᵀYα)) and the direction is γq - γYα + Sc.
        ``projections``: what ``add`` returned, if it ran since the history last changed.
        """
        q = grad.neg()
        if self.filled == 0:
            return q.mul_(self.gamma[:, None])
        flat, sy, yy = self._used()
        used = self.filled
        if projections is None:
            projections = torch.bmm(q[:, None, :], flat.mT)[:, 0]
        # Age order: position 0 is the oldest slot, used - 1 the newest; positions before used - count are empty.
        positions = torch.arange(used, device=grad.device)
        order = (self.newest[:, None] + 1 + positions) % used
        valid = positions >= used - self.count[:, None]
        a = torch.where(valid, projections[:, 0::2].gather(1, order), 0)[:, :, None]
        b = torch.where(valid, projections[:, 1::2].gather(1, order), 0)[:, :, None]
        both_valid = valid[:, :, None] & valid[:, None, :]
        rows, cols = order[:, :, None].expand(-1, -1, used), order[:, None, :].expand(-1, used, -1)
        yy_aged = torch.where(both_valid, yy.gather(1, rows).gather(2, cols), 0)
        # R: the upper triangle of SᵀY (masked, not .triu(), which is slow on small CPU batches). Empty slots get a
        # unit diagonal so R stays invertible; their a, b and couplings are 0, so α = c = 0 there.
        upper = positions[:, None] <= positions[None, :]
        r = torch.where(both_valid & upper, sy.gather(1, rows).gather(2, cols), 0)
        r = r + torch.diag_embed((~valid).to(sy.dtype))
        alpha = torch.linalg.solve_triangular(r, a, upper=True)
        gamma = self.gamma[:, None, None]
        rhs = r.diagonal(dim1=1, dim2=2)[:, :, None] * alpha - gamma * (b - torch.bmm(yy_aged, alpha))
        c = torch.linalg.solve_triangular(r.mT, rhs, upper=False)
        # Back from age order to slots, then one product with the stored pairs.
        coefficients = torch.zeros_like(projections)
        coefficients.scatter_(1, 2 * order, c[:, :, 0])
        coefficients.scatter_(1, 2 * order + 1, -gamma[:, :, 0] * alpha[:, :, 0])
        return torch.baddbmm(q.mul_(self.gamma[:, None])[:, None, :], coefficients[:, None, :], flat)[:, 0]


@dataclass
class LineSearchResult:
    step: Tensor
    """``[N]`` accepted step length per net (0 where a net did not search or found no better point)."""
    loss: Tensor
    """``[N]`` loss at the accepted point."""
    grad: Tensor
    """``[N, P]`` gradient at the accepted point."""
    evals: int
    """Closure evaluations made."""


@dataclass
class _Point:
    """Trial points of every net: ``scalars[:, 0]`` step, ``[:, 1]`` loss, ``[:, 2]`` slope gᵀd, and ``trial``
    ``[N]``, the index of the evaluation that produced it (0 = the start).

    Gradients are not copied while the bracket moves: only the trial index travels, and the accepted point's
    gradient is picked once at the end, so a one-trial search costs one masked copy of the gradient, not several.
    """

    scalars: Tensor
    trial: Tensor

    @property
    def t(self) -> Tensor:
        return self.scalars[:, 0]

    @property
    def f(self) -> Tensor:
        return self.scalars[:, 1]

    @property
    def gtd(self) -> Tensor:
        return self.scalars[:, 2]

    def where(self, mask: Tensor, other: _Point) -> _Point:
        """This point where ``mask``, else ``other``."""
        scalars = torch.where(mask[:, None], self.scalars, other.scalars)
        return _Point(scalars, torch.where(mask, self.trial, other.trial))


def strong_wolfe_search(
    evaluate: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    direction: Tensor,
    loss0: Tensor,
    grad0: Tensor,
    initial_step: Tensor,
    searching: Tensor,
    max_evals: int = LINE_SEARCH_EVALS,
    tolerance_change: float = 1e-9,
) -> LineSearchResult:
    """A strong-Wolfe line search for every net at once (minFunc's bracketing + cubic zoom, as torch.optim.LBFGS).

    ``evaluate(step, pending)`` returns the losses ``[N]`` and gradients ``[N, P]`` at ``x0 + step[:, None] *
    direction``; it is called once per trial for all nets. ``pending`` ``[N]`` marks the nets whose result is used: a
    net that has finished sits at step 0 and its row is ignored, so ``evaluate`` may skip it (fill its row with
    anything).
    ``searching`` ``[N]`` marks the nets that search; the others keep step 0. A net's search ends when the strong
    Wolfe conditions hold, its bracket is narrower than ``tolerance_change``, or ``max_evals`` trials were made (then
    the best point seen is kept, the start included). A non-finite loss or slope counts as an infinite loss.
    """
    loss_dtype, dtype = loss0.dtype, torch.promote_types(loss0.dtype, grad0.dtype)
    gtd0 = rowdot(grad0, direction)
    loss0 = loss0.to(dtype)
    direction_norm = direction.abs().amax(dim=1)
    zero = torch.zeros_like(loss0)
    start = _Point(torch.stack([zero, loss0, gtd0], dim=1), torch.zeros_like(searching, dtype=torch.long))
    grads = [grad0]  # by trial
    armijo_slope = SUFFICIENT_DECREASE * gtd0
    curvature_bound = -CURVATURE * gtd0
    phase = torch.where(searching, _BRACKETING, _DONE)
    # lo: while bracketing, the previous trial; while zooming, the bracket end with the lower loss; at the end, the
    # result. hi: the other bracket end.
    lo, hi = start, start
    insufficient_progress = torch.zeros_like(searching)
    t = torch.where(searching, initial_step.to(dtype), zero)
    evals = 0
    while True:
        f, g = evaluate(t, phase != _DONE)
        evals += 1
        gtd = rowdot(g, direction)
        bad = ~(torch.isfinite(f) & torch.isfinite(gtd))
        f, gtd = f.to(dtype).masked_fill(bad, torch.inf), gtd.masked_fill(bad, torch.inf)
        grads.append(g)
        new = _Point(torch.stack([t, f, gtd], dim=1), torch.full_like(start.trial, evals))
        exhausted = evals >= max_evals
        was_zooming = phase == _ZOOMING
        bracketing = phase == _BRACKETING
        too_high = f > loss0 + t * armijo_slope
        curvature_ok = gtd.abs() <= curvature_bound

        # Bracketing: grow the step until [previous trial, t] must contain a Wolfe point.
        previous = lo
        if exhausted:  # out of trials: keep the lower of the start and this trial
            lo = new.where(bracketing & (f < loss0), start.where(bracketing, lo))
            phase = torch.where(bracketing, _DONE, phase)
        else:
            fails = too_high | (f >= lo.f) if evals > 2 else too_high  # torch tests "rose" from the third trial
            accept = bracketing & ~fails & curvature_ok
            bracketed = bracketing & (fails | (~curvature_ok & (gtd >= 0)))
            extend = bracketing & ~fails & ~curvature_ok & (gtd < 0)
            hi = new.where(bracketed, hi)
            lo = new.where(accept | extend, lo)
            phase = torch.where(accept, _DONE, torch.where(bracketed, _ZOOMING, phase))
            swap = bracketed & (hi.f < lo.f)
            lo, hi = hi.where(swap, lo), lo.where(swap, hi)

        if evals > 1:  # zooming: shrink the bracket around the trial just evaluated (no net zooms before trial 2)
            new_high = was_zooming & (too_high | (f >= lo.f))
            new_low = was_zooming & ~new_high
            flip = new_low & ~curvature_ok & (gtd * (hi.t - lo.t) >= 0)
            hi = new.where(new_high, lo.where(flip, hi))
            lo = new.where(new_low, lo)
            swap = new_high & (hi.f < lo.f)
            lo, hi = hi.where(swap, lo), lo.where(swap, hi)
            phase = torch.where(new_low & curvature_ok, _DONE, phase)

        zooming = phase == _ZOOMING
        narrow = exhausted | ((hi.t - lo.t).abs() * direction_norm < tolerance_change)
        phase = torch.where(zooming & narrow, _DONE, phase)
        if not bool((phase != _DONE).any()):  # the one host sync per trial
            break

        # Next trial inside the bracket; if it lands near an end twice in a row (or outside), move it 10% inwards.
        zooming = phase == _ZOOMING
        low_end, high_end = torch.minimum(lo.t, hi.t), torch.maximum(lo.t, hi.t)
        zoom_t = cubic_minimizer(lo.t, lo.f, lo.gtd, hi.t, hi.f, hi.gtd, low_end, high_end)
        margin = 0.1 * (high_end - low_end)
        near_end = torch.minimum(high_end - zoom_t, zoom_t - low_end) < margin
        move = near_end & (insufficient_progress | (zoom_t >= high_end) | (zoom_t <= low_end))
        inward = torch.where((zoom_t - high_end).abs() < (zoom_t - low_end).abs(), high_end - margin, low_end + margin)
        zoom_t = torch.where(move, inward, zoom_t)
        insufficient_progress = torch.where(zooming, near_end & ~move, insufficient_progress)
        extended_t = cubic_minimizer(
            previous.t, previous.f, previous.gtd, t, f, gtd, t + 0.01 * (t - previous.t), 10 * t
        )
        t = torch.where(zooming, zoom_t, torch.where(phase == _BRACKETING, extended_t, zero))
    grad = grads[0]
    for trial in range(1, evals + 1):
        grad = torch.where((lo.trial == trial)[:, None], grads[trial], grad)
    return LineSearchResult(step=lo.t, loss=lo.f.to(loss_dtype), grad=grad, evals=evals)


@dataclass
class _StartCache:
    """(loss, gradient) at the parameters a step left behind, and what they depend on."""

    loss: Tensor
    grad: Tensor
    versions: tuple[int, ...]
    closure: Callable[[], Any]
    """A weak reference to the closure: a different closure is a different objective."""


class BatchedLBFGS(torch.optim.Optimizer):
    """L-BFGS with a strong-Wolfe line search for ``num_nets`` independent networks trained together.

    Every parameter has a leading net axis of length ``num_nets``; ``closure()`` returns the ``[num_nets]`` losses
    (``make_closure`` back-propagates their sum, so each net gets its own gradient) and ``step`` returns the losses at
    the start of the step. Each net has its own curvature history (pairs with yᵀs ≤ ``CURVATURE_PAIR_EPS`` are
    skipped per net), its own step length from a vectorized line search (all nets share one closure call per trial),
    and stops on its own convergence tests. A closure that can evaluate a subset of the nets (``make_closure`` with
    ``compute_net_losses``) has later line-search trials evaluate only the nets still searching, so an iteration costs
    about one closure plus the few nets that search longer, not the slowest net's trial count for every net.
    Memory: ``2 * history_size + 4`` copies of the parameters, plus one
    gradient per trial while a line search runs (usually 1 or 2, at most ``LINE_SEARCH_EVALS``).

    ``closure_evals`` counts closure calls since construction (kept in the state dict); ``state_dict`` holds the full
    history, so a resumed run follows the same trajectory.
    """

    needs_graph = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        num_nets: int,
        lr: float = 1.0,
        history_size: int = 20,
        max_iter: int = 1,
        line_search: str | None = "strong_wolfe",
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        max_eval: int | None = None,
    ) -> None:
        """
        Args:
            num_nets: N, the length of every parameter's leading axis.
            lr: initial trial step of every line search (1 suits quasi-Newton directions); the fixed step without one.
            history_size: curvature pairs (s, y) remembered per net.
            max_iter: L-BFGS iterations per ``step`` call.
            line_search: "strong_wolfe", or None for a fixed step of ``lr`` (one closure call per iteration).
            tolerance_grad: a net whose largest gradient entry is at most this has converged.
            tolerance_change: a net stops iterating within a step when its step, its loss change, or its line-search
                bracket is smaller than this.
            max_eval: most closure calls one ``step`` may make; None = only the per-line-search limit
                ``LINE_SEARCH_EVALS``.
        """
        if not (isinstance(num_nets, int) and num_nets >= 1):
            raise ValueError(f"num_nets must be an integer >= 1, got {num_nets!r}")
        require_positive("lr", lr)
        for name, value in (("history_size", history_size), ("max_iter", max_iter)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if max_eval is not None and not (isinstance(max_eval, int) and max_eval >= 1):
            raise ValueError(f"max_eval must be None or an integer >= 1, got {max_eval!r}")
        require_positive("tolerance_grad", tolerance_grad, allow_zero=True)
        require_positive("tolerance_change", tolerance_change, allow_zero=True)
        if line_search not in LINE_SEARCHES:
            raise ValueError(f"line_search must be one of {LINE_SEARCHES}, got {line_search!r}")
        defaults = dict(
            lr=lr,
            history_size=history_size,
            max_iter=max_iter,
            line_search=line_search,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            max_eval=max_eval,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group; pass model.parameters()")
        self.num_nets = num_nets
        self._params: list[Tensor] = self.param_groups[0]["params"]
        if not self._params:
            raise ValueError(f"{type(self).__name__} got no parameters to optimize")
        self._check_params()
        self._cache: _StartCache | None = None

    def _check_params(self) -> None:
        first = self._params[0]
        for index, p in enumerate(self._params):
            if p.is_complex() or not p.is_floating_point():
                raise ValueError(f"parameter {index} has dtype {p.dtype}; L-BFGS needs real floating-point parameters")
            if p.device != first.device or p.dtype != first.dtype:
                raise ValueError(
                    f"parameter {index} is {p.dtype} on {p.device} but parameter 0 is {first.dtype} on {first.device}; "
                    "move the model to one device and dtype"
                )
            if self.num_nets > 1 and (p.dim() == 0 or p.shape[0] != self.num_nets):
                raise ValueError(
                    f"parameter {index} has shape {list(p.shape)} but num_nets={self.num_nets}: every parameter "
                    "needs a leading net axis of that length (e.g. nf_precond.nn.BatchedMLP)"
                )

    @property
    def closure_evals(self) -> int:
        """Closure calls since construction (line-search trials and start-of-step evaluations)."""
        return self._state().get("func_evals", 0)

    def reset(self) -> None:
        """Forget the curvature history and the cached gradient; call it when the objective changes (new data)."""
        state = self._state()
        kept = {key: state[key] for key in ("func_evals", "n_iter") if key in state}
        state.clear()
        state.update(kept)
        self._cache = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._params = self.param_groups[0]["params"]
        self._cache = None
        # torch.optim casts every state tensor to the parameters' dtype; the slot indices and flags are not floats.
        state = self._state()
        for name, dtype in (("newest", torch.long), ("count", torch.long), ("started", torch.bool)):
            if name in state:
                state[name] = state[name].to(dtype)

    # -- flat [N, P] views of parameters and gradients ---------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        # Global state lives under the first parameter, as in torch.optim.LBFGS, so load_state_dict casts it.
        return self.state[self._params[0]]

    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(self.num_nets, -1) for p in self._params], dim=1)

    def _flat_grad(self) -> Tensor:
        rows = []
        for p in self._params:
            if p.grad is None:
                rows.append(p.new_zeros(self.num_nets, p.numel() // self.num_nets))
            elif p.grad.is_sparse:
                raise ValueError(f"{type(self).__name__} does not support sparse gradients")
            else:
                rows.append(p.grad.reshape(self.num_nets, -1))
        return torch.cat(rows, dim=1)

    def _set_params(self, flat: Tensor) -> None:
        views, offset = [], 0
        for p in self._params:
            width = p.numel() // self.num_nets
            views.append(flat[:, offset : offset + width].view(p.shape))
            offset += width
        torch._foreach_copy_(self._params, views)

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self._params)

    # -- evaluations ---------------------------------------------------------------------------------------------------

    def _evaluate(self, closure: Callable[..., Tensor], nets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Losses ``[N]`` and gradients ``[N, P]`` at the current parameters; with ``nets``, of those nets only (the
        closure evaluates them alone; the other rows are 0)."""
        with torch.enable_grad():
            loss = closure() if nets is None else closure(nets)
        state = self._state()
        state["func_evals"] = state.get("func_evals", 0) + 1
        count = self.num_nets if nets is None else len(nets)
        if not isinstance(loss, Tensor) or loss.numel() != count:
            got = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"{type(self).__name__}: the closure returned {got}; it must return a tensor with one loss per net "
                f"evaluated ({count})"
            )
        loss = loss.detach().reshape(count)
        if nets is not None:
            loss = loss.new_zeros(self.num_nets).index_copy_(0, nets, loss)
        return loss, self._flat_grad()

    def _evaluate_at_start(self, closure: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        """Evaluate at the current parameters and refuse a non-finite loss or gradient (one host sync)."""
        loss, grad = self._evaluate(closure)
        if not bool(torch.isfinite(loss).all() & torch.isfinite(grad.abs().amax(dim=1)).all()):
            check_finite_loss(loss, type(self).__name__)
            raise NonFiniteLossError(
                f"{type(self).__name__}: the gradient is not finite although the loss is; parameters were not "
                "updated. Check the model for NaN/inf parameters or activations."
            )
        return loss, grad

    def _cached_start(self, closure: Callable[[], Tensor]) -> tuple[Tensor, Tensor] | None:
        cache = self._cache
        if cache is None or cache.closure() != closure or cache.versions != self._versions():
            return None
        return cache.loss, cache.grad

    def _remember_start(self, closure: Callable[[], Tensor], loss: Tensor, grad: Tensor) -> None:
        try:
            ref = weakref.WeakMethod(closure) if inspect.ismethod(closure) else weakref.ref(closure)
        except TypeError:  # not weakly referenceable: evaluate afresh every step
            self._cache = None
            return
        self._cache = _StartCache(loss, grad, self._versions(), ref)

    def _nets_to_evaluate(self, closure: Callable[..., Tensor], pending: Tensor) -> Tensor | None:
        """The nets a line-search trial must evaluate, or None for all of them (every net, or a closure that
        evaluates only all)."""
        if not evaluates_nets(closure):
            return None
        nets = pending.nonzero()[:, 0]  # a host sync, beside the line search's own one per trial
        return nets if len(nets) < SUBSET_SHARE * self.num_nets else None

    # -- curvature history -------------------------------------------------------------------------------------------

    _HISTORY_FIELDS = ("pairs", "sy", "yy", "newest", "count", "gamma", "filled")

    def _history(self, state: dict[str, Any]) -> CurvatureHistory:
        return CurvatureHistory(**{name: state[name] for name in self._HISTORY_FIELDS})

    def _store_history(self, state: dict[str, Any], history: CurvatureHistory) -> None:
        state.update({name: getattr(history, name) for name in self._HISTORY_FIELDS})

    # -- the step ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Run ``max_iter`` L-BFGS iterations; returns the ``[N]`` losses at the start of the step."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure (see nf_precond.optim.make_closure)")
        group = self.param_groups[0]
        state = self._state()
        evals_at_start = state.get("func_evals", 0)
        eval_budget = group["max_eval"]

        cached = self._cached_start(closure)
        loss, grad = cached if cached is not None else self._evaluate_at_start(closure)
        start_loss = loss
        if "pairs" not in state:
            slots = group["history_size"]
            self._store_history(state, CurvatureHistory.empty(self.num_nets, slots, grad))
            state.update(started=torch.zeros_like(grad[:, 0], dtype=torch.bool), last_step=None, prev_grad=None)
            state.setdefault("n_iter", 0)

        active = torch.ones(self.num_nets, dtype=torch.bool, device=grad.device)
        prev_loss: Tensor | None = None
        for _ in range(group["max_iter"]):
            evals_left = LINE_SEARCH_EVALS
            if eval_budget is not None:
                evals_left = min(evals_left, eval_budget - (state["func_evals"] - evals_at_start))
            if loss is None:  # a fixed step moved the parameters without evaluating them
                if evals_left < 2 or not bool(active.any()):
                    break
                loss, grad = self._evaluate_at_start(closure)
                evals_left -= 1
            history = self._history(state)
            projections = None
            if state["last_step"] is not None:
                projections = history.add(state["last_step"], grad - state["prev_grad"], grad)
                self._store_history(state, history)
                state["last_step"] = None
            active &= grad.abs().amax(dim=1) > group["tolerance_grad"]
            if prev_loss is not None:
                active &= (loss - prev_loss).abs() >= group["tolerance_change"]

            direction = history.direction(grad, projections)
            # The first iteration has no curvature yet: a step of length lr in the gradient's 1-norm, at most lr.
            initial_step = torch.where(
                state["started"], group["lr"], (1 / grad.abs().sum(dim=1)).clamp(max=1) * group["lr"]
            ).to(grad.dtype)
            searching = active & (rowdot(grad, direction) <= -group["tolerance_change"])
            if evals_left < 1 or not bool(searching.any()):
                break

            origin = self._flat_params()
            if group["line_search"] == "strong_wolfe":

                def evaluate(step_length: Tensor, pending: Tensor) -> tuple[Tensor, Tensor]:
                    self._set_params(torch.addcmul(origin, step_length[:, None], direction))
                    return self._evaluate(closure, self._nets_to_evaluate(closure, pending))

                result = strong_wolfe_search(
                    evaluate, direction, loss, grad, initial_step, searching, evals_left, group["tolerance_change"]
                )
                step_length, new_loss, new_grad = result.step, result.loss, result.grad
            else:
                step_length, new_loss, new_grad = torch.where(searching, initial_step, 0), None, None
            self._set_params(torch.addcmul(origin, step_length[:, None], direction))

            last_step = step_length[:, None] * direction  # 0 for nets that did not search
            state["last_step"], state["prev_grad"] = last_step, grad
            state["started"] = state["started"] | searching
            state["n_iter"] += 1
            active &= last_step.abs().amax(dim=1) > group["tolerance_change"]
            prev_loss, loss, grad = loss, new_loss, new_grad

        if loss is not None:
            self._remember_start(closure, loss, grad)
        else:
            self._cache = None
        return start_loss
