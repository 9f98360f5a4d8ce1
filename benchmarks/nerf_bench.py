"""NeRF benchmark: curvature-aware optimizers vs Adam, and nerfstudio's vanilla-nerf, on held-out views.

A forward-facing scene is rendered without downloads (`nerfstudio_plugin.scene`, LLFF layout) at a quarter of
paper 2's 480x640 by default; every 8th view is held out (llffhold). The methods are the `ns-train` methods as a
user runs them (hierarchical sampling and NDC for the Gaussian NeRFs, uniform samples for TinyNeRF/KiloNeRF), plus
nerfstudio's stock `vanilla-nerf` (two 8x256 ReLU MLPs with positional encoding, 64 + 128 samples, RAdam; nerfstudio
has no NDC, so it samples world space between the scene's bounds) as the outside reference. All get the same ray
batch size.

Each method trains for the same wall time (`--minutes`, training steps only; evaluation is not counted). Pairs
compare a method with its baseline:

| method         | baselines                 |
|----------------|---------------------------|
| gauss-esgd     | gauss-adam, vanilla-nerf  |
| tinynerf-lbfgs | tinynerf-adam             |
| kilonerf-lbfgs | kilonerf-adam             |

Baselines train first. A method then also keeps its weights at each baseline's iteration count (training on past
its time budget if it is slower, up to `--max-extra` times the budget), so every pair is compared at equal time AND
at equal iterations. Reported:

- per method: iterations in the time budget, seconds per iteration, closure evaluations per step (L-BFGS's line
  search), final train PSNR (batch MSE of the fine rendering at the start of each step, EMA 0.9 as the papers'
  TensorBoard curves), test PSNR/SSIM (LPIPS only when AlexNet's weights are cached) on the held-out views;
- per pair: iterations and time for the method to reach the baseline's final train PSNR (ratios to the baseline's
  budget), and the test metrics at equal time and at equal iterations;
- step cost: gauss-esgd's mean step after its warm-up (one Hessian-vector product every `update_every` steps,
  amortized) over gauss-adam's, on the same step range;
- one held-out view rendered by every method at equal time, beside the ground truth (PNG).

`--sweep gauss-esgd@0.1,gauss-esgd@0.3,gauss-adam@3e-4` trains only those runs (each at that lr, its lr schedule's
final lr scaled with it) beside the method's first baseline (gauss-adam at its own lr; a swept baseline is compared
with that too), all in one run, and reports the tables above without the targets (default name
`nerf_bench_sweep`): a learning-rate sweep of the method and of its baseline. `--lr gauss-esgd=0.1,gauss-adam=3e-4`
then trains the full benchmark at the sweep's winners, so each side of a pair is tuned.

`--trunk 4x128` resizes the hierarchical NeRFs' trunk (gauss-esgd, gauss-adam) for every run: paper 2's 8x256 takes
about a second per 256-ray step on two CPU cores, so a CPU run of tens of minutes stays in the first few hundred
steps, where every method still renders the scene's mean color; a smaller trunk gets thousands of steps.

Results go to `--out` (default benchmarks/results) as `<name>.md`, `<name>.json` and `<name>_test_view.png`.
`--smoke` runs a tiny scene for seconds per method (ESGD's warm-up shortened so the step-cost path runs) and writes
to a fresh temporary folder unless `--out` is given: it proves the script works and measures nothing.

Run: `python -m benchmarks.nerf_bench [--minutes 20] [--device cpu|cuda] [--trunk LxH] [--sweep METHOD@LR,... | --lr
METHOD=LR,...]`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional
from unittest import mock

import numpy as np
import torch
from PIL import Image, ImageDraw

from nerfstudio.configs.method_configs import method_configs
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.vanilla_nerf import NeRFModel
from nerfstudio.utils import writer as event_writers

from benchmarks.common import RESULTS, machine_facts
from nerfstudio_plugin.dataparsers import AutoDataParserConfig
from nerfstudio_plugin.methods import budget_for, configure
from nerfstudio_plugin.models import BOUNDS_MARGIN, lpips_weights_present
from nerfstudio_plugin.scene import render_llff
from nf_precond.atomic import atomic_path, atomic_write_text

PAIRS = (
    ("gauss-esgd", "gauss-adam"),
    ("gauss-esgd", "vanilla-nerf"),
    ("tinynerf-lbfgs", "tinynerf-adam"),
    ("kilonerf-lbfgs", "kilonerf-adam"),
)
BASELINES = tuple(dict.fromkeys(baseline for _, baseline in PAIRS))
METHODS = tuple(dict.fromkeys(method for method, _ in PAIRS))
TUNABLE = METHODS + tuple(name for name in BASELINES if name != "vanilla-nerf")
"""Methods whose lr --sweep and --lr set: ours and our Adam baselines (vanilla-nerf is the reference as shipped)."""
EMA = 0.9
"""Smoothing of the train MSE before it is turned into PSNR (the papers read TensorBoard curves smoothed 0.8-0.9)."""
FINE_LOSS = {"vanilla-nerf": "rgb_loss_fine"}
"""The loss-dict entry holding the fine rendering's MSE (our models: rgb_loss)."""
RGB_OUTPUT = {"vanilla-nerf": "rgb_fine"}
"""The output holding the fine rendering (our models: rgb)."""


