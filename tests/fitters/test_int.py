"""INT wired into the fitters: the per-sample error INT ranks by, --sampler int in nf-fit / nf-bench, bad input,
L-BFGS on reselection, the fit loop's closure reuse, and the configs/int presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from skimage import data

from fitters.bench import BenchConfig, RunSpec, parse_optims, run_config
from fitters.build import build_components, loop_options
from fitters.cli.fit import main
from fitters.config import FitConfig, load_preset, resolve
from fitters.signals.image import ImageSignal
from fitters.loop import FitLoop, LoopOptions, per_sample_errors
from fitters.run_dir import RunDir
from fitters.signals.occupancy import OccupancySignal
from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import build_optimizer, make_closure
from nf_precond.sampling import ConstantRatio, DenseInterval, FullBatch, INTOptions, INTSampler, StepRatio, top_k_indices
from nf_precond.sampling.int_teaching import selection_size

REPO = Path(__file__).resolve().parents[2]


def tiny_signal() -> ImageSignal:
    """A 16x16 RGB crop of the astronaut photo."""
    return ImageSignal(data.astronaut()[100:148:3, 200:248:3].astype(np.float32) / 255.0)


def tiny_model(out_features: int = 3) -> CoordinateMLP:
    torch.manual_seed(0)
    return CoordinateMLP(2, out_features, FieldConfig(hidden=16, layers=2, activation="sine"))


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "crop.png"
    iio.imwrite(path, data.astronaut()[100:148:3, 200:248:3])
    return path


# -- the per-sample error -------------------------------------------------------------------------------------------


def loss_gradient_magnitude(loss_fn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Ground truth: |∂(summed per-sample loss)/∂pred| summed over channels, by autograd."""
    pred = pred.clone().requires_grad_(True)
    loss_fn(pred, target).backward()
    return pred.grad.abs().sum(dim=1)


def test_default_error_is_the_mse_gradient_magnitude() -> None:
    pred, target = torch.randn(50, 3), torch.rand(50, 3)
    mse = lambda p, t: torch.nn.functional.mse_loss(p, t, reduction="sum")  # noqa: E731
    torch.testing.assert_close(2 * tiny_signal().per_sample_error(pred, target), loss_gradient_magnitude(mse, pred, target))


def test_occupancy_error_is_the_bce_gradient_magnitude() -> None:
    logits, labels = 4 * torch.randn(50, 1), (torch.rand(50, 1) > 0.5).float()
    bce = lambda p, t: torch.nn.functional.binary_cross_entropy_with_logits(p, t, reduction="sum")  # noqa: E731
    occupancy = OccupancySignal.__new__(OccupancySignal)  # the error needs no mesh
    errors = occupancy.per_sample_error(logits, labels)
    torch.testing.assert_close(errors, loss_gradient_magnitude(bce, logits, labels))
    # A confidently right point (logit 10, label 1) must rank below an unsure one (logit 0), unlike |logit - label|.
    ranked = occupancy.per_sample_error(torch.tensor([[10.0], [0.0]]), torch.tensor([[1.0], [1.0]]))
    assert ranked[0] < ranked[1]


class DoubledErrorSignal(ImageSignal):
    """An error that ranks differently from |pred - target| (the red channel counts double)."""

    def per_sample_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor([2.0, 1.0, 1.0])
        return ((pred - target).abs() * weights).sum(dim=1)


def test_loop_ranks_by_the_signals_own_error() -> None:
    signal = DoubledErrorSignal(data.astronaut()[100:148:3, 200:248:3].astype(np.float32) / 255.0)
    model = tiny_model()
    k = selection_size(0.2, signal.num_samples)
    with torch.no_grad():
        pred = model(signal.coords)
        expected = top_k_indices(signal.per_sample_error(pred, signal.targets), k)
        plain = top_k_indices((pred - signal.targets).abs().sum(dim=1), k)
    assert not torch.equal(expected, plain)  # otherwise this test could not tell which error the loop used
    sampler = INTSampler(signal.num_samples, 10, ConstantRatio(0.2), DenseInterval(), "cpu")
    loop = FitLoop(signal, model, build_optimizer("adam", model, lr=1e-3), sampler, LoopOptions(steps=1))
    loop.run()
    torch.testing.assert_close(sampler._indices, expected)
    errors = per_sample_errors(loop.predict, signal)
    assert errors.shape == (signal.num_samples,) and not errors.requires_grad


# -- nf-fit --sampler int ------------------------------------------------------------------------------------------


