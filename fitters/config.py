"""``FitConfig``: every setting of one fit; ``nf-fit --help`` is generated from it by tyro.

Presets (``configs/**/*.yaml``, given as ``--config FILE``) hold the same keys as this dataclass (``batch_size`` or
``batch-size``; nested ``signal: {resize: [128, 128]}``); their values become the defaults and command-line flags
override them. ``None`` for ``lr``, ``batch_size`` and ``log_every`` means "this optimizer's default" (see
``resolve``).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
import yaml

from fitters.signals import SignalOptions
from nf_precond.nn import FieldConfig
from nf_precond.optim import OPTIMIZERS, OptimizerName
from nf_precond.sampling import INTOptions, make_interval_schedule, make_ratio_schedule
from nf_precond.sampling.schedules import INTERVAL_SCHEDULES, RATIO_SCHEDULES

DEFAULT_MINI_BATCH = 512
"""Paper 2's mini-batch size for every stochastic optimizer (image experiments)."""
NO_PATH = Path("")
"""Placeholder for the positional PATH while a preset is loaded; ``validate`` insists on a real one."""


@dataclass
class FitConfig:
    """Fit a neural field to PATH (image, audio, video or mesh; the type comes from the file suffix)."""

    path: tyro.conf.Positional[Path] = NO_PATH
    """The signal file: .png/.jpg (image), .wav/.flac (audio), .mp4/.avi/.mov (video), .obj/.ply/.off/.stl (mesh)."""
    optim: OptimizerName = "adam"
    """Optimizer (nf_precond.optim.OPTIMIZERS); lbfgs is full batch with a line search."""
    field: Annotated[FieldConfig, tyro.conf.OmitArgPrefixes] = FieldConfig()
    """The coordinate MLP (nf_precond.nn.FieldConfig): --hidden, --layers, --activation, --omega0, --sigma, ..."""
    lr: float | None = None
    """Learning rate; None = the optimizer's paper default (adam 1e-4, esgd 0.15, lbfgs 1.0, ...)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant: --lr throughout; cosine: anneal from --lr to --lr-min over --steps (torch's CosineAnnealingLR; paper 3
    trains every INT experiment this way)."""
    lr_min: float = 1e-6
    """--lr-schedule cosine: the learning rate reached at --steps (paper 3: 1e-6)."""
    steps: int = 1000
    """Optimizer steps to take (one L-BFGS iteration per step); with --resume, the total including earlier steps."""
    time_budget: float | None = None
    """Stop after this many seconds of training time (evaluation excluded); None = no limit."""
    target_psnr: float | None = None
    """Stop once the headline metric reaches this value (alias of --target-metric, for PSNR signals)."""
    target_metric: float | None = None
    """Stop once the signal's headline metric (psnr, or iou for meshes) reaches this value; None = never."""
    batch_size: int | None = None
    """Samples per step; 0 = full batch; None = full batch for lbfgs, 512 (paper 2) for the other optimizers."""
    sampler: Literal["full", "random", "int"] | None = None
    """Which samples a step trains on: full (all), random (mini-batches of --batch-size), int (INT, paper 3: the
    samples with the largest error, re-ranked on a schedule); None = full for lbfgs or --batch-size 0, else random."""
    int_ratio: Literal[tuple(RATIO_SCHEDULES)] | None = None  # type: ignore[valid-type]
    """--sampler int: schedule of the fraction selected; None = step (20 % rising to 92 % in 10 stages, paper 3)."""
    int_interval: Literal[tuple(INTERVAL_SCHEDULES)] | None = None  # type: ignore[valid-type]
    """--sampler int: schedule of steps between reselections; None = incremental (every step, rising to every 90)."""
    int_ratio_start: float | None = None
    """--sampler int: fraction at the first step (the constant schedule's fraction); None = the schedule's default."""
    int_ratio_end: float | None = None
    """--sampler int: fraction at the last step (step, cosine, rcosine); None = the schedule's default."""
    int_stages: int | None = None
    """--sampler int: equal-length stages of the step ratio and the stepped intervals; None = 10 (paper 3)."""
    int_max_interval: int | None = None
    """--sampler int: largest reselection interval in steps (incremental, decremental); None = 90 (paper 3)."""
    lbfgs_on_reselect: Literal["reset", "keep"] = "keep"
    """lbfgs only, when the training samples change (INT reselection, random batches): keep = keep the curvature
    history (the next iteration re-evaluates its start on the new samples); reset = forget it. keep measured better
    with INT (benchmarks/results/int_optimizers.md: 33.5 vs 27.0 dB after 150 steps in about the same time)."""
    kilo: str | None = None
    """Fit in tiles, one tiny MLP per tile, all trained at once (paper 1 KiloImage/KiloVideo): tile counts per axis,
    ROWSxCOLUMNS for images (e.g. 16x16), FRAMESxROWSxCOLUMNS for video (e.g. 4x8x8); full batch per tile;
    --optim lbfgs, adam or sgd. A count that does not divide the size pads the far end (see fitters/kilo.py)."""
    kilo_group: int | None = None
    """--kilo: train this many tiles at a time, group after group (bounded memory for huge signals); None = all."""
    log_every: int | None = None
    """Evaluate and log every N steps (and always at the end); None = once per epoch (every step for the full
    batch), but at least every steps/100."""
    checkpoint_every: int | None = None
    """Write checkpoint.pt every N steps at a log (and at the end); None = at most every 30 s of wall time."""
    eval_chunk: int = 65536
    """Coordinates per forward pass when evaluating the whole signal (memory bound, not a result)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available, else cpu."""
    threads: int | None = None
    """CPU threads for torch; None = torch's default. On a busy shared machine 1 avoids oversubscription stalls."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the field: on; off; auto = on when the run is long enough to repay the compile time (at least
    2e7 point evaluations in training, or --time-budget >= 60 s). Curvature steps (ESGD, AdaHessian) run eager,
    K-FAC never compiles; the compile time is reported as compile_s and is not training time."""
    seed: int = 0
    """Seed for initialization, mini-batch order and curvature probes."""
    out: Path | None = None
    """Run directory; None = outputs/<file name>/<optim>-<timestamp>/."""
    overwrite: bool = False
    """Replace the run files in an existing --out."""
    resume: bool = False
    """Continue the run in --out from its checkpoint.pt (its config.yaml supplies the defaults)."""
    config: Path | None = None
    """A YAML preset (configs/...); its values are defaults that flags override."""
    viewer: bool = False
    """Serve a live viser view of the fit (reconstruction, target, PSNR curve) on 127.0.0.1."""
    viewer_port: int = 8080
    """Port of the --viewer server."""
    signal: SignalOptions = dataclasses.field(default_factory=SignalOptions)
    """How the file becomes a signal (resize, frames, points, ...)."""

    @property
    def target(self) -> float | None:
        """The generic stopping target: --target-metric, or --target-psnr when only that is given."""
        return self.target_metric if self.target_metric is not None else self.target_psnr