@dataclass
class Evaluation:
    """Metrics of one model state on the held-out views."""

    iterations: int
    psnr: float
    ssim: float
    lpips: Optional[float] = None


@dataclass
class Run:
    method: str
    iterations: int
    """Steps taken within the time budget."""
    step_seconds: list[float]
    """Wall time of every step within the budget."""
    train_psnr: list[float]
    """EMA-smoothed train PSNR after each step within the budget."""
    closure_evaluations: list[int]
    """Model evaluations per step (1 for first-order optimizers; L-BFGS: its line search)."""
    equal_time: Evaluation
    equal_iterations: dict[int, Evaluation] = field(default_factory=dict)
    """Evaluations at a baseline's iteration count (key), when this method reached it."""
    warmup: Optional[int] = None
    """ESGD's warm-up steps (curvature estimated every step), when the optimizer has one."""

    @property
    def mean_step_seconds(self) -> float:
        timed = self.step_seconds[1:] or self.step_seconds  # the first step pays one-off allocations
        return sum(timed) / len(timed)


# ----------------------------------------------------------------------------------------------------------------------
# Configs


class OfflineNeRFModel(NeRFModel):
    """nerfstudio's vanilla NeRF model built without its LPIPS module, whose AlexNet weights would be downloaded
    when they are not cached (this benchmark computes every method's metrics itself)."""

    def populate_modules(self) -> None:
        with mock.patch("torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity", lambda **_: None):
            super().populate_modules()


def vanilla_nerf_config(data: Path, output_dir: Path, device: str, rays: int, smoke: bool) -> TrainerConfig:
    """nerfstudio's `vanilla-nerf` as registered, reading our LLFF scene, with the scene's near/far bounds (widened as
    our world-space sampling widens them) and our ray batch size."""
    config = copy.deepcopy(method_configs["vanilla-nerf"])
    metadata = AutoDataParserConfig(data=data).setup().get_dataparser_outputs("train").metadata
    datamanager, model = config.pipeline.datamanager, config.pipeline.model
    datamanager.dataparser = AutoDataParserConfig()
    config.data = datamanager.data = data
    datamanager.train_num_rays_per_batch = datamanager.eval_num_rays_per_batch = rays
    model.collider_params = {"near_plane": metadata["near"] * BOUNDS_MARGIN[0],
                             "far_plane": metadata["far"] * BOUNDS_MARGIN[1]}  # fmt: skip
    if not lpips_weights_present():
        model._target = OfflineNeRFModel
    if smoke:
        model.num_coarse_samples = model.num_importance_samples = 4
    config.machine.device_type = device
    config.output_dir, config.vis = output_dir, "tensorboard"
    return config


