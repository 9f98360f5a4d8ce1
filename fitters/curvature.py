"""The study behind ``nf-curvature PATH``: Hessian spectrum and HVP sparsity of small coordinate networks on a signal.

Paper 1 (Fig. 2, supplementary Figs. 1-4) trains small networks of each activation with full-batch L-BFGS on a
50x50 image and looks at the eigenvalues of the loss Hessian at every iteration: ReLU and ReLU-PE have many zero
eigenvalues, sine and Gaussian none. Paper 2 (Theorems 4.2/4.3, Fig. 4) measures the fraction of zero entries of
Hessian-vector products: sparse for ReLU, dense for sine/Gaussian/wavelet. This tool repeats both measurements for
any signal ``nf-fit`` takes (downsampled), in float64, and writes ``<out>/<name>.json`` and ``<out>/<name>.png``
(eigenvalue histograms near 0, summed over the analyzed iterations, one panel per network).

"Zero" eigenvalue: ``|λ| <= ε``. The default ε is the numerical-rank tolerance ``n · eps(float64) · max|λ|``
(numpy's ``matrix_rank`` rule): below it an eigenvalue cannot be told from round-off. The condition number is
``max|λ| / min|λ|`` (the Hessian is indefinite, so magnitudes), infinite when some eigenvalue is exactly 0.

Bad input ends with one ``nf-curvature: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from fitters.config import resolve_device
from fitters.memory import memory_free
from fitters import run_dir
from fitters.run_dir import to_plain
from fitters.signals import SIGNAL_MODULES, Signal, SignalOptions, load_signal
from nf_precond.atomic import atomic_path, atomic_write_text
from nf_precond.curvature import hessian_eigenvalues, hvp, hvp_sparsity, rademacher_like
from nf_precond.nn import ACTIVATIONS, CoordinateMLP, FieldConfig
from nf_precond.optim import NonFiniteLossError, build_optimizer, make_closure

HESSIAN_COPIES = 3
"""Dense n x n buffers alive at once: the Hessian, its symmetrized copy, and eigvalsh's workspace."""
HISTOGRAM_BINS = 101
"""Odd, so one bin is centered on 0 (as in the paper's histograms)."""
InitName = Literal["paper", "siren", "kaiming", "xavier", "default"]


@dataclass
class CurvatureConfig:
    """Train small networks of each activation with L-BFGS on PATH and record their Hessian spectra."""

    path: tyro.conf.Positional[Path]
    """Signal file, any type nf-fit takes (.png/.jpg, .wav/.flac, .mp4/.avi/.mov, .obj/.ply/.off/.stl)."""
    out: Path = Path("outputs/curvature")
    """Folder for <name>.json and <name>.png."""
    name: str | None = None
    """Stem of the output files; None = curvature_<file stem>."""
    activations: tuple[str, ...] = ("sine", "gauss", "relu", "relu-pe")
    """Activations to compare (paper 1 supp. Figs. 1-4: sine, Gaussian, ReLU, ReLU-PE; wavelet also works)."""
    shapes: tuple[str, ...] = ("4x16",)
    """Networks as LAYERSxWIDTH (paper 1 supp.: 4x16, 4x64, 1x512); dense Hessians grow as parameters²."""
    inits: tuple[InitName, ...] = ("paper",)
    """Initializations; paper = SIREN for sine and Kaiming uniform otherwise (paper 1 supp. Sec. 3)."""
    iterations: int = 50
    """L-BFGS iterations per network (paper 1: 50)."""
    every: int = 10
    """Analyze every this many iterations (and always at 0 and at the end); 1 = every iteration, as in the paper."""
    size: tuple[int, int] = (50, 50)
    """Images and video frames are resized to H W (paper 1: 50x50)."""
    frames: tuple[int, int] = (0, 2)
    """Video: the frame range [START, STOP) analyzed."""
    seconds: float = 0.05
    """Audio: the first this many seconds are analyzed."""
    points: int = 2500
    """Occupancy: number of sampled points."""
    window: float = 0.01
    """Histograms cover eigenvalues in [-window, window] (paper 1: 0.01)."""
    epsilon: float | None = None
    """Zero-eigenvalue tolerance |λ| <= ε; None = numerical rank tolerance n·eps·max|λ| of each Hessian."""
    hvp_atol: float = 0.0
    """HVP entries with |x| <= this count as zero (0 = exact zeros)."""
    max_hessian_gb: float | None = None
    """Memory allowed for one dense Hessian and its eigen-decomposition; None = half the free memory."""
    seed: int = 0
    """Seed for initial weights and the Rademacher vectors."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where to compute."""
    threads: int | None = None
    """torch CPU threads (None = torch's default)."""


