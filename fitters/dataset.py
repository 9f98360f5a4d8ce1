"""``nf-fit DIR`` (or a quoted glob): fit every signal of one modality in a folder, many fields at once.

Flow: list the files, load every one of them (an empty folder, mixed modalities or one unreadable file is refused
before anything is fitted or written), plan the groups, fit each group, write each group's folders, then the
dataset summary.

A group is up to ``--group`` signals of one shape trained together, like the tiles of ``--kilo``: one ``BatchedMLP``
(one batched matmul per layer for every field) driven by the generic ``FitLoop`` through ``FieldsSignal``, the
"one signal per net" counterpart of ``KiloSignal``. Every field keeps its own optimizer state: ``--optim lbfgs`` is
``BatchedLBFGS`` (each field its own curvature history and line search), Adam and SGD are element-wise, so one of
them over the stacked weights is exactly one per field. Optimizers whose statistics would mix the fields (ESGD's
random Hessian probes, K-FAC, Shampoo, ...) are refused. Training is full batch; ``--steps``, ``--time-budget`` and
``--target-psnr`` apply to each group (a target stops a group once its worst field reaches it).

Every field starts from the weights ``nf-fit FILE --seed S`` starts from (``CoordinateMLP`` seeded with ``--seed``)
and trains on its own data with its own optimizer state, so with the batched optimizer's settings (L-BFGS keeps
``history_size`` 20 pairs per field here, see ``OPTIMIZERS``) field i is the single fit of file i, up to rounding:
batched products round a little differently for other group sizes. A group's result depends neither on the order
nor on the machine that fitted it (for the same ``--threads``), and the grouping does not depend on ``--ray``, so a
Ray run reproduces a local one. A shared initialization also keeps the fields' weights comparable, which models
trained on neural-field weights want.

Output folder (``--out``, default ``outputs/<folder>/<optim>-<timestamp>/``)::

    config.yaml                 the resolved settings (``--resume`` reads them)
    summary.json, summary.md    per-signal metrics and their statistics; fields per second
    psnr_histogram.png          (iou_histogram.png for meshes)
    <signal>/                   one per file: config.yaml, metrics.jsonl, summary.json, reconstruction.*,
                                field.safetensors (``fitters.weights.load_field`` gives back the CoordinateMLP)
    .dataset/plan.json          the files and groups; ``--resume`` checks them
    .dataset/done/<group>.json  written after the group's folders are in place: the group is done

A group writes its folders into ``.dataset/partial/<group>/`` and moves them into place only when all are complete,
then marks itself done; ``--resume`` skips done groups and refits any other (a group in progress restarts). In a
signal's files, ``time_s`` and ``closure_evals`` are its group's: the fields trained together.

With ``--ray`` the groups are Ray tasks (``fitters.distributed``): the workers read their group's files and write
its folders themselves, so on a cluster the files and ``--out`` must be on a file system every node sees.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from fitters.build import loop_options
from fitters.cli import EXIT_DIVERGED, EXIT_INTERRUPTED
from fitters.config import FitConfig, apply_threads, resolve, resolve_device, to_dict
from fitters.distributed import LocalEngine, RayEngine, TaskLost, engine_for
from fitters.kilo import tiled_predict
from fitters.loop import FitLoop, FitOutcome, make_predict, run_summary
from fitters.memory import FLOAT_BYTES, memory_available, tiles_bytes
from fitters.run_dir import CONFIG, METRICS, SUMMARY, RunDir, to_plain
from fitters.signals import SIGNAL_MODULES, Predict, Signal, load_signal
from fitters.weights import WEIGHTS_NAME, save_field
from nf_precond.atomic import atomic_path, atomic_write_text
from nf_precond.nn import BatchedMLP, CoordinateMLP
from nf_precond.optim import OPTIMIZERS, build_optimizer
from nf_precond.sampling import FullBatch

GLOB_CHARACTERS = "*?["
LOGS_PER_FIELD = 20
"""Default number of logged evaluations per group (``--log-every`` unset): each one evaluates every field."""
DEFAULT_GROUP = 64
"""Signals per group when ``--group`` is unset (fewer where memory or a CPU's cache asks for it). The same with or
without ``--ray``: fields trained together round alike, so one grouping makes a Ray run reproduce a local one
exactly."""
MEMORY_SHARE = 0.5
"""The default ``--group`` keeps a group's estimated training memory under this share of the device's."""
CPU_LAYER_BYTES = 2**20
"""On a CPU, the default ``--group`` keeps one hidden layer's activations, over all the group's fields, within this
many bytes (about one core's L2 cache): past it a batched layer waits on memory and loses to a loop over the fields
(``benchmarks/results/kilo_profile.md``, ``many_fields.md``). A 64x64 image with a 64-wide field trains alone, a
16x16 tile in a group of 16."""
BOOKKEEPING = ".dataset"
PLAN = "plan.json"
SUMMARY_MD = "summary.md"


# -- the files -----------------------------------------------------------------------------------------------------


def is_dataset_path(path: Path) -> bool:
    """A folder, or a glob pattern (quoted, so nf-fit expands it): what ``nf-fit`` hands to ``fit_dataset``."""
    return Path(path).is_dir() or any(character in str(path) for character in GLOB_CHARACTERS)


def dataset_files(path: Path) -> list[Path]:
    """The signal files of a folder (those with a suffix ``load_signal`` reads; hidden files and others skipped) or
    every file a glob matches, sorted; one clear error when there are none."""
    supported = " ".join(sorted(SIGNAL_MODULES))
    if Path(path).is_dir():
        found = sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))
        files = [p for p in found if p.suffix.lower() in SIGNAL_MODULES]
    else:
        files = sorted(p for p in map(Path, glob.glob(str(path))) if p.is_file())
    if not files:
        raise ValueError(
            f"{path} holds no signal files (supported: {supported}); point nf-fit at a folder of images, audio, "
            "video or meshes, or quote a glob such as 'photos/*.png'"
        )
    return files


def modality(path: Path) -> str:
    """image, audio, video or occupancy: the signal module a file's suffix selects."""
    module = SIGNAL_MODULES.get(path.suffix.lower())
    return module.rsplit(".", 1)[1] if module else path.suffix.lower() or "(no suffix)"


def field_names(files: Sequence[Path]) -> list[str]:
    """One output folder name per file: its stem, or (where stems collide) its path with separators as '__'."""
    stems = Counter(p.stem for p in files)
    names = [p.stem if stems[p.stem] == 1 else "__".join(p.parts[-3:]).replace(":", "_") for p in files]
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(f"two files would share the output folder {repeated[0]!r}; rename one of them")
    return names


# -- the signal the fit loop sees ----------------------------------------------------------------------------------


class FieldsPredict:
    """Evaluates a group's ``BatchedMLP`` on stacked coordinates [N, P, d] (chunked, no graph); ``field(i)``
    evaluates field i alone on any coordinates."""

    def __init__(self, model: BatchedMLP, chunk: int):
        self.model, self.chunk = model, chunk
        self._batched = tiled_predict(model, chunk)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        return self._batched(coords)

    def field(self, index: int) -> Predict:
        return make_predict(self.model.net(index), self.chunk)


class FieldsSignal(Signal):
    """N signals of one shape as one signal for ``FitLoop``: ``coords`` [N, P, d], ``targets`` [N, P, C], and
    ``loss`` one value per field [N] (the signals' own loss, vectorized), which the batched optimizers need.

    ``evaluate`` scores every field with its own signal; the headline value is the worst field's (so a target
    metric stops a group once every field reaches it), ``fields`` holds each field's metrics and ``losses`` each
    field's loss at the evaluated weights.
    """

    def __init__(self, signals: Sequence[Signal]):
        first = signals[0]
        self.signals = list(signals)
        self.kind, self.metric = first.kind, first.metric  # type: ignore[misc]
        same_grid = all(torch.equal(signal.coords, first.coords) for signal in signals[1:])
        coords = [signal.coords for signal in signals]
        self.coords = first.coords.expand(len(signals), -1, -1) if same_grid else torch.stack(coords)
        self.targets = torch.stack([signal.targets for signal in signals])
        self._loss = torch.vmap(first.loss)

    def to(self, device: torch.device | str) -> FieldsSignal:
        self.signals = [signal.to(device) for signal in self.signals]
        self.coords, self.targets = self.coords.to(device), self.targets.to(device)
        return self

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(pred, target)

    def per_sample_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise ValueError("nf-fit DIR trains every field on all its samples; INT selection does not apply")

    def field_predict(self, predict: FieldsPredict, index: int, outputs: torch.Tensor | None = None) -> Predict:
        """Field ``index`` as a predict for its own signal: ``outputs`` (all fields on ``coords``, evaluated once)
        answer for the signal's own samples, asked for whole or in consecutive blocks as signals evaluate (each
        query is checked against the coordinates it claims); anything else (held-out points, meshes) goes through
        the field alone, copied out of the group once."""
        own = self.signals[index].coords
        next_sample, single = 0, None

        def lookup(coords: torch.Tensor) -> torch.Tensor:
            nonlocal next_sample, single
            if outputs is not None:
                start = next_sample if next_sample + len(coords) <= len(own) else 0
                if torch.equal(coords, own[start : start + len(coords)]):
                    next_sample = (start + len(coords)) % len(own)
                    return outputs[index, start : start + len(coords)]
            single = single or predict.field(index)
            return single(coords)

        return lookup

    def field_metrics(self, predict: FieldsPredict, outputs: torch.Tensor, *,
                      final: bool = False) -> list[dict[str, float]]:  # fmt: skip
        """Every field's ``evaluate`` (``final``: ``final_metrics``) by its own signal; ``outputs``: every field on
        ``coords``."""
        return [
            (signal.final_metrics if final else signal.evaluate)(self.field_predict(predict, index, outputs))
            for index, signal in enumerate(self.signals)
        ]

    def evaluate(self, predict: Predict) -> dict[str, Any]:
        outputs = predict(self.coords)
        fields = self.field_metrics(predict, outputs)  # type: ignore[arg-type]
        worst = float(np.min([field[self.metric] for field in fields]))  # NaN if any is NaN: the loop stops
        with torch.no_grad():
            losses = self.loss(outputs, self.targets).cpu().tolist()
        return {self.metric: worst, "fields": fields, "losses": losses}

    def save_reconstruction(self, predict: Predict, out_dir: Any) -> Any:
        raise ValueError("a group of fields has no single reconstruction; fit_group writes one per signal")


def initial_fields(config: FitConfig, in_features: int, out_features: int, count: int,
                   device: torch.device) -> BatchedMLP:  # fmt: skip
    """``count`` copies of the field ``nf-fit FILE --seed S`` starts from (the global RNG is left as it was)."""
    state = torch.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        net = CoordinateMLP(in_features, out_features, config.field)
    finally:
        torch.set_rng_state(state)
    return BatchedMLP.from_nets([net] * count).to(device)


# -- one group -----------------------------------------------------------------------------------------------------


@dataclass
class GroupTask:
    """One group of signals to fit and write: what a Ray task receives (paths, not data)."""

    index: int
    paths: list[Path]
    names: list[str]
    config: FitConfig
    """Resolved, with ``log_every`` filled in."""
    out: Path
    cwd: Path
    """The driver's working folder: relative paths (and ``out``) are read from there, wherever the task runs."""

    @property
    def target(self) -> Path:
        """The output folder as an absolute path."""
        return self.cwd / self.out


@dataclass
class GroupResult:
    index: int
    status: str
    summaries: list[dict[str, Any]]
    """Each signal's summary.json (empty when the group was interrupted and wrote nothing)."""


def group_dir(out: Path, kind: str, index: int) -> Path:
    return out / BOOKKEEPING / kind / f"{index:05d}"


def done_mark(out: Path, index: int) -> Path:
    """The file whose presence says group ``index`` is done (its folders are in place)."""
    return group_dir(out, "done", index).with_suffix(".json")


def field_records(history: Sequence[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """Field ``index``'s metrics.jsonl records from the group's: its own loss (at the logged weights) and metrics at
    every log; time and closure evaluations are the group's."""
    records = []
    for record in history:
        records.append({"step": record["step"], "time_s": record["time_s"], "loss": record["losses"][index],
                        "closure_evals": record["closure_evals"], "lr": record["lr"], **record["fields"][index]})
    return records


def fit_group(task: GroupTask) -> GroupResult:
    """Fit one group of same-shape signals together and write their folders; in this process or as a Ray task."""
    config = task.config
    device = resolve_device(config.device)
    signals = [load_signal(task.cwd / path, config.signal).to(device) for path in task.paths]
    fields = FieldsSignal(signals)
    model = initial_fields(config, fields.in_features, fields.out_features, len(signals), device)
    predict = FieldsPredict(model, config.eval_chunk)
    optimizer = build_optimizer(config.optim, model, batched=True, lr=config.lr)
    loop = FitLoop(fields, model, optimizer, FullBatch(), loop_options(config), predict=predict)
    outcome = loop.run()
    if outcome.status == "interrupted":
        return GroupResult(task.index, outcome.status, [])
    return GroupResult(task.index, outcome.status, write_group(task, fields, predict, outcome, device))


def write_group(task: GroupTask, fields: FieldsSignal, predict: FieldsPredict, outcome: FitOutcome,
                device: torch.device) -> list[dict[str, Any]]:  # fmt: skip
    """Write every signal's folder into the group's staging folder, move them into place, mark the group done."""
    config, staging = task.config, group_dir(task.target, "partial", task.index)
    shutil.rmtree(staging, ignore_errors=True)  # a previous attempt's leftovers (a lost worker, an interruption)
    staging.mkdir(parents=True)
    finals = fields.field_metrics(predict, predict(fields.coords), final=True)
    parameters = config.field.num_parameters(fields.in_features, fields.out_features)
    summaries = []
    for index, (signal, name, path) in enumerate(zip(fields.signals, task.names, task.paths)):
        folder = staging / name
        folder.mkdir()
        records = field_records(outcome.history, index)
        atomic_write_text(folder / METRICS, "".join(json.dumps(to_plain(record)) + "\n" for record in records))
        field_outcome = dataclasses.replace(outcome, history=records, final_metrics=finals[index])
        extra = {"optim": config.optim, "lr": config.lr, "path": str(path), "name": name, "group": task.index,
                 "group_size": len(fields.signals), "weights": WEIGHTS_NAME}  # fmt: skip
        summary = run_summary(signal, field_outcome, parameters, device, extra)
        atomic_write_text(folder / SUMMARY, json.dumps(to_plain(summary), indent=2) + "\n")
        single = dataclasses.replace(config, path=path, out=task.out / name, group=None, ray=None, device=device.type)
        atomic_write_text(folder / CONFIG, yaml_dump(to_dict(single)))
        signal.save_reconstruction(fields.field_predict(predict, index), folder)
        save_field(predict.model.net(index), folder / WEIGHTS_NAME)
        summaries.append(summary)
    for name in task.names:
        final = task.target / name
        if final.exists():  # an earlier attempt of this group got this far: its folder is replaced whole
            shutil.rmtree(final)
        (staging / name).rename(final)
    done = {"group": task.index, "summaries": to_plain(summaries)}
    atomic_write_text(done_mark(task.target, task.index), json.dumps(done, indent=1) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.parent.rmdir()
    except OSError:  # other groups are still writing theirs
        pass
    return summaries


def yaml_dump(values: dict[str, Any]) -> str:
    return yaml.safe_dump(to_plain(values), sort_keys=False)


# -- the plan ------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Which files form which groups; stored as ``.dataset/plan.json`` for ``--resume``."""

    files: list[str]
    names: list[str]
    groups: list[list[int]]
    shapes: list[str]
    """One description per group (e.g. "64x64x3 image")."""

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"


def describe(signal: Signal) -> str:
    """A signal's shape in words, for messages and the summary."""
    shape = [getattr(signal, name) for name in ("height", "width", "channels") if hasattr(signal, name)]
    if len(shape) == 3:
        return f"{shape[0]}x{shape[1]}x{shape[2]} {signal.kind}"
    return f"{signal.num_samples} samples x {signal.out_features} {signal.kind}"


def check_dataset(config: FitConfig) -> None:
    """Refuse the settings that cannot mean what they say for many fields at once."""
    spec = OPTIMIZERS[config.optim]
    if spec.batched is None:
        usable = ", ".join(name for name, value in OPTIMIZERS.items() if value.batched is not None)
        raise ValueError(
            f"nf-fit DIR fits many fields at once with per-field optimizer state: use --optim {usable}; "
            f"--optim {config.optim} would mix the fields' statistics"
        )
    refusals = [
        (config.kilo is not None, f"--kilo {config.kilo} tiles one file; drop it for nf-fit DIR (or fit one file)"),
        (config.coarse is not None, f"--coarse {config.coarse} fits one image; drop it for nf-fit DIR (or fit one file)"),
        (bool(config.batch_size) or config.sampler not in (None, "full"),
         "nf-fit DIR trains every field on all its samples at once; drop --batch-size and --sampler"),
        (config.viewer, "--viewer shows one fit; drop it for nf-fit DIR"),
        (config.compile == "on", "--compile on does not apply to the batched fields of nf-fit DIR; drop it"),
        (config.group is not None and config.group < 1, f"--group must be >= 1 signals, got {config.group}"),
    ]  # fmt: skip
    for refused, message in refusals:
        if refused:
            raise ValueError(message)


def default_out(config: FitConfig) -> Path:
    """outputs/<folder>/<optim>-<timestamp>/, the folder being the one named or the one a glob searches."""
    path = Path(config.path)
    folder = path if path.is_dir() else Path(str(path).split("*")[0].split("?")[0].split("[")[0])
    name = folder.resolve().name if folder.is_dir() else folder.parent.resolve().name
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / (name or "dataset") / f"{config.optim}-{stamp}"


def load_all(files: Sequence[Path], config: FitConfig) -> list[tuple[tuple[Any, ...], str, int, int, int]]:
    """Load every file once (nothing is kept): its shape key, description, points and features. The first
    unreadable file is refused, with how many others are."""
    kinds = Counter(modality(path) for path in files)
    if len(kinds) > 1:
        listed = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        example = sorted({p.suffix.lower() for p in files if modality(p) == kinds.most_common(1)[0][0]})[0]
        raise ValueError(
            f"{config.path} mixes modalities ({listed} files); fit one modality per run, e.g. "
            f"nf-fit '{Path(config.path) / ('*' + example) if Path(config.path).is_dir() else config.path}'"
        )
    shapes, errors = [], []
    for path in files:
        try:
            signal = load_signal(path, config.signal)
        except ValueError as error:
            errors.append(str(error))
            continue
        key = (signal.kind, tuple(signal.coords.shape), tuple(signal.targets.shape))
        shapes.append((key, describe(signal), signal.num_samples, signal.in_features, signal.out_features))
    if errors:
        more = f" (and {len(errors) - 1} more unreadable files)" if len(errors) > 1 else ""
        raise ValueError(f"{errors[0]}{more}; nothing was fitted")
    return shapes


def plan_dataset(config: FitConfig, files: Sequence[Path]) -> Plan:
    """Group the files by shape, in order of first appearance, in groups of ``--group`` (default: ``DEFAULT_GROUP``,
    or as many as fit in ``MEMORY_SHARE`` of the device's memory and, on a CPU, in ``CPU_LAYER_BYTES``)."""
    shapes = load_all(files, config)
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for index, (key, *_rest) in enumerate(shapes):
        by_shape.setdefault(key, []).append(index)
    if len(by_shape) > 1:
        listed = ", ".join(f"{shapes[members[0]][1]}: {len(members)}" for members in by_shape.values())
        print(f"nf-fit: {len(by_shape)} shapes in {config.path} ({listed}); each shape is fitted in its own groups "
              "(--signal.resize H W makes images one shape)", file=sys.stderr)  # fmt: skip
    device = resolve_device(config.device)
    available = memory_available(device)
    groups, descriptions = [], []
    for members in by_shape.values():
        _key, text, points, in_features, out_features = shapes[members[0]]
        per_field = tiles_bytes(1, points, in_features, out_features, config.field, config.optim)
        if config.group is not None:
            size = min(config.group, len(members))
            if size * per_field > available:
                raise ValueError(
                    f"--group {config.group}: {size} fields of {text} need about {size * per_field / 2**30:.1f} GiB "
                    f"to train at once, more than the {available / 2**30:.0f} GiB here; use a smaller --group"
                )
        else:
            fits = int(MEMORY_SHARE * available // per_field)
            if fits < 1:
                raise ValueError(
                    f"one field of {text} needs about {per_field / 2**30:.1f} GiB to train, more than half the "
                    f"{available / 2**30:.0f} GiB here; shrink the signals with --signal.resize or the field (--hidden)"
                )
            size = min(fits, len(members), DEFAULT_GROUP, cache_group(points, config, device))
        for start in range(0, len(members), size):
            groups.append(members[start : start + size])
            descriptions.append(text)
    return Plan([str(path) for path in files], field_names(files), groups, descriptions)


def cache_group(points: int, config: FitConfig, device: torch.device) -> int:
    """The most fields of ``points`` samples whose hidden layer fits ``CPU_LAYER_BYTES`` on a CPU (no bound on CUDA,
    whose batched matmuls are what it is built for)."""
    if device.type != "cpu":
        return DEFAULT_GROUP
    return max(1, CPU_LAYER_BYTES // (points * config.field.hidden * FLOAT_BYTES))


# -- the run -------------------------------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    """What ``run_dataset`` did: every signal's summary (done groups included), and this invocation's cost."""

    out: Path
    summaries: list[dict[str, Any]]
    status: str
    """completed, diverged (some group's loss became NaN/inf), interrupted, or lost (a task failed for good)."""
    fitted: int
    """Signals fitted by this invocation (a resumed run skips the done groups)."""
    wall_s: float
    lost: str | None = None
    """Why a task was lost for good (status "lost"): raised once the groups done are safely in the folder."""


class DatasetDir(RunDir):
    """The output folder of a dataset run, with a single run's lock, --overwrite swap and kill recovery: every entry
    is the run's (per-signal folders, the summary, the bookkeeping), and what --resume needs is the plan."""

    @property
    def checkpoint_path(self) -> Path:
        return self.path / BOOKKEEPING / PLAN

    @staticmethod
    def owns(name: str) -> bool:
        return True


def prepare_out(config: FitConfig, plan: Plan, folder: Path) -> list[int]:
    """Check a resumed run's plan, or start a fresh one in ``folder``; return the indices of the groups already done."""
    bookkeeping = folder / BOOKKEEPING
    if config.resume:
        stored = Plan(**json.loads((bookkeeping / PLAN).read_text(encoding="utf-8")))
        if (stored.files, stored.names) != (plan.files, plan.names):
            raise ValueError(
                f"--resume: {config.out} was planned for other files ({len(stored.files)} then, {len(plan.files)} "
                "now); resume with the same PATH, or start afresh with --overwrite"
            )
        plan.groups, plan.shapes = stored.groups, stored.shapes  # the stored grouping, whatever --group says now
        return [index for index in range(len(plan.groups)) if done_mark(folder, index).is_file()]
    bookkeeping.mkdir(parents=True, exist_ok=True)
    atomic_write_text(bookkeeping / PLAN, plan.as_json())
    return []


def resolve_dataset(config: FitConfig) -> FitConfig:
    """The resolved config of a dataset run: full batch, an output folder named after the folder, ~20 logs."""
    check_dataset(config)
    if config.resume and config.out is None:
        raise ValueError("--resume continues the dataset run in --out; give --out OUT (the folder of the stopped run)")
    out = config.out if config.out is not None else default_out(config)
    config = resolve(dataclasses.replace(config, batch_size=0, sampler="full", out=out))
    if config.log_every is None:
        config = dataclasses.replace(config, log_every=max(1, config.steps // LOGS_PER_FIELD))
    return config


def run_dataset(config: FitConfig, engine: LocalEngine | RayEngine | None = None,
                task: Callable[[GroupTask], GroupResult] = fit_group,
                progress: bool = False) -> DatasetResult:  # fmt: skip
    """Validate everything, plan, fit every group not yet done (``task``, through ``engine``), write the summary.

    ``config`` as parsed (``resolve_dataset`` fills it in); ``engine`` default: from ``--ray``."""
    config = resolve_dataset(config)
    apply_threads(config)
    engine = engine or engine_for(config.ray, threads=config.threads, device=config.device)
    files = dataset_files(config.path)
    plan = plan_dataset(config, files)
    engine.connect()  # before anything is written (an unreachable cluster leaves no folder); not the fit's time
    run_dir = DatasetDir.check(Path(config.out))
    with run_dir.claim(overwrite=config.overwrite, resume=config.resume):
        run_dir.prepare(resume=config.resume)  # --overwrite writes beside the old run until the new one is done
        result = fit_planned(config, plan, run_dir.path, engine, task, progress)
        run_dir.commit()
    if result.lost is not None:
        raise TaskLost(f"{result.lost}; the groups already done are kept in {run_dir.out}: continue with --resume")
    return dataclasses.replace(result, out=run_dir.out)


def fit_planned(config: FitConfig, plan: Plan, out: Path, engine: LocalEngine | RayEngine,
                task: Callable[[GroupTask], GroupResult], progress: bool) -> DatasetResult:  # fmt: skip
    """Fit every group of ``plan`` not yet done into ``out``, then write the dataset summary."""
    done = set(prepare_out(config, plan, out))
    atomic_write_text(out / CONFIG, yaml_dump(to_dict(config)))
    tasks = [
        GroupTask(index, [Path(plan.files[i]) for i in members], [plan.names[i] for i in members], config, out,
                  Path.cwd())
        for index, members in enumerate(plan.groups) if index not in done
    ]  # fmt: skip
    status, fitted, lost = "completed", 0, None
    started = time.perf_counter()
    with tqdm(total=sum(len(t.paths) for t in tasks), unit="field", disable=None if progress else True,
              dynamic_ncols=True, desc="fields") as bar:  # fmt: skip
        try:
            for result in engine.map(task, ((group,) for group in tasks)):
                if result.status == "interrupted":
                    status = "interrupted"
                    break
                fitted += len(result.summaries)
                bar.update(len(result.summaries))
                if result.status == "diverged":
                    status = "diverged"
        except KeyboardInterrupt:
            status = "interrupted"
        except TaskLost as error:
            status, lost = "lost", str(error)
    wall_s = time.perf_counter() - started
    summaries = read_summaries(out, len(plan.groups))
    write_dataset_summary(out, config, summaries, plan, fitted, wall_s)
    return DatasetResult(out, summaries, status, fitted, wall_s, lost)


def read_summaries(out: Path, groups: int) -> list[dict[str, Any]]:
    summaries = []
    for index in range(groups):
        done = done_mark(out, index)
        if done.is_file():
            summaries += json.loads(done.read_text(encoding="utf-8"))["summaries"]
    return summaries


# -- the dataset summary -------------------------------------------------------------------------------------------


def write_dataset_summary(out: Path, config: FitConfig, summaries: list[dict[str, Any]], plan: Plan, fitted: int,
                          wall_s: float) -> None:  # fmt: skip
    """summary.json (statistics and one row per signal), summary.md (the table) and the metric's histogram."""
    metric = summaries[0]["metric"] if summaries else "psnr"
    values = [s[metric] for s in summaries if s.get(metric) is not None and math.isfinite(s[metric])]
    group_time = {s["group"]: s["time_s"] for s in summaries}
    stats = {
        "mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values), "max": max(values),
    } if values else {}  # fmt: skip
    report = {
        "path": str(config.path), "signals": len(plan.files), "fitted": len(summaries), "groups": len(plan.groups),
        "metric": metric, **{f"{metric}_{key}": value for key, value in stats.items()},
        "optim": config.optim, "lr": config.lr, "steps": config.steps, "seed": config.seed,
        "field": f"{config.field.layers}x{config.field.hidden} {config.field.activation}",
        "train_time_s": round(sum(group_time.values()), 6),
        "wall_time_s": round(wall_s, 6), "fields_per_s": fitted / wall_s if fitted and wall_s > 0 else None,
        "status": dict(Counter(s["status"] for s in summaries)), "ray": config.ray,
        "fields": [{key: s.get(key) for key in ("name", "path", metric, "ssim", "status", "steps", "group", "time_s")}
                   for s in summaries],
    }  # fmt: skip
    atomic_write_text(out / SUMMARY, json.dumps(to_plain(report), indent=1) + "\n")
    atomic_write_text(out / SUMMARY_MD, summary_markdown(report))
    if values:
        histogram(values, metric, out / f"{metric}_histogram.png", f"{len(values)} fields of {config.path}")


def summary_markdown(report: dict[str, Any]) -> str:
    metric = report["metric"]
    stats = " / ".join(f"{report.get(f'{metric}_{key}', math.nan):.2f}" for key in ("mean", "median", "min", "max"))
    speed = f"{report['fields_per_s']:.3g} fields/s" if report["fields_per_s"] else "no field fitted by this run"
    lines = [
        f"# {report['path']}",
        "",
        f"{report['fitted']} of {report['signals']} signals fitted in {report['groups']} groups; {report['field']}, "
        f"--optim {report['optim']} (lr {report['lr']:g}), {report['steps']} steps, seed {report['seed']}.",
        f"{metric} mean / median / min / max: {stats}. This run: {speed} ({report['wall_time_s']:.1f} s wall).",
        "",
        f"| signal | {metric} | ssim | steps | status | group |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["fields"]:
        ssim = f"{row['ssim']:.4f}" if row.get("ssim") is not None else "–"
        cells = [row["name"], f"{row[metric]:.2f}", ssim, row["steps"], row["status"], row["group"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def histogram(values: Sequence[float], metric: str, final: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120, layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(values, bins=min(30, max(5, len(values) // 4)), color="tab:blue", edgecolor="white")
    axes.set_xlabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
    axes.set_ylabel("signals")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    with atomic_path(final) as temporary:
        figure.savefig(temporary)


# -- the command line ----------------------------------------------------------------------------------------------


def fit_dataset(config: FitConfig) -> int:
    """``nf-fit DIR``: run, then one line on stdout (or stderr with the exit status for divergence/interruption)."""
    result = run_dataset(config, progress=True)
    again = f"nf-fit '{config.path}' --out {result.out} --resume"
    if result.status == "interrupted":
        print(f"nf-fit: interrupted; the groups already done are kept in {result.out}; continue with: {again}",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    diverged = [s["name"] for s in result.summaries if s["status"] == "diverged"]
    if diverged:
        print(
            f"nf-fit: error: the loss became NaN/inf for the group(s) of {', '.join(diverged[:5])}"
            f"{' ...' if len(diverged) > 5 else ''}; their folders hold the last good fields; lower --lr and rerun "
            "with --overwrite", file=sys.stderr,
        )  # fmt: skip
        return EXIT_DIVERGED
    metric = result.summaries[0]["metric"]
    values = [s[metric] for s in result.summaries]
    print(f"nf-fit: fitted {result.fitted} of {len(result.summaries)} signals in {result.wall_s:.1f} s; {metric} "
          f"mean {statistics.fmean(values):.4g} (min {min(values):.4g}, max {max(values):.4g}); "
          f"wrote {result.out}")  # fmt: skip
    return 0