def method_config(name: str, data: Path, output_dir: Path, args: argparse.Namespace, rays: int,
                  lr: Optional[float] = None) -> TrainerConfig:  # fmt: skip
    """The config `name` trains with in this benchmark: the ns-train method (or vanilla-nerf) at `rays` per batch;
    `lr` replaces the method's lr and scales its schedule's final lr with it."""
    if name == "vanilla-nerf":
        return vanilla_nerf_config(data, output_dir, args.device, rays, args.smoke)
    hierarchical = name.startswith(("gauss", "sine"))
    config = configure(name, data, output_dir, device=args.device, rays=rays, samples=args.samples,
                       importance_samples=args.importance_samples if hierarchical else None)  # fmt: skip
    if hierarchical and args.trunk is not None:
        model = config.pipeline.model
        layers, hidden = args.trunk
        model.field = dataclasses.replace(model.field, layers=layers, hidden=hidden)
    if lr is not None:
        fields = config.optimizers["fields"]
        if fields["scheduler"] is not None:
            fields["scheduler"].lr_final *= lr / fields["optimizer"].lr
        fields["optimizer"].lr = lr
    if args.smoke:
        optimizer = config.optimizers["fields"]["optimizer"]
        if optimizer.name == "esgd":
            optimizer.overrides = {**optimizer.overrides, "warmup": 2, "update_every": 3}
    return config


# ----------------------------------------------------------------------------------------------------------------------
# Training and evaluation


def evaluate(name: str, trainer: Any, iterations: int, lpips: Optional[Callable]) -> tuple[Evaluation, np.ndarray]:
    """Metrics over the held-out views, and the first view's rendering [H, W, 3]."""
    from torchmetrics.functional import structural_similarity_index_measure

    pipeline = trainer.pipeline
    pipeline.eval()
    dataset = pipeline.datamanager.eval_dataset
    psnrs, ssims, lpipses, first = [], [], [], None
    with torch.no_grad():
        for index in range(len(dataset)):
            camera = dataset.cameras[index : index + 1].to(pipeline.device)
            rgb = pipeline.model.get_outputs_for_camera(camera)[RGB_OUTPUT.get(name, "rgb")].clamp(0.0, 1.0).cpu()
            image = dataset.get_image_float32(index)[..., :3]
            psnrs.append(float(-10.0 * torch.log10(((rgb - image) ** 2).mean())))
            pair = [torch.moveaxis(x, -1, 0)[None] for x in (rgb, image)]
            ssims.append(float(structural_similarity_index_measure(*pair, data_range=1.0)))
            if lpips is not None:
                lpipses.append(float(lpips(*pair)))
            first = rgb.numpy() if first is None else first
    pipeline.train()
    mean_lpips = float(np.mean(lpipses)) if lpipses else None
    return Evaluation(iterations, float(np.mean(psnrs)), float(np.mean(ssims)), mean_lpips), first


@contextlib.contextmanager
def own_event_writers() -> Iterator[None]:
    """nerfstudio keeps every trainer's event writers in a module-level list: close and drop the ones a run added
    when it ends, so later runs and later callers do not write into its (deleted) folder."""
    kept = list(event_writers.EVENT_WRITERS)
    try:
        yield
    finally:
        for added in event_writers.EVENT_WRITERS[len(kept):]:
            if hasattr(added, "tb_writer"):
                added.tb_writer.close()
        event_writers.EVENT_WRITERS[:] = kept