@dataclass(frozen=True)
class NetworkSpec:
    activation: str
    layers: int
    hidden: int
    init: str
    """Resolved: siren, kaiming, xavier or default."""

    @property
    def field(self) -> FieldConfig:
        return FieldConfig(hidden=self.hidden, layers=self.layers, activation=self.activation, init=self.init)

    @property
    def label(self) -> str:
        return f"{self.activation} {self.layers}x{self.hidden} {self.init}"


def resolve_init(init: str, activation: str) -> str:
    if init == "paper":
        return "siren" if activation == "sine" else "kaiming"
    return init


def parse_shape(text: str) -> tuple[int, int]:
    layers, sep, hidden = text.lower().partition("x")
    if not (sep and layers.isdigit() and hidden.isdigit() and int(layers) >= 1 and int(hidden) >= 1):
        raise ValueError(f"--shapes: {text!r} is not LAYERSxWIDTH; write e.g. 4x16")
    return int(layers), int(hidden)


def network_specs(config: CurvatureConfig) -> list[NetworkSpec]:
    for activation in config.activations:
        if activation not in ACTIVATIONS:
            raise ValueError(f"--activations: unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    shapes = [parse_shape(text) for text in config.shapes]
    return [
        NetworkSpec(activation, layers, hidden, resolve_init(init, activation))
        for layers, hidden in shapes
        for init in config.inits
        for activation in config.activations
    ]


def parameter_count(spec: NetworkSpec, in_features: int, out_features: int) -> int:
    return spec.field.num_parameters(in_features, out_features)


def hessian_bytes(parameters: int, dtype: torch.dtype = torch.float64) -> int:
    return HESSIAN_COPIES * parameters**2 * torch.finfo(dtype).bits // 8


def largest_width(layers: int, activation: str, in_features: int, out_features: int, budget_bytes: float) -> int:
    """The widest ``layers``-deep network whose dense Hessian fits ``budget_bytes`` (0 if none does)."""
    fits = lambda width: hessian_bytes(  # noqa: E731
        parameter_count(NetworkSpec(activation, layers, width, "default"), in_features, out_features)
    ) <= budget_bytes
    low, high = 0, 1
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def check_sizes(specs: Sequence[NetworkSpec], in_features: int, out_features: int, budget_bytes: float) -> None:
    """Refuse, before any work, a network whose dense Hessian would not fit ``budget_bytes``."""
    for spec in specs:
        parameters = parameter_count(spec, in_features, out_features)
        needed = hessian_bytes(parameters)
        if needed > budget_bytes:
            width = largest_width(spec.layers, spec.activation, in_features, out_features, budget_bytes)
            advice = (
                f"the largest width that fits at depth {spec.layers} is {width} (--shapes {spec.layers}x{width})"
                if width else f"no width fits at depth {spec.layers}"
            )
            raise ValueError(
                f"a dense Hessian of the {spec.activation} {spec.layers}x{spec.hidden} network ({parameters} parameters) "
                f"needs {needed / 1e9:.2f} GB, over the {budget_bytes / 1e9:.2f} GB allowed by --max-hessian-gb; "
                f"{advice}, or raise --max-hessian-gb"
            )


def spectrum_statistics(eigenvalues: torch.Tensor, epsilon: float | None, window: float) -> dict[str, Any]:
    """Zero fraction, smallest |λ|, condition number and the histogram near 0 of one Hessian's eigenvalues."""
    magnitudes = eigenvalues.abs()
    largest, smallest = float(magnitudes.max()), float(magnitudes.min())
    tolerance = epsilon if epsilon is not None else eigenvalues.numel() * torch.finfo(torch.float64).eps * largest
    counts, _ = np.histogram(eigenvalues.cpu().numpy(), bins=histogram_edges(window))
    return {
        "count": eigenvalues.numel(),
        "epsilon": tolerance,
        "zero_fraction": float((magnitudes <= tolerance).double().mean()),
        "smallest_abs": smallest,
        "largest_abs": largest,
        "min": float(eigenvalues.min()),
        "max": float(eigenvalues.max()),
        "condition_number": largest / smallest if smallest > 0 else math.inf,
        "negative_fraction": float((eigenvalues < -tolerance).double().mean()),
        "histogram": counts.tolist(),
    }


def histogram_edges(window: float) -> np.ndarray:
    return np.linspace(-window, window, HISTOGRAM_BINS + 1)


def analyse(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    epsilon: float | None,
    window: float,
    hvp_atol: float,
    generator: torch.Generator | None,
) -> dict[str, Any]:
    """The spectrum statistics of the dense Hessian and the sparsity of one Rademacher HVP, at the current θ."""
    params = list(params)
    statistics = spectrum_statistics(hessian_eigenvalues(loss_fn, params), epsilon, window)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    products = hvp(grads, params, rademacher_like(params, generator))
    sparsity = hvp_sparsity(products, hvp_atol)
    statistics["hvp_sparsity"] = sparsity.overall
    statistics["hvp_sparsity_per_tensor"] = list(sparsity.per_tensor)
    return statistics


def snapshot_iterations(iterations: int, every: int) -> list[int]:
    return sorted({*range(0, iterations + 1, every), iterations})


def study_network(
    spec: NetworkSpec, signal: Signal, config: CurvatureConfig, on_snapshot: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Train one network with L-BFGS for ``config.iterations`` and analyze it at the snapshot iterations."""
    coords, targets = signal.coords, signal.targets
    torch.manual_seed(config.seed)
    model = CoordinateMLP(signal.in_features, signal.out_features, spec.field, device=coords.device, dtype=coords.dtype)
    params = list(model.parameters())
    loss_fn = lambda: signal.loss(model(coords), targets)  # noqa: E731
    optimizer = build_optimizer("lbfgs", model)
    closure = make_closure(optimizer, loss_fn)
    generator = torch.Generator(device=coords.device).manual_seed(config.seed)
    wanted = set(snapshot_iterations(config.iterations, config.every))
    snapshots = []
    for iteration in range(config.iterations + 1):
        if iteration in wanted:
            with torch.no_grad():
                loss = float(loss_fn())
            statistics = analyse(
                loss_fn, params, epsilon=config.epsilon, window=config.window, hvp_atol=config.hvp_atol,
                generator=generator,
            )  # fmt: skip
            snapshots.append({"iteration": iteration, "loss": loss, **statistics})
            on_snapshot(snapshots[-1])
        if iteration < config.iterations:
            optimizer.step(closure)
    return {
        "label": spec.label,
        **asdict(spec),
        "parameters": sum(p.numel() for p in params),
        "snapshots": snapshots,
        "summary": summarise(snapshots),
    }


def summarise(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over all snapshots: the paper's "total eigenvalue distribution throughout training"."""
    eigenvalues = sum(s["count"] for s in snapshots)
    conditions = [s["condition_number"] for s in snapshots]
    return {
        "zero_fraction": sum(s["zero_fraction"] * s["count"] for s in snapshots) / eigenvalues,
        "smallest_abs": min(s["smallest_abs"] for s in snapshots),
        "condition_number_median": float(np.median(conditions)),
        "hvp_sparsity": float(np.mean([s["hvp_sparsity"] for s in snapshots])),
        "final_loss": snapshots[-1]["loss"],
    }


def signal_options(path: Path, config: CurvatureConfig) -> SignalOptions:
    """The downsampling each signal kind understands (loaders reject options that are not theirs)."""
    module = SIGNAL_MODULES.get(path.suffix.lower())
    if module == "fitters.signals.image":
        return SignalOptions(resize=config.size, seed=config.seed)
    if module == "fitters.signals.video":
        return SignalOptions(resize=config.size, frames=config.frames, seed=config.seed)
    if module == "fitters.signals.audio":
        return SignalOptions(max_seconds=config.seconds, seed=config.seed)
    return SignalOptions(num_points=config.points, seed=config.seed)


def validate(config: CurvatureConfig) -> None:
    if config.iterations < 0:
        raise ValueError(f"--iterations must be >= 0, got {config.iterations}")
    if config.every < 1:
        raise ValueError(f"--every must be >= 1, got {config.every}")
    if not (config.window > 0 and math.isfinite(config.window)):
        raise ValueError(f"--window must be a positive number, got {config.window}")
    if config.epsilon is not None and not config.epsilon >= 0:
        raise ValueError(f"--epsilon must be >= 0, got {config.epsilon}")
    if config.max_hessian_gb is not None and not config.max_hessian_gb > 0:
        raise ValueError(f"--max-hessian-gb must be positive, got {config.max_hessian_gb}")
    if not (config.activations and config.shapes and config.inits):
        raise ValueError("--activations, --shapes and --inits each need at least one value")


def plot(report: dict[str, Any], final: Path) -> None:
    """One histogram per network of its eigenvalues in [-window, window], summed over the snapshots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = report["networks"]
    columns = min(4, len(networks))
    rows = math.ceil(len(networks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), dpi=110, squeeze=False)
    edges = np.asarray(report["histogram_edges"])
    for axis, network in zip(axes.flat, networks):
        counts = np.sum([s["histogram"] for s in network["snapshots"]], axis=0)
        axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue")
        summary = network["summary"]
        axis.set_title(network["label"], fontsize=9)
        axis.set_yscale("symlog", linthresh=1)
        axis.set_xlabel("eigenvalue", fontsize=8)
        axis.set_xticks([edges[0], 0.0, edges[-1]])
        axis.tick_params(labelsize=7)
        axis.text(
            0.02, 0.97,
            f"zero: {100 * summary['zero_fraction']:.1f}%\nmin |λ|: {summary['smallest_abs']:.1e}\n"
            f"HVP zeros: {100 * summary['hvp_sparsity']:.1f}%",
            transform=axis.transAxes, va="top", fontsize=7,
        )  # fmt: skip
    for axis in list(axes.flat)[len(networks):]:
        axis.axis("off")
    iterations = ", ".join(str(i) for i in report["snapshot_iterations"])
    figure.suptitle(f"Hessian eigenvalues near 0 at L-BFGS iterations {iterations} ({Path(report['signal']['path']).name})",
                    fontsize=9)
    figure.tight_layout()
    with atomic_path(final) as temporary:
        figure.savefig(temporary)
    plt.close(figure)


def run(config: CurvatureConfig, argv: Sequence[str], *, progress: bool = True) -> dict[str, Any]:
    """Validate everything (flags, signal, sizes), then train and analyze every network and write the outputs."""
    from tqdm import tqdm

    validate(config)
    specs = network_specs(config)
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    signal = load_signal(config.path, signal_options(config.path, config))
    signal.coords = signal.coords.to(device, torch.float64)
    signal.targets = signal.targets.to(device, torch.float64)
    budget = config.max_hessian_gb * 1e9 if config.max_hessian_gb is not None else memory_free(device) / 2
    check_sizes(specs, signal.in_features, signal.out_features, budget)
    name = config.name or f"curvature_{config.path.stem}"
    snapshots_per_network = len(snapshot_iterations(config.iterations, config.every))
    networks = []
    with tqdm(total=len(specs) * snapshots_per_network, disable=not progress, desc="nf-curvature") as bar:
        for spec in specs:
            bar.set_postfix_str(spec.label)

            def on_snapshot(snapshot: dict[str, Any]) -> None:
                bar.set_postfix_str(f"{spec.label} it {snapshot['iteration']} zero {100 * snapshot['zero_fraction']:.1f}%")
                bar.update()

            try:
                networks.append(study_network(spec, signal, config, on_snapshot))
            except NonFiniteLossError as error:
                raise ValueError(f"{spec.label}: L-BFGS diverged ({error}); try another --seed or a smaller --size") from error
    report = {
        "name": name,
        "command": "nf-curvature " + " ".join(argv),
        "signal": {"path": str(config.path), "kind": signal.kind, "samples": signal.num_samples,
                   "in_features": signal.in_features, "out_features": signal.out_features},
        "iterations": config.iterations,
        "snapshot_iterations": snapshot_iterations(config.iterations, config.every),
        "optimizer": "lbfgs (nf_precond, strong Wolfe, full batch)",
        "loss": "the signal's loss (MSE for images/audio/video, BCE for occupancy), mean over samples and channels",
        "dtype": "float64",
        "device": str(device),
        "torch": torch.__version__,
        "settings": to_plain(asdict(config)),
        "histogram_edges": histogram_edges(config.window).tolist(),
        "networks": networks,
        "plot": f"{name}.png",
    }
    config.out.mkdir(parents=True, exist_ok=True)
    plot(report, config.out / f"{name}.png")
    atomic_write_text(config.out / f"{name}.json", json_text(report))
    return report


def json_text(report: dict[str, Any]) -> str:
    # Infinite condition numbers (an exactly zero eigenvalue) are written as null: JSON has no infinity.
    return run_dir.json_text(report, indent=1) + "\n"


def summary_table(report: dict[str, Any]) -> str:
    lines = ["| network | parameters | zero eigenvalues | smallest |λ| | median condition number | HVP zeros |",
             "|---|---|---|---|---|---|"]
    for network in report["networks"]:
        s = network["summary"]
        lines.append(
            f"| {network['label']} | {network['parameters']} | {100 * s['zero_fraction']:.1f}% | {s['smallest_abs']:.1e} | "
            f"{s['condition_number_median']:.2e} | {100 * s['hvp_sparsity']:.1f}% |"
        )
    return "\n".join(lines)