def apply_threads(config: FitConfig) -> None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def resolve(config: FitConfig) -> FitConfig:
    """Fill the per-optimizer defaults (lr, batch size, log interval, output folder) and validate the numbers."""
    validate(config)
    spec = OPTIMIZERS[config.optim]
    lr = config.lr if config.lr is not None else spec.defaults.get("lr")
    sampler, batch_size = config.sampler, config.batch_size
    if sampler is None:
        full = batch_size == 0 or (batch_size is None and (spec.full_batch or config.kilo is not None))
        sampler = "full" if full else "random"
    if batch_size is None:
        batch_size = DEFAULT_MINI_BATCH if sampler == "random" else 0
    int_defaults = INTOptions()
    int_ratio, int_interval = config.int_ratio, config.int_interval
    if sampler == "int":
        int_ratio = int_ratio or int_defaults.ratio
        int_interval = int_interval or int_defaults.interval
    out = config.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("outputs") / (config.path.stem or "signal") / f"{config.optim}-{stamp}"
    resolved = dataclasses.replace(
        config, lr=lr, batch_size=batch_size, sampler=sampler, int_ratio=int_ratio, int_interval=int_interval, out=out
    )
    validate(resolved)
    return resolved


def with_log_interval(config: FitConfig, num_samples: int) -> FitConfig:
    """Fill ``log_every`` when None: once per epoch (every step for the full batch), and at least ~100 logs per run.

    An evaluation costs about one epoch of forward passes, so this keeps its (untimed) overhead bounded."""
    if config.log_every is not None:
        return config
    batch = config.batch_size or num_samples
    steps_per_epoch = -(-num_samples // min(batch, num_samples))
    return dataclasses.replace(config, log_every=max(1, min(steps_per_epoch, config.steps // 100)))


def validate(config: FitConfig) -> None:
    """One clear ValueError naming the flag for any impossible value."""
    if config.path == NO_PATH:
        raise ValueError("no signal file given; usage: nf-fit PATH [--optim ...] (see nf-fit --help)")
    checks = [
        (config.compile != "on" or OPTIMIZERS[config.optim].compiles,
         f"--compile on: --optim {config.optim} hooks or differentiates the field in ways compiled graphs do not "
         "support; use --compile auto or off"),  # fmt: skip
        (config.optim in OPTIMIZERS, f"--optim {config.optim!r} is unknown; choose one of {', '.join(OPTIMIZERS)}"),
        (config.steps >= 1, f"--steps must be >= 1, got {config.steps}"),
        (config.lr is None or config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (config.lr_min >= 0, f"--lr-min must be >= 0, got {config.lr_min}"),
        (config.batch_size is None or config.batch_size >= 0, f"--batch-size must be >= 0 (0 = full batch), got {config.batch_size}"),
        (config.log_every is None or config.log_every >= 1, f"--log-every must be >= 1, got {config.log_every}"),
        (config.checkpoint_every is None or config.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {config.checkpoint_every}"),
        (config.time_budget is None or config.time_budget > 0, f"--time-budget must be > 0 seconds, got {config.time_budget}"),
        (config.threads is None or config.threads >= 1, f"--threads must be >= 1, got {config.threads}"),
        (config.eval_chunk >= 1, f"--eval-chunk must be >= 1, got {config.eval_chunk}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    validate_sampler(config)


INT_FLAGS = ("int_ratio", "int_interval", "int_ratio_start", "int_ratio_end", "int_stages", "int_max_interval")


def int_options(config: FitConfig) -> INTOptions:
    """The INT settings of a config (None keeps the paper's default for the chosen schedule)."""
    defaults = INTOptions()
    return INTOptions(
        ratio=config.int_ratio or defaults.ratio,
        interval=config.int_interval or defaults.interval,
        ratio_start=config.int_ratio_start,
        ratio_end=config.int_ratio_end,
        stages=config.int_stages,
        max_interval=config.int_max_interval,
    )


def validate_sampler(config: FitConfig) -> None:
    """--sampler against --batch-size and the --int-* flags: every combination that cannot mean what it says."""
    sampler, batch_size = config.sampler, config.batch_size
    if sampler in ("full", "int") and batch_size is not None and batch_size > 0:
        what = "every sample" if sampler == "full" else "its own subset of the whole signal (--int-ratio sets its size)"
        raise ValueError(f"--sampler {sampler} trains on {what}; drop --batch-size {batch_size} (or use --sampler random)")
    if sampler == "random" and batch_size == 0:
        raise ValueError("--sampler random needs mini-batches: give --batch-size > 0 (or use --sampler full)")
    if sampler != "int":
        given = [name for name in INT_FLAGS if getattr(config, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} applies only to --sampler int; add --sampler int or drop {flag}")
        return
    options = int_options(config)
    try:
        ratio = make_ratio_schedule(options.ratio, options.ratio_start, options.ratio_end, options.stages)
        make_interval_schedule(options.interval, options.max_interval, options.stages)
    except ValueError as error:  # the core names INTOptions fields; the user typed flags
        raise ValueError(re.sub(r"INTOptions\.(\w+)", lambda m: "--int-" + m.group(1).replace("_", "-"), str(error))) from error
    if min(ratio.ratio(0, config.steps), ratio.ratio(config.steps - 1, config.steps)) >= 1.0:
        values = "--int-ratio-start 1" if options.ratio == "constant" else "--int-ratio-start and --int-ratio-end 1"
        raise ValueError(
            f"--int-ratio {options.ratio} with {values} selects every sample at every step, so --sampler int would "
            "only add error passes to full-batch training; use --sampler full, or a ratio below 1"
        )


def _normalise_keys(values: dict[str, Any], source: Path, cls: type[FitConfig]) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(cls)}
    normalised: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"{source}: unknown setting {key!r}; valid keys are the nf-fit flags ({', '.join(known)})")
        normalised[name] = value
    return normalised


SECTIONS: dict[str, type] = {"field": FieldConfig, "signal": SignalOptions}
"""The nested settings of a ``FitConfig``; presets and config.yaml hold each as a mapping under its name."""


def _section(values: dict[str, Any] | None, name: str, source: Path) -> Any:
    """One nested section (``field:`` or ``signal:``) from a preset's mapping; lists become tuples."""
    cls = SECTIONS[name]
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"{source}: {name!r} must be a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{source}: unknown {name} setting(s) {sorted(unknown)}; valid: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {name}: {error}") from error


def config_from_dict(values: dict[str, Any], source: Path, cls: type[FitConfig] = FitConfig) -> FitConfig:
    """Build a ``FitConfig`` (or a subclass, e.g. nf-bench's) from preset/config.yaml values (lists become tuples,
    paths become Paths)."""
    values = _normalise_keys(values, source, cls)
    sections = {name: _section(values.pop(name, None), name, source) for name in SECTIONS}
    for name in ("path", "out", "config"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    try:
        return cls(**values, **sections)
    except TypeError as error:
        raise ValueError(f"{source}: {error}") from error


def load_preset(path: Path, cls: type[FitConfig] = FitConfig) -> FitConfig:
    """Read a YAML preset; one clear error when the file is missing or not a mapping."""
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of nf-fit settings, got {type(values).__name__}")
    return config_from_dict(values, path, cls)


def to_dict(config: FitConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