def train(name: str, config: Any, budget_s: float, keep_at: set[int], max_s: float,
          lpips: Optional[Callable]) -> tuple[Run, np.ndarray]:  # fmt: skip
    """Train `name` for `budget_s` seconds of steps, then on (up to `max_s`) until every iteration count in `keep_at`
    is reached; evaluate at the budget and at each count of `keep_at`."""
    torch.manual_seed(0)
    config.set_timestamp()
    trainer = config.setup()
    trainer.setup()
    trainer.pipeline.train()
    model = trainer.pipeline.model
    get_loss_dict = model.get_loss_dict
    step_losses: list[float] = []

    def recording_get_loss_dict(*args, **kwargs):
        losses = get_loss_dict(*args, **kwargs)
        step_losses.append(float(losses[FINE_LOSS.get(name, "rgb_loss")]))
        return losses

    model.get_loss_dict = recording_get_loss_dict
    optimizer = next(iter(trainer.optimizers.optimizers.values()))
    warmup = optimizer.param_groups[0].get("warmup")
    seconds, smoothed, evaluations = [], [], []
    kept: dict[int, dict] = {}
    budget_state, ema, elapsed, step = None, None, 0.0, 0
    while True:
        if budget_state is None and elapsed >= budget_s:
            budget_state = copy.deepcopy(model.state_dict())
            budget_steps = step
        if budget_state is not None and (all(k <= step for k in keep_at) or elapsed >= max_s):
            break
        step_losses.clear()
        start = time.perf_counter()
        trainer.train_iteration(step)
        if str(trainer.device).startswith("cuda"):
            torch.cuda.synchronize()
        step_seconds = time.perf_counter() - start
        elapsed += step_seconds
        step += 1
        if step in keep_at:
            kept[step] = copy.deepcopy(model.state_dict())
        if budget_state is None:
            mse = step_losses[0]  # the loss at the start of the step (L-BFGS evaluates more within it)
            ema = mse if ema is None else EMA * ema + (1 - EMA) * mse
            seconds.append(step_seconds)
            smoothed.append(-10.0 * math.log10(max(ema, 1e-12)))
            evaluations.append(len(step_losses))
    model.get_loss_dict = get_loss_dict
    model.load_state_dict(budget_state)
    equal_time, render = evaluate(name, trainer, budget_steps, lpips)
    run = Run(name, budget_steps, seconds, smoothed, evaluations, equal_time, warmup=warmup)
    for iterations, state in kept.items():
        model.load_state_dict(state)
        run.equal_iterations[iterations] = evaluate(name, trainer, iterations, lpips)[0]
    return run, render


# ----------------------------------------------------------------------------------------------------------------------
# Report


def first_reaching(run: Run, target: float) -> Optional[int]:
    """1-based step count at which the smoothed train PSNR first reaches `target` (None: never, within the budget)."""
    return next((index + 1 for index, psnr in enumerate(run.train_psnr) if psnr >= target), None)


def compare(method: Run, baseline: Run) -> dict:
    target = baseline.train_psnr[-1]
    reached = first_reaching(method, target)
    row = {"method": method.method, "baseline": baseline.method, "target_train_psnr": target,
           "method_final_train_psnr": method.train_psnr[-1], "baseline_steps": baseline.iterations,
           "method_steps": method.iterations, "method_steps_to_target": reached,
           "method_seconds_to_target": None if reached is None else sum(method.step_seconds[:reached]),
           "iteration_ratio": None, "time_ratio": None,
           "equal_time": {"method": asdict(method.equal_time), "baseline": asdict(baseline.equal_time)},
           "equal_iterations": {"iterations": baseline.iterations, "baseline": asdict(baseline.equal_time),
                                "method": None}}  # fmt: skip
    equal = method.equal_iterations.get(baseline.iterations)
    if equal is not None:
        row["equal_iterations"]["method"] = asdict(equal)
    if reached is not None:
        row["iteration_ratio"] = reached / baseline.iterations
        row["time_ratio"] = row["method_seconds_to_target"] / sum(baseline.step_seconds)
    return row


def step_cost(esgd: Run, adam: Run) -> dict:
    """gauss-esgd's mean step after its warm-up over gauss-adam's on the same step range (None if too short)."""
    start = esgd.warmup or 0
    end = min(len(esgd.step_seconds), len(adam.step_seconds))
    if end <= start:
        return {"from_step": start, "to_step": end, "esgd_s": None, "adam_s": None, "ratio": None}
    esgd_s, adam_s = np.mean(esgd.step_seconds[start:end]), np.mean(adam.step_seconds[start:end])
    return {"from_step": start, "to_step": end, "esgd_s": float(esgd_s), "adam_s": float(adam_s),
            "ratio": float(esgd_s / adam_s)}  # fmt: skip


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


