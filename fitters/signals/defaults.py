"""What a bare ``nf-fit FILE`` trains with: the papers' settings for each signal type.

``fitters.config.resolve`` applies these to every setting the user left unset; flags and ``--config`` keys always
win, and config.yaml's ``provenance`` says where each setting came from. Settings are FitConfig keys in dotted form
(``field.hidden``, ``signal.max_side``, ``steps``); what no signal type sets falls back to the optimizer's registry
defaults (lr; batch: full for L-BFGS, 512 for the others) and to FitConfig's own. This module imports nothing heavy,
so ``nf-fit --help`` lists the table without loading the decoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SignalDefaults:
    """The defaults of one signal type."""

    source: str
    """Where the values come from: paper and section, or the measurement behind a deviation."""
    settings: dict[str, Any]
    """Dotted FitConfig keys and their values, for every optimizer."""
    per_optimizer: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Overrides of ``settings`` for one optimizer name (L-BFGS takes fewer, costlier steps)."""

    def for_optimizer(self, optim: str) -> dict[str, Any]:
        return {**self.settings, **self.per_optimizer.get(SETTINGS_OF.get(optim, optim), {})}


SETTINGS_OF = {"lbfgs-eq": "lbfgs"}
"""Optimizers that train with another one's per-signal settings (the same method with another start)."""
LBFGS_STEPS = {"steps": 300}
"""Paper 1 compares L-BFGS after far fewer iterations than Adam: each one runs a line search over the full batch."""

DEFAULTS: dict[str, SignalDefaults] = {
    "image": SignalDefaults(
        "paper 1 Sec. 5.1 (4x64 sine, w0 30); paper 2 supp. Sec. 4.1 for the Gaussian width and mini-batches",
        {"field.activation": "sine", "field.hidden": 64, "field.layers": 4, "field.omega0": (30.0,),
         "field.sigma": 0.05, "steps": 1000},
        {"lbfgs": LBFGS_STEPS},
    ),
    "audio": SignalDefaults(
        "paper 1 supp. Sec. 4.1 (configs/audio/paper1-*.yaml): 4x256, w0 3000 on the first two layers and 30 after, "
        "Gaussian sigma 0.01, full batch; Adam gets 4x128 (benchmarks/results/bare_commands.md: a 4x256 field takes "
        "too few full-batch Adam steps in a short budget, and mini-batches or a higher lr do not learn at w0 3000)",
        {"field.activation": "sine", "field.hidden": 256, "field.layers": 4,
         "field.omega0": (3000.0, 3000.0, 30.0, 30.0), "field.sigma": 0.01, "batch_size": 0, "steps": 3000},
        {"lbfgs": LBFGS_STEPS, "adam": {"field.hidden": 128}},
    ),
    "video": SignalDefaults(
        "paper 1 supp. Sec. 4.2 (4x64 sine, w0 30, frames downsampled to 160 wide); mini-batches of 16384 for the "
        "first-order optimizers, Adam lr 1e-3 (far ahead of 1e-4 in benchmarks/results/video_paper1_sine.md)",
        {"field.activation": "sine", "field.hidden": 64, "field.layers": 4, "field.omega0": (30.0,),
         "field.sigma": 0.05, "signal.max_side": 160, "signal.max_samples": 1 << 24, "batch_size": 16384,
         "steps": 5000},
        {"adam": {"lr": 1e-3}, "lbfgs": {"batch_size": 0, "steps": 500}},
    ),
    "occupancy": SignalDefaults(
        "paper 1 supp. Sec. 4.3 (4x64 sine, w0 30, 100k points, full batch); paper 2 supp. Sec. 4.2 for the Gaussian "
        "width",
        {"field.activation": "sine", "field.hidden": 64, "field.layers": 4, "field.omega0": (30.0,),
         "field.sigma": 0.09, "signal.num_points": 100_000, "batch_size": 0, "steps": 3000},
        {"lbfgs": LBFGS_STEPS},
    ),
}
"""One entry per signal type (the kinds of ``fitters.signals.SIGNAL_MODULES``)."""


def fit_omega0(omega0: tuple[float, ...], layers: int) -> tuple[float, ...]:
    """A default per-layer ω0 list for another number of layers: the first layers keep their values and extra layers
    repeat the last (audio: 3000 3000 30 30 becomes 3000 3000 30 for --layers 3, 3000 3000 30 30 30 for 5)."""
    if len(omega0) in (1, layers):
        return omega0
    return tuple(omega0[: layers]) + (omega0[-1],) * max(0, layers - len(omega0))


def defaults_help() -> str:
    """The table ``nf-fit --help`` shows: each signal type's defaults, per optimizer where they differ."""
    lines = ["Defaults per signal type (flags and --config win; config.yaml's provenance lists the source of each):"]
    for kind, defaults in DEFAULTS.items():
        settings = ", ".join(f"{key} {_text(value)}" for key, value in defaults.settings.items())
        lines.append(f"  {kind}: {settings}")
        for optim, overrides in defaults.per_optimizer.items():
            names = " / ".join([optim, *(alias for alias, like in SETTINGS_OF.items() if like == optim)])
            lines.append(f"    --optim {names}: " + ", ".join(f"{key} {_text(value)}" for key, value in overrides.items()))
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{item:g}" for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
