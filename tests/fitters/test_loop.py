"""The generic fit loop: records, counting, stopping rules, divergence roll-back, resume, sampler hooks."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from fitters import loop as loop_module
from fitters import metrics
from fitters.build import build_loop, loop_options
from fitters.config import FitConfig, fit_to_signal, resolve
from fitters.signals import SignalOptions, load_signal
from fitters.signals import base as signals_base
from fitters.signals.image import ImageSignal
from fitters.loop import FitLoop, LoopOptions, cosine_lr, per_sample_errors
from fitters.run_dir import RunDir
from nf_precond.nn import CoordinateMLP, FieldConfig
from nf_precond.optim import NonFiniteLossError, build_optimizer
from nf_precond.sampling import FullBatch, RandomBatches, Sampler

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parents[1] / "data"


def tiny_signal() -> ImageSignal:
    """A 16x16 gray crop of the cameraman photo (paper 1's image)."""
    return ImageSignal(data.camera()[200:232:2, 200:232:2, None].astype(np.float32) / 255.0)


def tiny_model(seed: int = 0) -> CoordinateMLP:
    torch.manual_seed(seed)
    return CoordinateMLP(2, 1, FieldConfig(hidden=16, layers=2, activation="sine"))


def make_loop(steps: int, *, optim: str = "adam", lr: float = 1e-3, sampler: Sampler | None = None, **kwargs) -> FitLoop:
    signal = tiny_signal()
    model = tiny_model()
    options = kwargs.pop("options", None) or LoopOptions(steps=steps, log_every=kwargs.pop("log_every", 1))
    return FitLoop(signal, model, build_optimizer(optim, model, lr=lr), sampler or FullBatch(), options, **kwargs)


def test_records_and_progress() -> None:
    outcome = make_loop(30, log_every=10).run()
    assert outcome.status == "completed" and outcome.step == 30
    assert [r["step"] for r in outcome.history] == [0, 10, 20, 30]
    for record in outcome.history:
        assert {"step", "time_s", "loss", "closure_evals", "psnr"} <= set(record)
    times = [r["time_s"] for r in outcome.history]
    assert times == sorted(times) and times[0] == 0.0
    assert outcome.history[-1]["psnr"] > outcome.history[0]["psnr"] + 3  # Adam full batch learns
    assert outcome.closure_evals == 30  # first-order: one closure per step
    assert outcome.final_metrics["psnr"] == pytest.approx(outcome.history[-1]["psnr"])


def test_logged_loss_is_the_steps_training_loss() -> None:
    loop = make_loop(1)
    model, signal = loop.model, loop.signal
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(model(signal.coords), signal.targets).item()
    outcome = loop.run()
    assert outcome.history[-1]["loss"] == pytest.approx(before, rel=1e-5)


def test_line_search_closure_evals_are_counted() -> None:
    pytest.importorskip("nf_precond.optim.lbfgs")
    loop = make_loop(5, optim="lbfgs", lr=1.0)
    calls = []
    original_step = loop.optimizer.step

    def spy(closure):
        def counting():
            calls.append(1)
            return closure()

        return original_step(counting)

    loop.optimizer.step = spy
    outcome = loop.run()
    assert outcome.closure_evals == len(calls) >= 5


def test_evaluation_time_is_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(2)
    real_evaluate = loop.signal.evaluate

    def slow_evaluate(predict):
        time.sleep(1.0)
        return real_evaluate(predict)

    monkeypatch.setattr(loop.signal, "evaluate", slow_evaluate)
    outcome = loop.run()  # three evaluations, 3 s of sleeping
    assert outcome.time_s < 1.0


def test_target_and_time_budget_stop_early() -> None:
    reached = make_loop(200, options=LoopOptions(steps=200, log_every=5, target=12.0)).run()
    assert reached.status == "target_reached" and reached.step < 200 and reached.history[-1]["psnr"] >= 12.0
    budget = make_loop(200, options=LoopOptions(steps=200, log_every=5, time_budget=1e-9)).run()
    assert budget.status == "time_budget" and budget.step <= 1


class NaNAfter(ImageSignal):
    """The loss turns NaN from the ``bad_call``-th loss evaluation on, like an lr that blew up."""

    def __init__(self, pixels: np.ndarray, bad_call: int):
        super().__init__(pixels)
        self.calls, self.bad_call = 0, bad_call

    def loss(self, pred, target):
        self.calls += 1
        loss = super().loss(pred, target)
        return loss * float("nan") if self.calls >= self.bad_call else loss


def test_divergence_rolls_back_to_last_good_checkpoint(tmp_path: Path) -> None:
    signal = NaNAfter(tiny_signal().targets.reshape(16, 16, 1).numpy(), bad_call=8)
    model = tiny_model()
    run_dir = RunDir(tmp_path)
    loop = FitLoop(
        signal, model, build_optimizer("sgd", model, lr=1e-2), FullBatch(),
        LoopOptions(steps=20, log_every=1, checkpoint_every=3), run_dir=run_dir,
    )
    outcome = loop.run()
    assert outcome.status == "diverged" and outcome.diverged_at == 8
    assert outcome.step == 6  # the last checkpoint before step 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = run_dir.read_metrics()
    assert all(np.isfinite(r["loss"]) for r in records if r["loss"] is not None)
    assert max(r["step"] for r in records) == 7
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 8 and summary["steps"] == 6
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 6


def test_optimizer_nonfinite_error_counts_as_divergence() -> None:
    loop = make_loop(10)
    calls = {"n": 0}
    original_step = loop.optimizer.step

    def failing_step(closure):
        calls["n"] += 1
        if calls["n"] == 4:
            raise NonFiniteLossError("loss is nan")
        return original_step(closure)

    loop.optimizer.step = failing_step
    outcome = loop.run()
    # No run folder: rolled back to the in-memory checkpoint of step 0 (the only one in a sub-second run).
    assert outcome.status == "diverged" and outcome.diverged_at == 4 and outcome.step == 0


def test_divergence_without_run_dir_rolls_back_and_counts_the_cut_time() -> None:
    """nf-bench runs have no run folder: a diverged run must still end on its last good weights (not NaN ones), and
    the training time up to the failing step stays counted."""
    options = LoopOptions(steps=10, log_every=1, checkpoint_every=2)
    loop = make_loop(10, lr=1e-3, options=options)
    snapshots: dict[int, list[torch.Tensor]] = {}
    loop.on_log = lambda record, preview: snapshots.__setitem__(
        record["step"], [p.detach().clone() for p in loop.model.parameters()]
    )
    original_step = loop.optimizer.step

    def poisoned_step(closure):
        if loop.step == 4:  # the fifth step: corrupt the weights as a diverging lr would, then fail
            with torch.no_grad():
                for param in loop.model.parameters():
                    param.fill_(float("nan"))
            time.sleep(0.05)
            raise NonFiniteLossError("loss is nan")
        return original_step(closure)

    loop.optimizer.step = poisoned_step
    outcome = loop.run()
    assert outcome.status == "diverged" and outcome.diverged_at == 5 and outcome.step == 4
    for param, saved in zip(loop.model.parameters(), snapshots[4]):
        torch.testing.assert_close(param, saved)
    assert np.isfinite(outcome.final_metrics["psnr"])
    assert outcome.time_s >= outcome.history[-1]["time_s"] + 0.05


@pytest.mark.parametrize("optim, batch", [("adam", 64), ("sgd", 0)])
def test_resume_continues_the_same_curve(tmp_path: Path, optim: str, batch: int) -> None:
    def sampler(signal):
        return RandomBatches(signal.num_samples, batch, seed=3) if batch else FullBatch()

    def loop_for(run_dir: RunDir | None, steps: int) -> FitLoop:
        signal, model = tiny_signal(), tiny_model()
        return FitLoop(
            signal, model, build_optimizer(optim, model, lr=1e-3), sampler(signal),
            LoopOptions(steps=steps, log_every=4), run_dir=run_dir,
        )

    straight = loop_for(None, 12)
    straight_outcome = straight.run()
    run_dir = RunDir(tmp_path)
    loop_for(run_dir, 8).run()
    resumed = loop_for(run_dir, 12)
    resumed.load_state_dict(run_dir.load_checkpoint(torch.device("cpu")))
    resumed_outcome = resumed.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["step"] for r in run_dir.read_metrics()] == [0, 4, 8, 12]
    assert resumed_outcome.history[-1]["loss"] == straight_outcome.history[-1]["loss"]
    assert resumed_outcome.closure_evals == straight_outcome.closure_evals


