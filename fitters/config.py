"""``FitConfig``: every setting of one fit; ``nf-fit --help`` is generated from it by tyro.

Presets (``configs/**/*.yaml``, given as ``--config FILE``) hold the same keys as this dataclass (``batch_size`` or
``batch-size``; nested ``signal: {resize: [128, 128]}``); their values become the defaults and command-line flags
override them. What neither sets comes, in this order, from the signal type's paper defaults
(``fitters.signals.defaults``), the optimizer's (``nf_precond.optim.OPTIMIZERS``) and this dataclass; ``resolve``
fills them and records in ``provenance`` where each setting came from (config.yaml shows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import re
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
import yaml

from fitters.memory import safe_batch_size
from fitters.signals import Signal, SignalOptions, signal_kind
from fitters.signals.base import PROGRESS_SAMPLES
from fitters.signals.defaults import DEFAULTS, defaults_help, fit_omega0
from nf_precond.nn import FieldConfig
from nf_precond.optim import OPTIMIZERS, OptimizerName
from nf_precond.sampling import INTOptions, make_interval_schedule, make_ratio_schedule
from nf_precond.sampling.schedules import INTERVAL_SCHEDULES, RATIO_SCHEDULES

DEFAULT_MINI_BATCH = 512
"""Paper 2's mini-batch size for every stochastic optimizer (image experiments)."""
NO_PATH = Path("")
"""Placeholder for the positional PATH while a preset is loaded; ``validate`` insists on a real one."""


def _ray_address(values: list[str]) -> str:
    if len(values) > 1:
        raise ValueError(f"--ray takes at most one ADDRESS, got {' '.join(values)}; put PATH before --ray")
    return values[0] if values else "local"


RayAddress = Annotated[
    str | None,
    tyro.constructors.PrimitiveConstructorSpec(
        nargs="*", metavar="[ADDRESS]", instance_from_str=_ray_address, is_instance=lambda value: isinstance(value, str),
        str_from_instance=lambda value: [value],
    ),
]
"""``--ray`` alone means "local" (a Ray runtime on this machine); ``--ray HOST:PORT`` names a cluster."""


