"""Kilo tiling (paper 1 §5.2 KiloImage, supp. §4.5 KiloVideo): one tiny MLP per cell of a grid over the signal.

``nf-fit photo.png --kilo 16x16`` splits an image into 16 x 16 tiles (``--kilo 4x8x8``: a video into 4 x 8 x 8 blocks
of frames x rows x columns), fits every tile with its own small field on local coordinates in [-1, 1], and stitches
the tiles' outputs into one reconstruction. All tiles of a group train at once: one ``BatchedMLP`` (one batched
matmul per layer for every tile) driven by one optimizer (``BatchedLBFGS`` for ``--optim lbfgs``: each tile keeps
its own curvature history and line search; Adam and SGD are element-wise, so one of them over the stacked weights is
exactly one per tile). The generic ``FitLoop`` runs each group; ``KiloSignal`` is the signal it sees.

Padding: a tile count that does not divide an axis pads that axis at its far end (bottom rows, right columns, last
frames) by repeating the last sample, up to ``tiles * ceil(size / tiles)``, so every tile has the same number of
points (one batched matmul needs that). Padded samples are trained on (a flat continuation costs the tile little)
and cropped from the reconstruction and every metric. A count that would leave a tile with nothing but padding is
refused with the largest count that works.

Streaming: ``--kilo-group G`` trains G tiles at a time, group after group, each to the end of its steps (and its
share of ``--time-budget``, in proportion to its tiles); only the current group's field, optimizer state and
activations are alive, so peak memory is bounded by G, not by the image (the signal, the stitched reconstruction and
the final weights, all proportional to the pixels, are kept). On a CPU small groups are also faster: a group whose
L-BFGS history stays in the caches (tens of MB: ~16 4x64 tiles) took 2.6-3.6x less time per iteration than all
tiles at once in ``benchmarks/results/kilo_profile.md``, where the history of 1024 tiles (2.2 GB) streams through
memory every iteration.

Scale-out: with ``--ray`` the groups are Ray tasks (``fitters.distributed``). A task gets its group's tiles and
initial weights (not the whole signal) and returns its outcome, predictions and trained weights; the driver stitches
them in group order, so the run writes what the local run writes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from fitters import metrics
from fitters.config import resolve_device
from fitters.distributed import LocalEngine, RayEngine
from fitters.loop import FitLoop, FitOutcome, LogCallback, LoopOptions, run_summary
from fitters.run_dir import RunDir
from fitters.signals import Predict, Signal, SignalError
from fitters.memory import check_tiles_fit
from nf_precond.nn import BatchedMLP, FieldConfig, compiled_field
from nf_precond.optim import build_optimizer, needs_graph
from nf_precond.sampling import FullBatch

AXIS_NAMES = {"image": ("rows", "columns"), "video": ("frames", "rows", "columns")}

# -- the grid ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a signal's sample grid. ``shape`` is the grid in array order ((H, W) or (T, H, W)); coordinate
    column k of the signal indexes array axis ``coord_axes[k]`` (images store (x, y), so (1, 0)); rows of the signal
    are the grid in C order."""

    shape: tuple[int, ...]
    tiles: tuple[int, ...]
    coord_axes: tuple[int, ...]

    @property
    def tile_shape(self) -> tuple[int, ...]:
        return tuple(-(-size // count) for size, count in zip(self.shape, self.tiles))

    @property
    def num_tiles(self) -> int:
        return math.prod(self.tiles)

    @property
    def points_per_tile(self) -> int:
        return math.prod(self.tile_shape)

    def _strides(self) -> list[int]:
        return [math.prod(self.shape[axis + 1 :]) for axis in range(len(self.shape))]

    def tile_rows(self, tile_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For tiles ``tile_ids`` [n]: the signal row of every tile point [n, P] (padding repeats the last sample of
        the axis) and whether the point is a real sample rather than padding [n, P]."""
        device = tile_ids.device
        tile_shape = torch.tensor(self.tile_shape, device=device)
        tile_index = torch.stack(torch.unravel_index(tile_ids, self.tiles), dim=-1)  # [n, d]
        offsets = torch.stack(torch.unravel_index(torch.arange(self.points_per_tile, device=device), self.tile_shape), -1)
        position = tile_index[:, None, :] * tile_shape + offsets[None]  # [n, P, d]
        size = torch.tensor(self.shape, device=device)
        real = (position < size).all(dim=-1)
        clamped = torch.minimum(position, size - 1)
        rows = (clamped * torch.tensor(self._strides(), device=device)).sum(dim=-1)
        return rows, real

    def local_coords(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[P, d] coordinates of a tile's points in [-1, 1], columns in the signal's coordinate order."""
        axes = [torch.linspace(-1.0, 1.0, size, device=device) if size > 1 else torch.full((1,), -1.0, device=device)
                for size in self.tile_shape]  # fmt: skip
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(self.shape))
        return grid[:, list(self.coord_axes)]

    def split(self, values: torch.Tensor, tile_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Signal rows [num_samples, C] as tiles [n, P, C] (all tiles, or ``tile_ids``)."""
        ids = torch.arange(self.num_tiles, device=values.device) if tile_ids is None else tile_ids.to(values.device)
        rows, _ = self.tile_rows(ids)
        return values[rows]

    def stitch_into(self, out: torch.Tensor, tiled: torch.Tensor, tile_ids: torch.Tensor) -> None:
        """Write tiles ``tiled`` [n, P, C] of ``tile_ids`` into the signal rows ``out`` [num_samples, C] (padding
        dropped)."""
        rows, real = self.tile_rows(tile_ids.to(out.device))
        out[rows[real]] = tiled[real.to(tiled.device)].to(out.device, out.dtype)

    def stitch(self, tiled: torch.Tensor) -> torch.Tensor:
        """All tiles [N, P, C] back as signal rows [num_samples, C]."""
        out = tiled.new_empty(math.prod(self.shape), tiled.shape[-1])
        self.stitch_into(out, tiled, torch.arange(self.num_tiles, device=tiled.device))
        return out

    def rows_of(self, coords: torch.Tensor) -> torch.Tensor:
        """The signal rows [M] of grid coordinates [M, d] (each axis sampled as linspace(-1, 1, size))."""
        rows = torch.zeros(coords.shape[0], dtype=torch.long, device=coords.device)
        for column, axis in enumerate(self.coord_axes):
            size = self.shape[axis]
            index = ((coords[:, column] + 1) * ((size - 1) / 2)).round().long().clamp(0, size - 1)
            rows += index * self._strides()[axis]
        return rows


def parse_tiles(text: str, kind: str) -> tuple[int, ...]:
    """``"16x16"`` -> (16, 16): one positive count per axis of the signal (``AXIS_NAMES``)."""
    axes = AXIS_NAMES[kind]
    example = "x".join(["16", "16"] if kind == "image" else ["4", "8", "8"])
    form = f"{'x'.join(a.upper() for a in axes)} (e.g. --kilo {example})"
    if not re.fullmatch(r"\s*\d+(\s*x\s*\d+)*\s*", text.lower()):
        raise ValueError(f"--kilo {text!r}: expected tile counts {form}")
    counts = tuple(int(part) for part in text.lower().split("x"))
    if len(counts) != len(axes):
        raise ValueError(f"--kilo {text!r}: a {kind} needs {len(axes)} tile counts, {form}")
    if min(counts) < 1:
        raise ValueError(f"--kilo {text!r}: every tile count must be >= 1, {form}")
    return counts


def make_grid(signal: Signal, text: str) -> TileGrid:
    """The ``--kilo`` grid over an image or video signal; one clear error for other signals or impossible counts."""
    if signal.kind == "image":
        shape, coord_axes = (signal.height, signal.width), (1, 0)  # type: ignore[attr-defined]
    elif signal.kind == "video":
        shape, coord_axes = tuple(signal.frame_shape), (0, 1, 2)  # type: ignore[attr-defined]
    else:
        raise SignalError(f"--kilo tiles images and videos, not {signal.kind} signals; drop --kilo")
    tiles = parse_tiles(text, signal.kind)
    for name, size, count in zip(AXIS_NAMES[signal.kind], shape, tiles):
        tile = -(-size // count)
        if (count - 1) * tile >= size:
            usable = max(c for c in range(1, count) if (c - 1) * -(-size // c) < size)
            raise ValueError(
                f"--kilo {text}: {count} tiles over {size} {name} would leave the last tile with only padding; "
                f"use at most {usable} along the {name} (or a count that divides {size})"
            )
    return TileGrid(shape, tiles, coord_axes)


# -- the signal the fit loop sees ----------------------------------------------------------------------------------


class KiloSignal(Signal):
    """Some (by default all) tiles of a signal: ``coords`` [n, P, d] local, ``targets`` [n, P, C]; ``loss`` returns
    one MSE per tile [n], which ``BatchedLBFGS`` needs and whose sum gives every tile its own gradient.

    Covering every tile, ``evaluate``/``save_reconstruction`` stitch and hand over to the underlying signal (same
    metrics as without --kilo); a group of tiles reports the PSNR over its own real samples.
    """

    def __init__(self, base: Signal, grid: TileGrid, tile_ids: torch.Tensor | None = None):
        self.base, self.grid = base, grid
        self.kind, self.metric = base.kind, base.metric  # type: ignore[misc]
        device = base.targets.device
        self.tile_ids = torch.arange(grid.num_tiles, device=device) if tile_ids is None else tile_ids.to(device)
        self.rows, self.real = grid.tile_rows(self.tile_ids)
        self.targets = base.targets[self.rows]
        self.coords = grid.local_coords(device).expand(len(self.tile_ids), -1, -1)

    @property
    def covers_all(self) -> bool:
        return len(self.tile_ids) == self.grid.num_tiles

    def __getstate__(self) -> dict[str, Any]:
        # A group of tiles travels to a Ray task with its own tiles only: it never reads the whole signal.
        state = dict(self.__dict__)
        if not self.covers_all:
            state["base"] = None
        return state

    def to(self, device: torch.device | str) -> KiloSignal:
        for name in ("coords", "targets", "rows", "real", "tile_ids"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).square().mean(dim=(1, 2))

    def per_sample_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise ValueError("--kilo trains every tile on all its points; INT selection does not apply (drop --sampler)")

    def stitched_predict(self, predict: Predict) -> Predict:
        """A predict over the underlying signal's coordinates, from the tiles' outputs (all tiles evaluated once)."""
        stitched = self.grid.stitch(predict(self.coords))

        def lookup(coords: torch.Tensor) -> torch.Tensor:
            # The signal's own grid (every evaluation) needs no lookup; previews ask for parts of it.
            return stitched if coords is self.base.coords else stitched[self.grid.rows_of(coords)]

        return lookup

    def evaluate(self, predict: Predict) -> dict[str, float]:
        if self.covers_all:
            return self.base.evaluate(self.stitched_predict(predict))
        pred = predict(self.coords)[self.real].clamp(0, 1)
        return {self.metric: metrics.psnr(pred, self.targets[self.real])}

    def final_metrics(self, predict: Predict) -> dict[str, float]:
        return self.base.final_metrics(self.stitched_predict(predict)) if self.covers_all else self.evaluate(predict)

    def save_reconstruction(self, predict: Predict, out_dir: Any) -> Any:
        if not self.covers_all:
            raise ValueError("a group of tiles has no whole reconstruction; KiloLoop stitches the groups")
        return self.base.save_reconstruction(self.stitched_predict(predict), out_dir)

    def preview(self, predict: Predict) -> Any:
        return self.base.preview(self.stitched_predict(predict)) if self.covers_all else None

    def target_preview(self) -> Any:
        return self.base.target_preview()


def tiled_predict(model: BatchedMLP, chunk: int) -> Predict:
    """Evaluate a ``BatchedMLP`` on tiled coordinates [n, P, d] -> [n, P, C] without a graph, about ``chunk``
    coordinates per pass (split along the points, every tile in each pass)."""

    def predict(coords: torch.Tensor) -> torch.Tensor:
        per_tile = max(1, chunk // coords.shape[0])
        with torch.no_grad():
            return torch.cat([model(part) for part in coords.split(per_tile, dim=1)], dim=1)

    return predict


# -- building and running ------------------------------------------------------------------------------------------


def initial_field(field: FieldConfig, num_tiles: int, in_features: int, out_features: int, seed: int) -> BatchedMLP:
    """One tiny MLP per tile, stacked, initialized from ``seed`` on the CPU: the same weights on any device, whatever
    the grouping."""
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return BatchedMLP(num_tiles, in_features, out_features, field)
    finally:
        torch.set_rng_state(generator_state)


def group_ids(num_tiles: int, group: int | None, device: torch.device) -> list[torch.Tensor]:
    ids = torch.arange(num_tiles, device=device)
    return list(ids.split(group or num_tiles))


def compiled_tiles(model: BatchedMLP, optimizer: torch.optim.Optimizer, signal: KiloSignal,
                   chunk: int) -> torch.nn.Module:  # fmt: skip
    """``model`` compiled (``nf_precond.nn.compiled_field``) on the shapes a Kilo run uses: every tile's points for
    training, and the chunks ``tiled_predict`` evaluates them in."""

    def warm_up(field: torch.nn.Module) -> None:
        signal.loss(field(signal.coords), signal.targets).sum().backward()
        tiled_predict(field, chunk)(signal.coords)

    return compiled_field(model, warm_up, signal.device, eager_when=lambda: needs_graph(optimizer))


def group_fit_loop(signal: KiloSignal, model: BatchedMLP, optim: str, lr: float | None, options: LoopOptions,
                   compile: bool = False, **kwargs: Any) -> FitLoop:  # fmt: skip
    """The ``FitLoop`` of one group of tiles: the batched variant of ``optim`` over ``model``, full batch; the field
    compiled first when ``compile``."""
    optimizer = build_optimizer(optim, model, batched=True, lr=lr)
    field = compiled_tiles(model, optimizer, signal, options.eval_chunk) if compile else model
    return FitLoop(signal, field, optimizer, FullBatch(), options, predict=tiled_predict(field, options.eval_chunk),
                   **kwargs)  # fmt: skip


@dataclass
class TileGroupResult:
    """What a trained group of tiles hands back: how its fit ended, its tiles' outputs [n, P, C] and weights."""

    outcome: FitOutcome
    predictions: torch.Tensor
    weights: dict[str, torch.Tensor]


def fit_tile_group(signal: KiloSignal, model: BatchedMLP, optim: str, lr: float | None, options: LoopOptions,
                   device: str | None = None) -> TileGroupResult:  # fmt: skip
    """Train one group of tiles from its initial weights ``model``; ``device`` (a Ray task) moves both there first
    (None: where they are)."""
    if device is not None:
        signal, model = signal.to(resolve_device(device)), model.to(resolve_device(device))
    loop = group_fit_loop(signal, model, optim, lr, options)
    outcome = loop.run()
    weights = {key: value.detach().cpu() for key, value in loop.model.state_dict().items()}
    return TileGroupResult(outcome, loop.predict(loop.signal.coords), weights)


class KiloLoop:
    """Fit every tile of ``base`` in groups of ``group`` tiles (None = all at once) with the generic ``FitLoop``.

    One group is a plain ``FitLoop`` run (metrics, checkpoints, resume as without --kilo). Several groups run one
    after the other: metrics.jsonl gets each group's records (``group``, its tile PSNR, steps and time counted on
    from the previous groups) and a final record with the whole signal's metric; checkpoint.pt holds every tile's
    weights (``model``: a ``BatchedMLP`` state dict over all tiles).
    """

    def __init__(
        self,
        base: Signal,
        grid: TileGrid,
        field: FieldConfig,
        options: LoopOptions,
        *,
        optim: str = "lbfgs",
        lr: float | None = None,
        seed: int = 0,
        group: int | None = None,
        run_dir: RunDir | None = None,
        on_log: LogCallback | None = None,
        progress: bool = False,
        summary_extra: dict[str, Any] | None = None,
        engine: LocalEngine | RayEngine | None = None,
        compile: bool = False,
    ):
        """``engine`` runs the groups of a grouped run (default: in this process, one after the other); ``compile``
        compiles the field of a run that trains all tiles at once (a grouped run stays eager: every group is a new
        module, and recompiling each would cost more than it saves)."""
        if group is not None and group < 1:
            raise ValueError(f"--kilo-group must be >= 1 tiles, got {group}")
        self.base, self.grid, self.options, self.optim, self.lr = base, grid, options, optim, lr
        self.device = base.targets.device
        self.groups = group_ids(grid.num_tiles, group, self.device)
        in_features = len(grid.shape)
        check_tiles_fit(len(self.groups[0]), grid.points_per_tile, in_features, base.out_features, field, optim,
                        self.device)  # fmt: skip
        self.run_dir, self.on_log, self.progress = run_dir, on_log, progress
        self.engine = engine or LocalEngine()
        if len(self.groups) > 1:
            self.engine.connect()  # now, before the run folder is written: an unreachable cluster leaves none
        self.summary_extra = {
            "kilo": "x".join(map(str, grid.tiles)), "tiles": grid.num_tiles,
            "tile_shape": list(grid.tile_shape), "kilo_group": len(self.groups[0]), **(summary_extra or {}),
        }  # fmt: skip
        self.initial = initial_field(field, grid.num_tiles, in_features, base.out_features, seed)
        self._single: FitLoop | None = None
        if len(self.groups) == 1:
            self._single = self._group_loop(self.groups[0], run_dir=run_dir, on_log=on_log, progress=progress,
                                            compile=compile)  # fmt: skip

    def _group_loop(self, ids: torch.Tensor, **kwargs: Any) -> FitLoop:
        signal = KiloSignal(self.base, self.grid, ids)
        model = self.initial.select(ids, self.device)
        return group_fit_loop(signal, model, self.optim, self.lr, self.options, summary_extra=self.summary_extra,
                              **kwargs)  # fmt: skip

    def _group_calls(self) -> Iterator[tuple[Any, ...]]:
        """The arguments of ``fit_tile_group`` for every group, made as the engine asks for them (a Ray engine gets
        CPU copies and the device to use where the task runs)."""
        remote = self.engine.remote
        where = "cpu" if remote else self.device
        for ids in self.groups:
            signal = KiloSignal(self.base, self.grid, ids).to(where)
            yield signal, self.initial.select(ids, where), self.optim, self.lr, self.group_options(ids), \
                (self.engine.device if remote else None)

    def group_options(self, ids: torch.Tensor) -> LoopOptions:
        """The loop options of one group of a grouped run: ``--time-budget`` (and the wall-time bound) are the whole
        run's, shared among the groups in proportion to their tiles, so streaming does not multiply the run's time."""
        share = len(ids) / self.grid.num_tiles
        return dataclasses.replace(
            self.options,
            time_budget=None if self.options.time_budget is None else self.options.time_budget * share,
            wall_budget=None if self.options.wall_budget is None else self.options.wall_budget * share,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._single is None:
            raise ValueError("--resume continues runs that trained all tiles at once; rerun without --resume")
        self._single.load_state_dict(state)

    @property
    def step(self) -> int:
        """Steps taken (a resumed single-group run counts its earlier ones)."""
        return self._single.step if self._single is not None else 0

    def run(self) -> FitOutcome:
        if self._single is not None:
            return self._single.run()
        return self._run_groups()

    def _run_groups(self) -> FitOutcome:
        reconstruction = torch.empty_like(self.base.targets)
        weights: list[dict[str, torch.Tensor]] = []
        step = closure_evals = 0
        time_s = 0.0
        status = "completed"
        history: list[dict[str, Any]] = []
        diverged_at = None
        with tqdm(total=self.grid.num_tiles, unit="tile", disable=None if self.progress else True,
                  dynamic_ncols=True, desc="kilo") as bar:  # fmt: skip
            results = self.engine.map(fit_tile_group, self._group_calls())
            for index, (ids, result) in enumerate(zip(self.groups, results)):
                outcome = result.outcome
                for record in outcome.history:
                    record = {**record, "step": step + record["step"], "time_s": round(time_s + record["time_s"], 6),
                              "closure_evals": closure_evals + record["closure_evals"], "group": index}  # fmt: skip
                    history.append(record)
                    if self.run_dir is not None:
                        self.run_dir.append_metrics(record)
                self.grid.stitch_into(reconstruction, result.predictions, ids)
                weights.append(result.weights)
                step, time_s = step + outcome.step, time_s + outcome.time_s
                closure_evals += outcome.closure_evals
                bar.update(len(ids))
                bar.set_postfix({self.base.metric: f"{outcome.history[-1].get(self.base.metric, math.nan):.2f}"})
                if outcome.status in ("diverged", "interrupted"):
                    status = outcome.status
                    if outcome.diverged_at is not None:
                        diverged_at = step - outcome.step + outcome.diverged_at
                    break
        stitched = self._lookup(reconstruction)
        final = FitOutcome(status, step, time_s, closure_evals, history, diverged_at=diverged_at)
        final.final_metrics = self.base.final_metrics(stitched) if len(weights) == len(self.groups) else {}
        if self.run_dir is not None and len(weights) == len(self.groups):
            record = {"step": step, "time_s": round(time_s, 6), "loss": None, "closure_evals": closure_evals,
                      **final.final_metrics}  # fmt: skip
            history.append(record)
            self.run_dir.append_metrics(record)
            self.base.save_reconstruction(stitched, self.run_dir.path)
            model = {key: torch.cat([part[key] for part in weights]) for key in weights[0]}
            self.run_dir.save_checkpoint({"model": model, "step": step, "time_s": time_s, "closure_evals": closure_evals})
        if self.run_dir is not None:
            parameters = sum(v.numel() for part in weights for v in part.values())
            self.run_dir.write_summary(run_summary(self.base, final, parameters, self.device, self.summary_extra))
        return final

    def _lookup(self, reconstruction: torch.Tensor) -> Predict:
        def predict(coords: torch.Tensor) -> torch.Tensor:
            return reconstruction if coords is self.base.coords else reconstruction[self.grid.rows_of(coords)]

        return predict