class RecordingSampler(Sampler):
    """Reselects every other step from the per-sample errors, like INT would."""

    def __init__(self) -> None:
        self.error_shapes: list[tuple[int, ...]] = []
        self._changed = False

    def next_indices(self, step, errors):
        self._changed = step % 2 == 0
        if self._changed:
            values = errors()
            assert not values.requires_grad
            self.error_shapes.append(tuple(values.shape))
        return torch.arange(0, 256, 2)

    @property
    def selection_changed(self) -> bool:
        return self._changed

    def stats(self):
        return {"recording": True}


def test_sampler_hooks_errors_reset_and_stats() -> None:
    sampler = RecordingSampler()
    loop = make_loop(6, sampler=sampler, options=LoopOptions(steps=6, log_every=3, reset_on_new_selection=True))
    resets = []
    loop.optimizer.reset = lambda: resets.append(loop.step)
    outcome = loop.run()
    assert sampler.error_shapes == [(256,)] * 3 and resets == [0, 2, 4]
    assert all(r.get("recording") for r in outcome.history[1:])


def test_per_sample_errors_match_dense_reference() -> None:
    signal, model = tiny_signal(), tiny_model()
    from fitters.loop import make_predict

    errors = per_sample_errors(make_predict(model, chunk=37), signal)
    with torch.no_grad():
        expected = (model(signal.coords) - signal.targets).abs().sum(-1)
    torch.testing.assert_close(errors, expected)