@dataclass
class FitConfig:
    """Fit a neural field to PATH (image, audio, video or mesh; the type comes from the file suffix)."""

    path: tyro.conf.Positional[Path] = NO_PATH
    """The signal file: .png/.jpg (image), .wav/.flac (audio), .mp4/.avi/.mov (video), .obj/.ply/.off/.stl (mesh); or a
    folder (or a quoted glob) of files of one kind, each fitted with its own field (see --group, --ray)."""
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
    steps: int | None = None
    """Optimizer steps to take (one L-BFGS iteration per step); with --resume, the total including earlier steps.
    None = the signal type's default, or no step limit when --time-budget is given (unless --lr-schedule cosine or
    --sampler int need a length)."""
    time_budget: float | None = None
    """Stop after this many seconds of training time (evaluation, logging and checkpoints excluded, so runs compare
    at equal training time); None = no limit. The run also stops at --wall-budget."""
    wall_budget: float | None = None
    """Stop once the loop's wall time (training, evaluation, logging, checkpoints) reaches this many seconds; None =
    1.5x --time-budget (no wall limit without one), so a run ends close to its budget whatever evaluation costs."""
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
    coarse: str | None = None
    """Images: fit smaller copies first, FACTOR:SECONDS pairs in order (e.g. 2:8 = 8 s on a half-size copy, or
    4:3,2:6), then the image; the seconds come out of --time-budget, each phase with a fresh --optim, full batch.
    With L-BFGS on 256² photos, 2:8 reached Adam's 60-s PSNR 2.8x sooner than Adam vs 1.7x without
    (benchmarks/results/coarse_to_fine.md). None = fit the image from the start."""
    kilo: str | None = None
    """Fit in tiles, one tiny MLP per tile, all trained at once (paper 1 KiloImage/KiloVideo): tile counts per axis,
    ROWSxCOLUMNS for images (e.g. 16x16), FRAMESxROWSxCOLUMNS for video (e.g. 4x8x8); full batch per tile;
    --optim lbfgs, adam or sgd. A count that does not divide the size pads the far end (see fitters/kilo.py)."""
    kilo_group: int | None = None
    """--kilo: train this many tiles at a time, group after group, sharing --time-budget by tile count (bounded memory
    for huge signals; on a CPU, groups of ~16 4x64 tiles also train 2.6-3.6x faster than all at once, see
    benchmarks/results/kilo_profile.md); None = all at once (the choice for a GPU, and the only one --resume takes)."""
    group: int | None = None
    """nf-fit DIR: signals of one shape fitted at once in one batched model, and the unit of work of --ray (bounds
    memory); None = 64, fewer where memory asks for it and, on a CPU, as many as keep a layer's activations
    cache-sized (one 64x64 image with a 64-wide field; fitters/dataset.py)."""
    ray: RayAddress = None
    """Run groups (of signals for nf-fit DIR, of tiles for --kilo-group, nf-bench runs) as Ray tasks: --ray alone on
    this machine, --ray HOST:PORT on an existing cluster (needs the ray extra; see README, "Scale-out on Ray")."""
    log_every: int | None = None
    """Log every N steps (and always at the end); most logs measure a fixed random subset of the signal, the whole
    signal is measured at the end and every minute or so. None = once per epoch, at least every steps/100, but never
    so often that logging costs more than about a tenth of training (full batch: every few steps)."""
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
    K-FAC never compiles; --kilo compiles when all tiles train at once (not with --kilo-group); the compile time is
    reported as compile_s and is not training time."""
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
    provenance: tyro.conf.Suppress[dict[str, str] | None] = None
    """Where each setting came from, by dotted key: flag, preset, given (set in code, or a flag nf-fit did not
    record), "<signal> default", "<optimizer> default", derived, nf-fit default. Filled by ``resolve``; not a flag."""

    @property
    def target(self) -> float | None:
        """The generic stopping target: --target-metric, or --target-psnr when only that is given."""
        return self.target_metric if self.target_metric is not None else self.target_psnr


# --help lists the per-signal defaults from their one source, after the class's own description.
FitConfig.__doc__ = f"{FitConfig.__doc__}\n\n{defaults_help()}"


def apply_threads(config: FitConfig) -> None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


UNLIMITED_STEPS = 10**9
"""--steps of a run bounded by --time-budget alone."""
WALL_BUDGET_FACTOR = 1.5
"""--wall-budget defaults to this multiple of --time-budget."""
LOG_COST_SHARE = 0.1
"""A log's evaluation (forward passes over the progress subset) costs about this share of the training between two
logs (forward and backward, ~3 forward passes per sample): logging keeps a run's wall time close to its budget."""
SECTIONED = ("field", "signal")
"""FitConfig's nested settings; their keys are dotted (``field.hidden``) in ``provenance``."""


