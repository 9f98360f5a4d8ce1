"""INTSampler and chunked_errors: exact top-k, reuse between reselections, no graph or memory growth, resume."""

from __future__ import annotations

import gc
import io
import math
import sys
import weakref
from fractions import Fraction

import pytest
import torch

from nf_precond.sampling import (
    ConstantRatio,
    DenseInterval,
    IncrementalInterval,
    INTOptions,
    INTSampler,
    ReverseCosineRatio,
    StepRatio,
    chunked_errors,
)
from nf_precond.sampling.int_teaching import selection_size

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class FixedInterval:
    """Reselect every ``every`` steps: isolates the sampler's reuse logic from the paper's ladders."""

    def __init__(self, every: int):
        self.every = every

    def interval(self, step: int, total_steps: int) -> int:
        return self.every


class CountingErrors:
    """An errors_fn that records how often it was called and returns whatever ``values`` currently holds."""

    def __init__(self, values: torch.Tensor):
        self.values = values
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.values


def tiny_field(out_features: int = 1) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, out_features))


def reference_top_k_values(errors: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest errors by a full descending sort (the plain twin of torch.topk)."""
    return torch.sort(errors, descending=True).values[:k]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_samples", [1, 2, 10, 1000])
@pytest.mark.parametrize("ratio", [0.01, 0.2, 0.5, 0.92])
@pytest.mark.parametrize("with_ties", [False, True])
def test_selection_is_exactly_the_k_largest_errors(device, num_samples, ratio, with_ties):
    if with_ties:  # few distinct values: the cut-off almost always falls inside a run of equal errors
        errors = torch.randint(0, 4, (num_samples,)).float().to(device)
    else:
        errors = torch.randn(num_samples).to(device)
    k = math.ceil(Fraction(str(ratio)) * num_samples)
    sampler = INTSampler(num_samples, 10, ConstantRatio(ratio), DenseInterval(), device)
    indices = sampler.next_indices(0, lambda: errors)
    if k == num_samples:
        assert indices is None  # everything selected: the full batch
        return
    assert indices.device.type == torch.device(device).type and indices.dtype == torch.long
    assert indices.numel() == k
    assert torch.equal(indices, torch.sort(indices).values) and indices.unique().numel() == k
    torch.testing.assert_close(torch.sort(errors[indices], descending=True).values, reference_top_k_values(errors, k))
    unselected = torch.ones(num_samples, dtype=torch.bool, device=device)
    unselected[indices] = False
    if unselected.any():
        assert errors[unselected].max() <= errors[indices].min()


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.28, 0.92, 1 / 3, 0.999, 1.0])
@pytest.mark.parametrize("num_samples", [1, 3, 10, 100, 65_536, 1_000_003])
def test_selection_size_is_the_exact_ceiling(ratio, num_samples):
    exact = math.ceil(Fraction(str(ratio)) * num_samples)  # the ratio as the decimal a user typed
    assert selection_size(ratio, num_samples) == exact


def test_selection_is_reused_between_reselections():
    num_samples, every = 50, 3
    errors = CountingErrors(torch.randn(num_samples))
    sampler = INTSampler(num_samples, 20, ConstantRatio(0.2), FixedInterval(every), "cpu")
    previous = None
    reselections, select_total_s = 0, 0.0
    for step in range(10):
        errors.values = torch.randn(num_samples)  # the field moves every step
        calls_before = errors.calls
        indices = sampler.next_indices(step, errors)
        stats = sampler.stats()
        reselected = step % every == 0
        assert errors.calls == calls_before + reselected
        assert stats["int_reselected"] is reselected
        assert stats["int_ratio"] == indices.numel() / num_samples
        reselections += reselected
        select_total_s += stats["int_select_s"]
        assert stats["int_reselections"] == reselections
        assert stats["int_select_total_s"] == pytest.approx(select_total_s)
        if reselected:
            assert stats["int_select_s"] > 0
            torch.testing.assert_close(
                torch.sort(errors.values[indices], descending=True).values, reference_top_k_values(errors.values, 10)
            )
        else:
            assert stats["int_select_s"] == 0
            assert torch.equal(indices, previous)
            assert not sampler.selection_changed
        previous = indices


def test_selection_changed_only_when_the_subset_differs():
    num_samples = 40
    errors = CountingErrors(torch.arange(num_samples, dtype=torch.float32))
    sampler = INTSampler(num_samples, 10, ConstantRatio(0.25), DenseInterval(), "cpu")
    sampler.next_indices(0, errors)
    assert sampler.selection_changed  # the first selection is new
    sampler.next_indices(1, errors)  # same errors -> same subset
    assert sampler.stats()["int_reselected"] and not sampler.selection_changed
    errors.values = errors.values.flip(0)
    sampler.next_indices(2, errors)
    assert sampler.selection_changed


def test_ratio_changes_take_effect_at_the_next_reselection():
    num_samples = 100
    errors = CountingErrors(torch.randn(num_samples))
    # 10 steps in 10 stages: the fraction grows every step, but the subset is only re-ranked every 4 steps.
    sampler = INTSampler(num_samples, 10, StepRatio(0.2, 0.92, 10), FixedInterval(4), "cpu")
    sizes = [sampler.next_indices(step, errors).numel() for step in range(10)]
    assert sizes == [20] * 4 + [52] * 4 + [84] * 2


def test_everything_selected_is_the_full_batch_without_an_error_pass():
    errors = CountingErrors(torch.randn(30))
    sampler = INTSampler(30, 100, ReverseCosineRatio(), DenseInterval(), "cpu")
    assert sampler.next_indices(0, errors) is None
    assert errors.calls == 0
    assert sampler.stats()["int_ratio"] == 1.0
    assert sampler.next_indices(99, errors).numel() == 6  # 20 % at the end
    assert errors.calls == 1 and sampler.selection_changed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 7, 1024, 5000])
@pytest.mark.parametrize("out_features", [1, 3])
def test_chunked_errors_match_the_dense_error_without_a_graph(camera_crop, device, chunk, out_features):
    coords, gray = camera_crop
    coords = coords.to(device)
    targets = gray.repeat(1, out_features).to(device)
    field = tiny_field(out_features).to(device)
    errors = chunked_errors(field, coords, targets, chunk)
    assert errors.shape == (coords.shape[0],)
    assert not errors.requires_grad and errors.grad_fn is None
    with torch.no_grad():
        expected = (field(coords) - targets).abs().sum(dim=1)
    torch.testing.assert_close(errors, expected)


def test_errors_fn_runs_without_grad_even_if_it_forgets_no_grad(camera_crop):
    coords, targets = camera_crop
    field = tiny_field()
    seen_grad_mode = []

    def careless_errors() -> torch.Tensor:
        seen_grad_mode.append(torch.is_grad_enabled())
        return (field(coords) - targets).abs().sum(dim=1)

    sampler = INTSampler(coords.shape[0], 10, ConstantRatio(0.2), DenseInterval(), "cpu")
    indices = sampler.next_indices(0, careless_errors)
    assert seen_grad_mode == [False]
    assert not indices.requires_grad and indices.grad_fn is None


def live_tensor_count() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))  # type(): no lazy-module warnings


def test_many_selections_keep_no_errors_graphs_or_extra_tensors(camera_crop):
    coords, targets = camera_crop
    field = tiny_field()
    num_samples = coords.shape[0]
    sampler = INTSampler(num_samples, 200, StepRatio(), DenseInterval(), "cpu")
    last_errors: list[weakref.ref] = []

    def errors() -> torch.Tensor:
        values = chunked_errors(field, coords, targets, chunk=256)
        last_errors.append(weakref.ref(values))
        return values

    def train_step(step: int) -> None:
        indices = sampler.next_indices(step, errors)
        batch = slice(None) if indices is None else indices
        loss = torch.nn.functional.mse_loss(field(coords[batch]), targets[batch])
        loss.backward()
        with torch.no_grad():
            for p in field.parameters():
                p -= 1e-2 * p.grad
                p.grad = None

    for step in range(5):  # warm-up: the sampler's own state exists from here on
        train_step(step)
    tensors_before = live_tensor_count()
    refcounts_before = [sys.getrefcount(p) for p in field.parameters()]
    for step in range(5, 45):
        train_step(step)
    assert live_tensor_count() == tensors_before
    assert [sys.getrefcount(p) for p in field.parameters()] == refcounts_before
    assert all(ref() is None for ref in last_errors)  # the sampler keeps no error tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_selection_does_not_grow_cuda_memory(camera_crop):
    coords, targets = (t.cuda() for t in camera_crop)
    field = tiny_field().cuda()
    sampler = INTSampler(coords.shape[0], 100, ConstantRatio(0.2), DenseInterval(), "cuda")

    def errors() -> torch.Tensor:
        return chunked_errors(field, coords, targets, chunk=256)

    sampler.next_indices(0, errors)
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    for step in range(1, 50):
        sampler.next_indices(step, errors)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated


def run_steps(sampler: INTSampler, steps: range, error_values: list[torch.Tensor]) -> tuple[list, list[int]]:
    """Indices per step and the steps on which the sampler asked for errors."""
    picked, asked = [], []
    for step in steps:
        def errors(step: int = step) -> torch.Tensor:
            asked.append(step)
            return error_values[step]

        indices = sampler.next_indices(step, errors)
        picked.append(None if indices is None else indices.clone())
    return picked, asked


def test_state_dict_round_trip_resumes_the_same_selections():
    num_samples, total_steps = 200, 60
    error_values = [torch.randn(num_samples) for _ in range(total_steps)]
    schedules = (StepRatio(), IncrementalInterval(max_interval=9))
    uninterrupted = INTSampler(num_samples, total_steps, *schedules, "cpu")
    expected, expected_asked = run_steps(uninterrupted, range(total_steps), error_values)

    first_half = INTSampler(num_samples, total_steps, *schedules, "cpu")
    run_steps(first_half, range(25), error_values)
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)
    buffer.seek(0)
    resumed = INTSampler(num_samples, total_steps, *schedules, "cpu")
    resumed.load_state_dict(torch.load(buffer))
    totals = ("int_reselections", "int_select_total_s")
    assert [resumed.stats()[key] for key in totals] == [first_half.stats()[key] for key in totals]
    picked, asked = run_steps(resumed, range(25, total_steps), error_values)
    assert resumed.stats()["int_reselections"] == uninterrupted.stats()["int_reselections"]

    assert asked == [s for s in expected_asked if s >= 25]
    assert len(asked) < total_steps - 25  # the schedule really reused selections across the resume point
    for got, want in zip(picked, expected[25:]):
        assert torch.equal(got, want)


def test_loading_state_for_another_signal_size_raises():
    state = INTSampler(100, 10, ConstantRatio(), DenseInterval()).state_dict()
    with pytest.raises(ValueError, match="100 samples"):
        INTSampler(101, 10, ConstantRatio(), DenseInterval()).load_state_dict(state)


def test_from_options_defaults_to_the_papers_step_incremental_strategy():
    sampler = INTSampler.from_options(INTOptions(), num_samples=10, total_steps=5000)
    assert sampler.ratio_schedule == StepRatio()
    assert sampler.interval_schedule == IncrementalInterval()
    with pytest.raises(ValueError, match="INTOptions.interval"):
        INTSampler.from_options(INTOptions(interval="sometimes"), num_samples=10, total_steps=5000)
    with pytest.raises(ValueError, match="INTOptions.ratio_start"):
        INTSampler.from_options(INTOptions(ratio_start=2.0), num_samples=10, total_steps=5000)


@pytest.mark.parametrize(
    "build",
    [
        lambda: INTSampler(0, 10, ConstantRatio(), DenseInterval()),
        lambda: INTSampler(10, 0, ConstantRatio(), DenseInterval()),
        lambda: INTSampler(10, 10, ConstantRatio(), DenseInterval()).next_indices(0, lambda: torch.zeros(9)),
        lambda: INTSampler(10, 10, ConstantRatio(), DenseInterval()).next_indices(0, lambda: torch.zeros(10, 1)),
        lambda: chunked_errors(tiny_field(), torch.zeros(4, 2), torch.zeros(4, 1), chunk=0),
        lambda: chunked_errors(tiny_field(), torch.zeros(4, 2), torch.zeros(5, 1), chunk=2),
        lambda: chunked_errors(tiny_field(), torch.zeros(4, 2), torch.zeros(4, 3), chunk=2),
    ],
    ids=["no-samples", "no-steps", "short-errors", "2d-errors", "chunk-0", "row-mismatch", "channel-mismatch"],
)
def test_bad_input_raises_a_one_line_value_error(build):
    with pytest.raises(ValueError) as error:
        build()
    assert "\n" not in str(error.value)