def test_on_log_gets_records_and_previews() -> None:
    seen = []
    loop = make_loop(4, log_every=2, on_log=lambda record, preview: seen.append((record["step"], preview().shape)))
    loop.run()
    assert seen == [(0, (16, 16, 3)), (2, (16, 16, 3)), (4, (16, 16, 3))]


def test_cosine_schedule_matches_torch_and_resumes_on_the_same_curve(tmp_path: Path) -> None:
    steps = 12
    param = torch.zeros(1, requires_grad=True)
    reference = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=steps, eta_min=1e-3)
    expected = []
    for _ in range(steps):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        scheduler.step()
    assert [cosine_lr(0.1, 1e-3, step, steps) for step in range(steps)] == pytest.approx(expected, rel=1e-12)

    def loop_for(run_dir: RunDir | None, target: float | None = None) -> FitLoop:
        signal, model = tiny_signal(), tiny_model()
        options = LoopOptions(steps=steps, log_every=4, lr_schedule="cosine", lr_min=1e-4, target=target)
        return FitLoop(signal, model, build_optimizer("adam", model, lr=1e-2), FullBatch(), options, run_dir=run_dir)

    straight = loop_for(None)
    history = straight.run().history
    assert [r["lr"] for r in history[1:]] == pytest.approx([cosine_lr(1e-2, 1e-4, s - 1, steps) for s in (4, 8, 12)])
    run_dir = RunDir(tmp_path)
    assert loop_for(run_dir, target=history[2]["psnr"]).run().step == 8  # stopped like an interrupted run
    resumed = loop_for(run_dir)
    resumed.load_state_dict(run_dir.load_checkpoint(torch.device("cpu")))
    resumed.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- evaluation that never dominates -------------------------------------------------------------------------------


def test_logs_measure_the_progress_subset_and_the_run_ends_on_the_whole_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals_base, "PROGRESS_SAMPLES", 64)  # the 256-pixel crop now counts as a large signal
    loop = make_loop(12, log_every=4)
    calls = []
    real_evaluate = loop.signal.evaluate
    monkeypatch.setattr(loop.signal, "evaluate", lambda predict, indices=None: calls.append(indices) or real_evaluate(predict, indices))
    outcome = loop.run()
    assert [r["eval_samples"] for r in outcome.history] == [64, 64, 64, 256]  # steps 0, 4, 8 on the subset, 12 whole
    subset = loop.progress_indices
    assert len(calls) == 3 and all(torch.equal(indices, subset) for indices in calls)  # the closing record: the final pass
    assert len(subset.unique()) == 64  # a fixed random subset, no repeats
    with torch.no_grad():
        truth = metrics.psnr(loop.model(loop.signal.coords).clamp(0, 1), loop.signal.targets)
    assert outcome.history[-1]["psnr"] == pytest.approx(truth, rel=1e-5) == outcome.final_metrics["psnr"]