def flatten(config: FitConfig) -> dict[str, Any]:
    """Every setting of ``config`` by dotted key (``steps``, ``field.hidden``, ``signal.resize``), provenance aside."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in (*SECTIONED, "provenance")}
    for section in SECTIONED:
        values.update({f"{section}.{key}": value for key, value in dataclasses.asdict(getattr(config, section)).items()})
    return values


def unflatten(config: FitConfig, values: dict[str, Any], provenance: dict[str, str]) -> FitConfig:
    """``config`` with the dotted ``values`` (a nested section that cannot take them raises its own ValueError)."""
    top = {key: value for key, value in values.items() if "." not in key}
    sections = {
        section: type(getattr(config, section))(
            **{key.split(".", 1)[1]: value for key, value in values.items() if key.startswith(section + ".")}
        )
        for section in SECTIONED
    }
    return dataclasses.replace(config, **top, **sections, provenance=provenance)


def preset_keys(path: Path | None) -> set[str]:
    """The dotted keys a --config preset sets (empty without one)."""
    if path is None or not Path(path).is_file():
        return set()
    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    keys = set()
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in SECTIONED and isinstance(value, dict):
            keys.update(f"{name}.{str(inner).replace('-', '_')}" for inner in value)
        else:
            keys.add(name)
    return keys


def chosen_settings(config: FitConfig) -> dict[str, str]:
    """The settings the user chose, by dotted key, with where each came from: those ``provenance`` records (flags
    nf-fit parsed, a resumed run's config.yaml), the --config preset's keys, every setting of a resumed run, and any
    setting that differs from FitConfig's own default (settings made in code, unrecorded flags)."""
    values, plain = flatten(config), flatten(FitConfig())
    chosen = dict(config.provenance or {})
    for key in preset_keys(config.config):
        chosen.setdefault(key, "preset")
    for key, value in values.items():
        if config.resume or key not in plain or value != plain[key]:
            chosen.setdefault(key, "given")
    return chosen


def record_flags(config: FitConfig, argv: Sequence[str]) -> FitConfig:
    """``config`` (as parsed from ``argv``) with every setting a flag in ``argv`` set recorded as "flag" in its
    provenance, so that a flag equal to FitConfig's default still wins over the signal type's default."""
    names = {f"--{key.split('.', 1)[1] if key.startswith('field.') else key}".replace("_", "-"): key
             for key in flatten(config)}  # fmt: skip
    provenance = dict(config.provenance or {})
    for token in argv:
        flag = str(token).split("=", 1)[0]
        key = names.get(flag) or names.get("--" + flag[len("--no-"):]) if flag.startswith("--") else None
        if key is not None:
            provenance[key] = "flag"
    return dataclasses.replace(config, provenance=provenance)


def resolve(config: FitConfig) -> FitConfig:
    """Fill every setting the user left unset, and validate the numbers: first the signal type's paper defaults
    (``fitters.signals.defaults``, for the file's suffix and the optimizer), then the optimizer's (lr; batch: full for
    L-BFGS and --kilo, ``DEFAULT_MINI_BATCH`` otherwise), then the derived ones (sampler, steps and wall time under
    --time-budget, output folder). ``provenance`` says, for every setting, where it came from."""
    validate(config)
    chosen = chosen_settings(config)
    values, provenance = flatten(config), dict(chosen)

    def fill(key: str, value: Any, source: str) -> None:
        if key not in chosen:
            values[key], provenance[key] = value, source

    kind = signal_kind(config.path)
    if kind is not None:
        for key, value in DEFAULTS[kind].for_optimizer(config.optim).items():
            fill(key, value, f"{kind} default")
        if "field.omega0" not in chosen:
            values["field.omega0"] = fit_omega0(values["field.omega0"], values["field.layers"])
    spec = OPTIMIZERS[config.optim]
    if values["lr"] is None:
        values["lr"], provenance["lr"] = spec.defaults.get("lr"), f"{config.optim} default"
    if values["sampler"] is None:
        batch_size = values["batch_size"]
        full = batch_size == 0 or (batch_size is None and (spec.full_batch or config.kilo is not None))
        values["sampler"], provenance["sampler"] = ("full" if full else "random"), "derived (--batch-size, --optim)"
    if values["batch_size"] is None:
        values["batch_size"] = DEFAULT_MINI_BATCH if values["sampler"] == "random" else 0
        provenance["batch_size"] = f"{config.optim} default"
    if values["sampler"] == "int":
        int_defaults = INTOptions()
        fill("int_ratio", values["int_ratio"] or int_defaults.ratio, "INT default (paper 3)")
        fill("int_interval", values["int_interval"] or int_defaults.interval, "INT default (paper 3)")
    schedules_need_length = values["lr_schedule"] == "cosine" or values["sampler"] == "int"
    if config.time_budget is not None and "steps" not in chosen and not schedules_need_length:
        values["steps"], provenance["steps"] = UNLIMITED_STEPS, "derived (--time-budget without --steps)"
    if values["steps"] is None:  # a file type nf-fit cannot read: loading it names the problem
        values["steps"], provenance["steps"] = 1000, "nf-fit default"
    if config.time_budget is not None and values["wall_budget"] is None:
        values["wall_budget"] = WALL_BUDGET_FACTOR * config.time_budget
        provenance["wall_budget"] = f"derived ({WALL_BUDGET_FACTOR:g}x --time-budget)"
    if values["out"] is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        values["out"] = Path("outputs") / (config.path.stem or "signal") / f"{config.optim}-{stamp}"
        provenance["out"] = "derived (outputs/<file>/<optim>-<time>)"
    for key in values:
        provenance.setdefault(key, "nf-fit default")
    resolved = unflatten(config, values, provenance)
    validate(resolved)
    return resolved


def with_log_interval(config: FitConfig, num_samples: int) -> FitConfig:
    """Fill ``log_every`` when None: once per epoch and at least ~100 logs per run, but never so often that a log's
    evaluation of the progress subset (``PROGRESS_SAMPLES``, or the whole signal if smaller) costs more than
    ``LOG_COST_SHARE`` of the training between two logs: the cadence scales with the signal and the batch."""
    if config.log_every is not None:
        return config
    batch = min(config.batch_size or num_samples, num_samples)
    steps_per_epoch = -(-num_samples // batch)
    cost_floor = math.ceil(min(num_samples, PROGRESS_SAMPLES) / (LOG_COST_SHARE * 3 * batch))
    log_every = max(cost_floor, min(steps_per_epoch, max(1, config.steps // 100)))
    provenance = {**(config.provenance or {}), "log_every": "derived (signal size, batch)"}
    return dataclasses.replace(config, log_every=log_every, provenance=provenance)


def fit_to_signal(config: FitConfig, signal: Signal) -> FitConfig:
    """The settings that depend on the loaded signal: a memory-safe mini-batch when the full batch was only a default
    and would not fit (a chosen full batch is left to ``check_fits``, which names the flags), then ``log_every``."""
    chosen = chosen_settings(config) if config.provenance is None else config.provenance
    defaulted = not chosen.get("batch_size", "").startswith(("flag", "preset", "given"))
    if config.kilo is None and config.batch_size == 0 and config.sampler == "full" and defaulted:
        batch = safe_batch_size(signal, config.field, signal.device)
        if batch is not None:
            provenance = {**(config.provenance or {}), "batch_size": "memory guard (the full batch would not fit)",
                          "sampler": "memory guard (the full batch would not fit)"}  # fmt: skip
            config = dataclasses.replace(config, batch_size=batch, sampler="random", provenance=provenance)
    return with_log_interval(config, signal.num_samples)


def validate(config: FitConfig) -> None:
    """One clear ValueError naming the flag for any impossible value."""
    if config.path == NO_PATH:
        raise ValueError("no signal file given; usage: nf-fit PATH [--optim ...] (see nf-fit --help)")
    for flag, value in _non_finite(config):
        raise ValueError(f"{flag} {value}: numbers must be finite (not nan or inf); give a finite value or leave {flag} out")
    cosine_up = config.lr_schedule == "cosine" and config.lr is not None and config.lr_min > config.lr
    checks = [
        (config.compile != "on" or OPTIMIZERS[config.optim].compiles,
         f"--compile on: --optim {config.optim} hooks or differentiates the field in ways compiled graphs do not "
         "support; use --compile auto or off"),  # fmt: skip
        (config.optim in OPTIMIZERS, f"--optim {config.optim!r} is unknown; choose one of {', '.join(OPTIMIZERS)}"),
        (config.steps is None or config.steps >= 1, f"--steps must be >= 1, got {config.steps}"),
        (config.lr is None or config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (config.lr_min >= 0, f"--lr-min must be >= 0, got {config.lr_min}"),
        (config.batch_size is None or config.batch_size >= 0, f"--batch-size must be >= 0 (0 = full batch), got {config.batch_size}"),
        (config.log_every is None or config.log_every >= 1, f"--log-every must be >= 1, got {config.log_every}"),
        (config.checkpoint_every is None or config.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {config.checkpoint_every}"),
        (config.time_budget is None or config.time_budget > 0, f"--time-budget must be > 0 seconds, got {config.time_budget}"),
        (config.wall_budget is None or config.wall_budget > 0, f"--wall-budget must be > 0 seconds, got {config.wall_budget}"),
        (config.threads is None or config.threads >= 1, f"--threads must be >= 1, got {config.threads}"),
        (config.eval_chunk >= 1, f"--eval-chunk must be >= 1, got {config.eval_chunk}"),
        (not cosine_up, f"--lr-min {config.lr_min:g} is above --lr {config.lr or 0:g}, so --lr-schedule cosine would "
                        "raise the lr; give --lr-min below --lr"),
        (1 <= config.viewer_port <= 65535, f"--viewer-port must be a port from 1 to 65535, got {config.viewer_port}"),
        (not (config.resume and config.overwrite), "--resume continues the run in --out, --overwrite replaces it; "
                                                   "drop one of them"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if config.coarse is not None:
        parse_coarse(config.coarse)
    validate_sampler(config)


def parse_coarse(text: str) -> list[tuple[int, float]]:
    """``"4:3,2:6"`` -> ``[(4, 3.0), (2, 6.0)]``: shrink factors (integers >= 2) and seconds (> 0), in order."""
    try:
        phases = [(int(factor), float(seconds)) for factor, seconds in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise ValueError(f"--coarse {text!r}: give FACTOR:SECONDS pairs separated by commas, e.g. --coarse 2:8") from None
    if any(factor < 2 or seconds <= 0 for factor, seconds in phases):
        raise ValueError(f"--coarse {text!r}: every factor must be an integer >= 2 and every time > 0 seconds")
    return phases


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
    if config.steps is not None and min(ratio.ratio(0, config.steps), ratio.ratio(config.steps - 1, config.steps)) >= 1.0:
        values = "--int-ratio-start 1" if options.ratio == "constant" else "--int-ratio-start and --int-ratio-end 1"
        raise ValueError(
            f"--int-ratio {options.ratio} with {values} selects every sample at every step, so --sampler int would "
            "only add error passes to full-batch training; use --sampler full, or a ratio below 1"
        )


def _non_finite(config: FitConfig) -> Iterator[tuple[str, Any]]:
    """(flag, value) of every NaN or infinite number in ``config`` and its sections (tuples of numbers included)."""
    for settings, prefix in ((config, "--"), (config.field, "--"), (config.signal, "--signal.")):
        for f in dataclasses.fields(settings):
            value = getattr(settings, f.name)
            items = value if isinstance(value, tuple) else (value,)
            if any(isinstance(item, float) and not math.isfinite(item) for item in items):
                yield prefix + f.name.replace("_", "-"), value


INTEGER = re.compile(r"\s*[-+]?\d+\s*")
PLAIN_TYPES = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("text", "texts"), Path: ("a path", "paths")}  # fmt: skip
"""What a preset value of each plain type must be (one, several), in the words of the error messages."""


class _Mismatch(Exception):
    """A preset value that is not of its setting's type; ``expected`` says what would be."""

    def __init__(self, expected: str):
        self.expected = expected


def _plain(value: Any, hint: type) -> Any:
    """``value`` as a ``hint`` (one of ``PLAIN_TYPES``) the way its flag reads text, or None if it is not one."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool:
        return value if isinstance(value, bool) else None
    if hint is int:
        text = isinstance(value, str) and INTEGER.fullmatch(value)
        return int(value) if text or number and isinstance(value, int) else None
    if hint is float:
        with contextlib.suppress(TypeError, ValueError):
            return float(value) if number or isinstance(value, str) else None
        return None
    if hint is str:
        return str(value) if number or isinstance(value, str) else None
    return Path(value) if isinstance(value, (str, Path)) else None


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as the setting typed ``hint`` holds it, read the way its flag's text is (``"5"`` for an int is 5;
    ``1e-3``, which YAML reads as text, is 0.001 for a float; one number for a tuple is a tuple of one)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        expected = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _convert(value, option)
            except _Mismatch as mismatch:
                expected.append(mismatch.expected)
        raise _Mismatch(" or ".join(expected + (["null"] if type(None) in args else [])))
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):  # YAML reads a bare on/off as true/false
            value = "on" if value else "off"
        if isinstance(value, str) and value in args:
            return value
        raise _Mismatch("one of " + ", ".join(map(str, args)))
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        kinds = [arg for arg in args if arg is not Ellipsis]
        count = None if Ellipsis in args else len(args)
        plural = PLAIN_TYPES[kinds[0]][1] if len(set(kinds)) == 1 and kinds[0] in PLAIN_TYPES else "values"
        expected = f"a list of {'' if count is None else f'{count} '}{plural}"
        if count is not None and len(items) != count:
            raise _Mismatch(expected)
        item_types = [kinds[0]] * len(items) if count is None else kinds
        try:
            return tuple(_convert(item, kind) for item, kind in zip(items, item_types))
        except _Mismatch:
            raise _Mismatch(expected) from None
    if hint in PLAIN_TYPES:
        converted = _plain(value, hint)
        if converted is None:
            raise _Mismatch(PLAIN_TYPES[hint][0])
        return converted
    return value  # any other type: its dataclass checks it


def _typed(values: dict[str, Any], cls: type, source: Path, prefix: str, flag_prefix: str) -> dict[str, Any]:
    """Preset ``values`` converted to ``cls``'s field types, or one ValueError naming the setting and its flag."""
    hints = typing.get_type_hints(cls)
    typed = {}
    for name, value in values.items():
        try:
            typed[name] = _convert(value, hints[name])
        except _Mismatch as mismatch:
            flag = flag_prefix + name.replace("_", "-")
            raise ValueError(f"{source}: {prefix}{name}: expected {mismatch.expected} (as for {flag}), got {value!r}") from None
    return typed


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
SECTION_FLAGS = {"field": "--", "signal": "--signal."}
"""How each section's flags are spelled (the field's have no prefix: --hidden, not --field.hidden)."""


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
    values = _typed(values, cls, source, f"{name}.", SECTION_FLAGS[name])
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {name}: {error}") from error


def config_from_dict(values: dict[str, Any], source: Path, cls: type[FitConfig] = FitConfig) -> FitConfig:
    """Build a ``FitConfig`` (or a subclass, e.g. nf-bench's) from preset/config.yaml values, each checked against
    its setting's type and read as its flag would be (lists become tuples, paths become Paths)."""
    values = _normalise_keys(values, source, cls)
    sections = {name: _section(values.pop(name, None), name, source) for name in SECTIONS}
    values = _typed(values, cls, source, "", "--")
    try:
        return cls(**values, **sections)
    except TypeError as error:
        raise ValueError(f"{source}: {error}") from error


def load_preset(path: Path, cls: type[FitConfig] = FitConfig) -> FitConfig:
    """Read a YAML preset; one clear error when the file is missing or not a mapping."""
    if path.is_dir():
        raise ValueError(f"--config {path} is a folder; give a YAML preset file (e.g. one from configs/)")
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read it ({error.strerror}); check its permissions") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path}: not a text file (not UTF-8); give a YAML preset") from error
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of nf-fit settings, got {type(values).__name__}")
    return config_from_dict(values, path, cls)


def to_dict(config: FitConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