def test_nf_fit_int_logs_ratio_reselection_and_time(tmp_path: Path, photo_path: Path, capsys) -> None:
    out = tmp_path / "run"
    steps = 20
    code = main([str(photo_path), "--sampler", "int", "--int-max-interval", "4", "--steps", str(steps), "--lr", "1e-3",
                 "--hidden", "16", "--layers", "2", "--log-every", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    schedule = StepRatio()  # the default: 20 % -> 92 % in 10 stages
    num_samples = 256
    selected_at = None
    for record in records:  # one per step; the record after n steps describes step n - 1
        if record["int_reselected"]:
            selected_at = record["step"] - 1
        # Between reselections the subset, and so its size, is reused.
        assert record["int_ratio"] == selection_size(schedule.ratio(selected_at, steps), num_samples) / num_samples
        assert (record["int_select_s"] > 0) == record["int_reselected"]
    reselected = [r["step"] - 1 for r in records if r["int_reselected"]]
    # Incremental interval up to 4 over 10 stages of 2 steps: the early stages' intervals round to 1 (every step).
    assert reselected[:6] == [0, 1, 2, 3, 4, 5] and len(reselected) < steps
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["sampler"], config["int_ratio"], config["int_interval"], config["batch_size"]) == ("int", "step", "incremental", 0)
    assert json.loads((out / "summary.json").read_text())["sampler"] == "int"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--sampler", "int", "--batch-size", "64"], ["--batch-size 64", "--sampler int"]),
        (["--sampler", "int", "--int-ratio", "constant", "--int-ratio-start", "1"], ["--int-ratio-start 1", "--sampler full"]),
        (["--sampler", "int", "--int-ratio", "cosine", "--int-ratio-start", "1", "--int-ratio-end", "1"], ["--int-ratio-end 1"]),
        (["--sampler", "int", "--int-ratio-start", "1.5"], ["--int-ratio-start", "(0, 1]"]),
        (["--sampler", "int", "--int-ratio", "constant", "--int-ratio-start", "0"], ["--int-ratio-start", "(0, 1]"]),
        (["--sampler", "int", "--int-ratio-end", "-0.1"], ["--int-ratio-end", "(0, 1]"]),
        (["--sampler", "int", "--int-max-interval", "0"], ["--int-max-interval", ">= 1"]),
        (["--sampler", "int", "--int-stages", "1"], ["--int-stages"]),
        (["--sampler", "int", "--int-interval", "dense", "--int-max-interval", "10"], ["--int-max-interval", "dense"]),
        (["--int-ratio", "step"], ["--int-ratio", "--sampler int"]),
        (["--batch-size", "0", "--int-max-interval", "5"], ["--int-max-interval", "--sampler int"]),
        (["--sampler", "full", "--batch-size", "64"], ["--sampler full", "--batch-size 64"]),
        (["--sampler", "random", "--batch-size", "0"], ["--sampler random", "--batch-size"]),
    ],
)
def test_bad_int_input_one_line_no_output(tmp_path: Path, photo_path: Path, capsys, args, needles) -> None:
    out = tmp_path / "run"
    code = main([str(photo_path), "--steps", "5", "--out", str(out), *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()


def test_sampler_defaults_keep_the_old_behaviour(photo_path: Path) -> None:
    def resolved(**kwargs) -> FitConfig:
        return resolve(FitConfig(path=photo_path, out=Path("unused"), **kwargs))

    assert (resolved().sampler, resolved().batch_size) == ("random", 512)
    assert (resolved(optim="lbfgs").sampler, resolved(optim="lbfgs").batch_size) == ("full", 0)
    assert resolved(batch_size=0).sampler == "full" and resolved(batch_size=64).sampler == "random"
    assert (resolved(sampler="int").batch_size, resolved(sampler="int").int_ratio) == (0, "step")


# -- L-BFGS and the closure ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_batch_lbfgs_in_the_loop_matches_one_persistent_closure() -> None:
    """Reference twin: driving L-BFGS by hand with one closure. The loop must take the same steps with the same
    number of closure evaluations (a new closure every step would re-evaluate the start of each iteration)."""
    signal = tiny_signal()
    loop_model, twin = tiny_model(), tiny_model()
    loop = FitLoop(signal, loop_model, build_optimizer("lbfgs", loop_model), FullBatch(), LoopOptions(steps=8, log_every=8))
    outcome = loop.run()
    optimizer = build_optimizer("lbfgs", twin)
    closure = make_closure(optimizer, lambda: signal.loss(twin(signal.coords), signal.targets))
    for _ in range(8):
        optimizer.step(closure)
    assert outcome.closure_evals == optimizer.closure_evals
    for a, b in zip(loop_model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("policy, resets_expected", [("reset", True), ("keep", False)])
def test_lbfgs_on_reselect(photo_path: Path, policy: str, resets_expected: bool) -> None:
    config = resolve(FitConfig(path=photo_path, out=Path("unused"), optim="lbfgs", sampler="int", steps=12,
                               field=FieldConfig(hidden=16, layers=2), int_max_interval=3, lbfgs_on_reselect=policy, log_every=12))
    signal = tiny_signal()
    model, optimizer, sampler = build_components(config, signal)
    assert isinstance(sampler, INTSampler) and loop_options(config).reset_on_new_selection == resets_expected
    resets, changes = [], []
    original_reset = optimizer.reset
    optimizer.reset = lambda: (resets.append(loop.step), original_reset())
    original_next = sampler.next_indices

    def next_indices(step, errors):
        indices = original_next(step, errors)
        if sampler.selection_changed:
            changes.append(step)
        return indices

    sampler.next_indices = next_indices
    loop = FitLoop(signal, model, optimizer, sampler, loop_options(config))
    outcome = loop.run()
    assert outcome.status == "completed" and np.isfinite(outcome.history[-1]["loss"])
    assert len(changes) > 1
    assert resets == (changes if resets_expected else [])


@pytest.mark.slow
def test_int_with_esgd_trains(photo_path: Path) -> None:
    config = resolve(FitConfig(path=photo_path, out=Path("unused"), optim="esgd", sampler="int", steps=30,
                               field=FieldConfig(hidden=16, layers=2), int_max_interval=3, log_every=30))
    signal = tiny_signal()
    model, optimizer, sampler = build_components(config, signal)
    outcome = FitLoop(signal, model, optimizer, sampler, loop_options(config)).run()
    assert outcome.status == "completed"
    assert outcome.history[-1]["psnr"] > outcome.history[0]["psnr"] + 1.0


@pytest.mark.slow
def test_int_resume_continues_the_same_selection(tmp_path: Path) -> None:
    def loop_for(run_dir, steps: int) -> FitLoop:
        signal, model = tiny_signal(), tiny_model()
        sampler = INTSampler.from_options(INTOptions(max_interval=3), signal.num_samples, 12)
        return FitLoop(signal, model, build_optimizer("adam", model, lr=1e-3), sampler,
                       LoopOptions(steps=steps, log_every=4), run_dir=run_dir)

    straight = loop_for(None, 12)
    straight.run()
    run_dir = RunDir(tmp_path)
    loop_for(run_dir, 7).run()
    resumed = loop_for(run_dir, 12)
    resumed.load_state_dict(run_dir.load_checkpoint(torch.device("cpu")))
    resumed.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- nf-bench ------------------------------------------------------------------------------------------------------


def test_bench_runs_pick_their_own_sampler(photo_path: Path) -> None:
    specs = parse_optims("adam@1e-3,adam@1e-3+int,lbfgs+full")
    assert [spec.sampler for spec in specs] == [None, "int", "full"]
    base = BenchConfig(path=photo_path, batch_size=64, int_ratio="cosine")
    plain, with_int, full = (run_config(base, spec) for spec in specs)
    assert (plain.sampler, plain.batch_size, plain.int_ratio) == ("random", 64, None)
    assert (with_int.sampler, with_int.batch_size, with_int.int_ratio) == ("int", 0, "cosine")
    assert (full.sampler, full.batch_size) == ("full", 0)
    with pytest.raises(ValueError, match="unknown sampler"):
        parse_optims("adam+topk")
    assert run_config(BenchConfig(path=photo_path), RunSpec("lbfgs+int", "lbfgs", None, "int")).sampler == "int"


# -- presets -------------------------------------------------------------------------------------------------------

PRESETS = sorted((REPO / "configs" / "int").glob("*.yaml"))


def test_presets_cover_table1_and_table2() -> None:
    names = {path.stem for path in PRESETS}
    rows = {"none", "cosine-dense", "cosine-incremental", "rcosine-dense", "rcosine-decremental", "step-dense", "step-incremental"}
    assert {f"table1-{row}" for row in rows} <= names
    assert {f"table2-{m}{suffix}" for m in ("audio", "image", "megapixel", "shape") for suffix in ("", "-full")} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_resolves(preset: Path, photo_path: Path) -> None:
    config = dataclasses.replace(load_preset(preset), path=photo_path, out=Path("unused"))
    resolved = resolve(config)
    expect_int = not (preset.stem.endswith("-full") or preset.stem == "table1-none")
    assert (resolved.sampler == "int") == expect_int and resolved.batch_size == 0
    if preset.stem.startswith("table1-") and expect_int:
        ratio, interval = preset.stem.removeprefix("table1-").split("-")
        assert (resolved.int_ratio, resolved.int_interval) == (ratio, interval)