def test_whole_signal_evaluations_are_spaced_in_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals_base, "PROGRESS_SAMPLES", 64)
    monkeypatch.setattr(loop_module, "FULL_EVAL_INTERVAL_S", 0.0)  # always due: every log measures everything
    outcome = make_loop(8, log_every=4).run()
    assert [r["eval_samples"] for r in outcome.history] == [64, 256, 256]  # the first log is never a whole one


def test_wall_budget_stops_a_run_whose_evaluation_is_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(10**6, options=LoopOptions(steps=10**6, log_every=1, time_budget=60.0, wall_budget=1.0))
    real_evaluate = loop.signal.evaluate

    def slow_evaluate(predict, indices=None):
        time.sleep(0.2)
        return real_evaluate(predict, indices)

    monkeypatch.setattr(loop.signal, "evaluate", slow_evaluate)
    started = time.monotonic()
    outcome = loop.run()
    assert outcome.status == "wall_budget" and outcome.time_s < 1.0
    assert time.monotonic() - started < 1.0 + 3 * 0.2  # the budget, the last log's and the final evaluation


def test_small_video_ends_within_its_wall_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nf-fit's resolved settings on a real clip: evaluation made 50x dearer than training still cannot keep the run
    past 1.5x its time budget."""
    config = resolve(FitConfig(path=DATA / "bikes.mp4", time_budget=1.0, threads=1, out=tmp_path,
                               signal=SignalOptions(resize=(8, 12))))  # fmt: skip
    signal = load_signal(config.path, config.signal)
    config = fit_to_signal(config, signal)
    real_evaluate = signal.evaluate

    def slow_evaluate(predict, indices=None):
        time.sleep(0.3)
        return real_evaluate(predict, indices)

    monkeypatch.setattr(signal, "evaluate", slow_evaluate)
    loop = build_loop(config, signal, loop_options(config), run_dir=RunDir(tmp_path))
    started = time.monotonic()
    outcome = loop.run()
    wall = time.monotonic() - started
    assert config.wall_budget == 1.5 and outcome.status in ("time_budget", "wall_budget")
    assert wall < config.wall_budget + 2 * 0.3 + 1.0  # the budget, the closing and final evaluations, writing


# -- checkpoints that scale with the parameters --------------------------------------------------------------------


def saved_bytes(value: object) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getbuffer().nbytes


@pytest.mark.parametrize(
    ("name", "signal_options"),
    [
        ("photo.png", SignalOptions()),
        ("front_center.wav", SignalOptions()),
        ("bikes.mp4", SignalOptions()),
        ("bone.ply", SignalOptions(num_points=20_000)),
    ],
)
def test_checkpoint_is_within_three_times_the_model_and_optimizer(tmp_path: Path, name: str,
                                                                  signal_options: SignalOptions) -> None:  # fmt: skip
    """Each signal type's default field, optimizer and sampler: the checkpoint holds the weights, the optimizer state
    and a few KB of RNG and sampler state, nothing per sample."""
    path = DATA / name
    if name == "photo.png":
        path = tmp_path / name
        iio.imwrite(path, data.astronaut()[::2, ::2])  # 256x256: 65536 pixels, 128 mini-batches per epoch
    config = resolve(FitConfig(path=path, steps=2, threads=1, compile="off", out=tmp_path, signal=signal_options))
    signal = load_signal(config.path, config.signal)
    config = fit_to_signal(config, signal)
    loop = build_loop(config, signal, loop_options(config), run_dir=RunDir(tmp_path))
    loop.run()
    size = (tmp_path / "checkpoint.pt").stat().st_size
    model_and_optimizer = saved_bytes({"model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict()})
    assert size <= 3 * model_and_optimizer
    assert size - model_and_optimizer < 64_000  # RNG and sampler state: the same few KB for any signal size