def targets(runs: Dict[str, Run], rows: list[dict], cost: dict) -> list[tuple[str, str, Optional[bool]]]:
    """Issue 17's targets: (what, measured, met)."""
    esgd, adam, vanilla = (runs[name].equal_time.psnr for name in ("gauss-esgd", "gauss-adam", "vanilla-nerf"))
    (ratio,) = [row["iteration_ratio"] for row in rows if (row["method"], row["baseline"]) == PAIRS[0]]
    return [
        ("gauss-esgd test PSNR >= gauss-adam's (equal time)", f"{esgd:.2f} vs {adam:.2f} dB", esgd >= adam),
        ("gauss-esgd test PSNR >= vanilla-nerf's - 1 dB (equal time)", f"{esgd:.2f} vs {vanilla:.2f} dB",
         esgd >= vanilla - 1.0),
        ("gauss-esgd reaches gauss-adam's final train PSNR in <= 0.7x the iterations", f"{fmt(ratio)}x",
         None if ratio is None else ratio <= 0.7),
        ("gauss-esgd amortized step after warm-up <= 1.15x gauss-adam's", f"{fmt(cost['ratio'])}x",
         None if cost["ratio"] is None else cost["ratio"] <= 1.15),
    ]  # fmt: skip


def markdown(settings: dict, runs: Dict[str, Run], rows: list[dict], cost: Optional[dict], render_name: str) -> str:
    """The report; `cost` None: a --sweep, reported without the step cost and the targets."""
    has_lpips = any(run.equal_time.lpips is not None for run in runs.values())
    minutes = f"{settings['minutes']:g}"
    title = ("NeRF learning-rate sweep (nerfstudio plugin), beside the Adam baseline" if cost is None else
             "NeRF benchmark: curvature-aware optimizers vs Adam and vanilla-nerf (nerfstudio plugin)")
    lines = [
        f"# {title}", "",
        f"Command: `{settings['command']}`", "",
        f"Scene: rendered forward-facing scene, {settings['views']} views at {settings['height']}x{settings['width']}, "
        f"every 8th held out (test views: {settings['test_views']}); {minutes} min of training per method on "
        f"{settings['device']}; rays per batch: {settings['rays']}; "
        + ("" if settings["trunk"] is None else "Gaussian NeRF trunk: {}x{}; ".format(*settings["trunk"]))
        + ("" if not settings["lrs"] else "lrs (tuned): {}; ".format(
            ", ".join(f"{method} {lr:g}" for method, lr in settings["lrs"].items())))
        + f"{settings['threads']} torch threads; "
        f"{settings['machine']['cpu']}, 1-min load before the runs {settings['machine']['load_average_1min']}.", "",
        f"## Equal wall time ({minutes} min of training steps per method)", "",
        "| method | iterations | s/iteration | evaluations/step | final train PSNR | test PSNR | test SSIM |"
        + (" test LPIPS |" if has_lpips else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if has_lpips else ""),
    ]  # fmt: skip
    for name, run in runs.items():
        lines.append(f"| {name} | {run.iterations} | {run.mean_step_seconds:.3f} | "
                     f"{np.mean(run.closure_evaluations):.1f} | {run.train_psnr[-1]:.2f} | {run.equal_time.psnr:.2f} | "
                     f"{run.equal_time.ssim:.3f} |"
                     + (f" {fmt(run.equal_time.lpips, 3)} |" if has_lpips else ""))  # fmt: skip
    lines += ["", "## To the baseline's final train PSNR (within the time budget)", "",
              "Ratios < 1: the method gets there in fewer iterations / less time than the baseline's whole budget; "
              "'-': not reached.", "",
              "| method | baseline | target train PSNR | method's final | iterations (ratio) | time s (ratio) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        lines.append(f"| {row['method']} | {row['baseline']} | {row['target_train_psnr']:.2f} | "
                     f"{row['method_final_train_psnr']:.2f} | {row['method_steps_to_target'] or '-'} "
                     f"({fmt(row['iteration_ratio'])}) | {fmt(row['method_seconds_to_target'], 1)} "
                     f"({fmt(row['time_ratio'])}) |")  # fmt: skip
    lines += ["", "## Equal iterations (the baseline's iteration count in the time budget)", "",
              "| method | baseline | iterations | test PSNR method / baseline | test SSIM method / baseline |",
              "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        equal = row["equal_iterations"]
        mine = equal["method"] or {}
        lines.append(f"| {row['method']} | {row['baseline']} | {equal['iterations']} | {fmt(mine.get('psnr'))} / "
                     f"{equal['baseline']['psnr']:.2f} | {fmt(mine.get('ssim'), 3)} / "
                     f"{equal['baseline']['ssim']:.3f} |")  # fmt: skip
    view = ["", f"One held-out view at equal time, ground truth first: ![test view]({render_name})", ""]
    if cost is None:
        return "\n".join(lines + view)
    if cost["ratio"] is None:
        cost_line = (f"Not measured: the runs took {cost['to_step']} steps, no more than ESGD's warm-up of "
                     f"{cost['from_step']}.")  # fmt: skip
    else:
        cost_line = (f"gauss-esgd's mean step over steps {cost['from_step']}-{cost['to_step']} (after its warm-up; "
                     f"one Hessian-vector product every update_every steps, amortized): {cost['esgd_s']:.3f} s; "
                     f"gauss-adam's over the same steps: {cost['adam_s']:.3f} s; "
                     f"ratio {cost['ratio']:.2f}x.")  # fmt: skip
    lines += ["", "## Step cost", "", cost_line, "", "## Targets (issue 17)", "", "| target | measured | |",
              "|---|---|---|"]  # fmt: skip
    for what, measured, met in targets(runs, rows, cost):
        lines.append(f"| {what} | {measured} | {verdict(met)} |")
    return "\n".join(lines + view)


def side_by_side(truth: np.ndarray, renders: Dict[str, np.ndarray]) -> Image.Image:
    """Ground truth and every method's rendering of one view in a grid of labeled tiles (4 per row)."""
    tiles = {"ground truth": truth, **renders}
    height, width = truth.shape[:2]
    zoom = max(1, math.ceil(160 / width))  # small smoke renders are enlarged so the labels fit
    tile_w, tile_h, label_h = width * zoom, height * zoom, 14
    columns = min(4, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * tile_w, rows * (tile_h + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (label, image) in enumerate(tiles.items()):
        x, y = (index % columns) * tile_w, (index // columns) * (tile_h + label_h)
        tile = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
        sheet.paste(tile.resize((tile_w, tile_h), Image.Resampling.NEAREST), (x, y + label_h))
        draw.text((x + 2, y + 1), label, fill="black")
    return sheet


Plan = list[tuple[str, str, Optional[float]]]
"""(run label, method, lr or None for the method's own) in training order."""


def parse_trunk(text: str) -> tuple[int, int]:
    """``"4x128"`` -> (layers, hidden) (an argparse type: a bad value is one error line)."""
    layers, _, hidden = text.lower().partition("x")
    if not (layers.isdigit() and hidden.isdigit() and int(layers) >= 1 and int(hidden) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not LAYERSxHIDDEN with both >= 1 (for example 4x128)")
    return int(layers), int(hidden)


def full_plan(lrs: Optional[dict[str, float]] = None) -> tuple[Plan, tuple[tuple[str, str], ...]]:
    """Every baseline, then every method, at the lrs of `lrs` (tuned ones) or their own; the pairs of the table
    above."""
    lrs = lrs or {}
    return [(name, name, lrs.get(name)) for name in BASELINES + METHODS], PAIRS


def parse_runs(text: str, separator: str) -> list[tuple[str, float]]:
    """``"gauss-esgd<sep>0.1,gauss-adam<sep>3e-4"`` -> [(method, lr), ...] for a method or one of our baselines (an
    argparse type's core: a bad item is one error line)."""
    runs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, _, lr = item.partition(separator)
        if method not in TUNABLE:
            raise argparse.ArgumentTypeError(f"{method!r} is not a benchmarked method with an lr; choose from "
                                             f"{', '.join(TUNABLE)}")  # fmt: skip
        try:
            runs.append((method, float(lr)))
        except ValueError:
            example = f"gauss-esgd{separator}0.3"
            raise argparse.ArgumentTypeError(f"{item!r} is not METHOD{separator}LR (for example {example})") from None
        if not runs[-1][1] > 0:
            raise argparse.ArgumentTypeError(f"{item!r}: the lr must be > 0")
    if not runs:
        raise argparse.ArgumentTypeError(f"name at least one METHOD{separator}LR")
    return runs


def parse_sweep(text: str) -> list[tuple[str, float]]:
    """``"gauss-esgd@0.1,gauss-adam@3e-4"`` -> [(method, lr), ...] (an argparse type)."""
    return parse_runs(text, "@")


def parse_lrs(text: str) -> dict[str, float]:
    """``"gauss-esgd=0.1,gauss-adam=3e-4"`` -> {method: lr} (an argparse type; a method named twice is refused)."""
    runs = parse_runs(text, "=")
    lrs = dict(runs)
    if len(lrs) != len(runs):
        raise argparse.ArgumentTypeError(f"{text!r} names a method twice")
    return lrs


def sweep_plan(sweep: list[tuple[str, float]]) -> tuple[Plan, tuple[tuple[str, str], ...]]:
    """Each swept method's first baseline at its own lr, then every METHOD@LR run, each paired with that baseline (a
    swept baseline: with itself at its own lr)."""
    baseline_of = {method: next((b for m, b in PAIRS if m == method), method) for method, _ in sweep}
    baselines = list(dict.fromkeys(baseline_of.values()))
    runs = [(f"{method}@{lr:g}", method, lr) for method, lr in sweep]
    return ([(b, b, None) for b in baselines] + runs,
            tuple((label, baseline_of[method]) for label, method, _ in runs))  # fmt: skip


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nerf_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall time per method (default 20)")
    parser.add_argument("--max-extra", type=float, default=3.0,
                        help="a method slower than its baseline trains on to the baseline's iteration count for at "
                             "most this many times the budget (equal-iteration comparison)")  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rays", type=int, default=None, help="rays per batch for every method (default: the "
                        "methods' device budget)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=None, help="uniform/coarse samples per ray (default: methods')")
    parser.add_argument("--importance-samples", type=int, default=None,
                        help="fine samples per ray of the hierarchical methods (default: methods')")
    parser.add_argument("--trunk", type=parse_trunk, default=None, metavar="LAYERSxHIDDEN",
                        help="trunk of the hierarchical NeRFs (gauss-esgd, gauss-adam) for every run, e.g. 4x128: a "
                             "field two CPU cores train thousands of steps of (default: the methods' 8x256)")
    parser.add_argument("--views", type=int, default=24, help="rendered views (every 8th held out)")
    parser.add_argument("--height", type=int, default=120, help="image height (default: 480 / 4)")
    parser.add_argument("--width", type=int, default=160, help="image width (default: 640 / 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sweep", type=parse_sweep, default=None, metavar="METHOD@LR,...",
                        help="train only these runs beside the method's Adam baseline, each at that lr (its "
                             "schedule's final lr scaled with it), e.g. gauss-esgd@0.1,gauss-esgd@0.3,gauss-adam@3e-4 "
                             "(a swept baseline is compared with itself at its own lr)")
    parser.add_argument("--lr", type=parse_lrs, default=None, metavar="METHOD=LR,...",
                        help="train these methods at these lrs in the full benchmark (their schedules' final lrs "
                             "scaled alike), e.g. the winners of a --sweep: gauss-esgd=0.1,gauss-adam=3e-4")
    parser.add_argument("--name", default=None, help="results file stem (default nerf_bench, --sweep: "
                        "nerf_bench_sweep; --smoke adds _smoke)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; smoke: "
                        "a new temporary folder)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="seconds per method on a tiny scene (proves it runs)")
    args = parser.parse_args(argv)
    if args.sweep and args.lr:
        parser.error("--lr sets the full benchmark's lrs; a --sweep names each run's lr itself: drop one")
    if args.smoke:
        args.minutes = 2.0 / 60
        args.views, args.height, args.width = 8, 24, 32
        args.rays, args.samples, args.importance_samples = 16, 4, 4
    name = args.name or ("nerf_bench_sweep" if args.sweep else "nerf_bench") + ("_smoke" if args.smoke else "")
    out = args.out or (Path(tempfile.mkdtemp(prefix="nerf_bench_smoke-")) if args.smoke else RESULTS)
    if args.threads:
        torch.set_num_threads(args.threads)
    lpips = None
    if lpips_weights_present():
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        lpips = LearnedPerceptualImagePatchSimilarity(normalize=True)
    budget_s = args.minutes * 60.0
    machine = machine_facts()  # before training: its load is other work's, the runs' own threads come on top
    rays = args.rays or budget_for(args.device).rays
    runs: Dict[str, Run] = {}
    renders: Dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as workdir:
        scene = render_llff(Path(workdir) / "scene", num_views=args.views, height=args.height, width=args.width,
                            downscale_factors=())  # fmt: skip
        plan, pairs = sweep_plan(args.sweep) if args.sweep else full_plan(args.lr)
        for label, method, lr in plan:
            keep_at = {runs[b].iterations for m, b in pairs if m == label}
            config = method_config(method, scene.root, Path(workdir) / "runs", args, rays, lr)
            with own_event_writers():
                runs[label], renders[label] = train(label, config, budget_s, keep_at,
                                                    budget_s * (1 + args.max_extra), lpips)  # fmt: skip
            run = runs[label]
            print(f"{label}: {run.iterations} iterations, {run.mean_step_seconds:.3f} s/it, train PSNR "
                  f"{run.train_psnr[-1]:.2f}, test PSNR {run.equal_time.psnr:.2f}", flush=True)  # fmt: skip
        # View 0 is the first held-out view (llffhold: 0, 8, 16, ...), the one `evaluate` returns the render of.
        truth = np.asarray(Image.open(scene.image_paths[0]), dtype=np.float64)[..., :3] / 255.0
    rows = [compare(runs[method], runs[baseline]) for method, baseline in pairs]
    cost = None if args.sweep else step_cost(runs["gauss-esgd"], runs["gauss-adam"])
    command = "python -m benchmarks.nerf_bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    settings = {"command": command.strip(), "minutes": args.minutes, "device": args.device, "rays": rays,
                "samples": args.samples, "importance_samples": args.importance_samples, "trunk": args.trunk,
                "lrs": args.lr, "views": args.views, "test_views": len(range(0, args.views, 8)),
                "height": args.height, "width": args.width,
                "threads": torch.get_num_threads(), "lpips": lpips is not None, "smoke": args.smoke,
                "machine": machine}  # fmt: skip
    render_name = f"{name}_test_view.png"
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    side_by_side(truth, renders).save(buffer, format="PNG")
    with atomic_path(out / render_name) as temporary:
        temporary.write_bytes(buffer.getvalue())
    payload = {"settings": settings, "comparisons": rows, "step_cost": cost,
               "targets": [] if cost is None else [{"target": what, "measured": measured, "met": met}
                                                   for what, measured, met in targets(runs, rows, cost)],
               "seconds_per_iteration": {name: run.mean_step_seconds for name, run in runs.items()},
               "runs": {name: asdict(run) for name, run in runs.items()}}  # fmt: skip
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=1))
    report = markdown(settings, runs, rows, cost, render_name)
    atomic_write_text(out / f"{name}.md", report)
    print(report)
    print(f"wrote {out / name}.md, .json and {render_name}")


if __name__ == "__main__":
    main()
