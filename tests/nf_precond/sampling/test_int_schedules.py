"""INT ratio and interval schedules: the paper's endpoints and stage values, monotonicity, and bad input."""

from __future__ import annotations

import math

import pytest

from nf_precond.sampling.schedules import (
    ConstantRatio,
    CosineRatio,
    DecrementalInterval,
    DenseInterval,
    IncrementalInterval,
    ReverseCosineRatio,
    StepRatio,
    make_interval_schedule,
    make_ratio_schedule,
    progress,
    stage,
)

RUN_LENGTHS = [1, 2, 7, 10, 37, 5000]


def ratios(schedule, total_steps: int) -> list[float]:
    return [schedule.ratio(step, total_steps) for step in range(total_steps)]


def intervals(schedule, total_steps: int) -> list[int]:
    return [schedule.interval(step, total_steps) for step in range(total_steps)]


def is_non_decreasing(values: list[float]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))


def is_non_increasing(values: list[float]) -> bool:
    return all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("total_steps", RUN_LENGTHS)
def test_stages_are_equal_length_and_cover_first_to_last(total_steps):
    stages = [stage(step, total_steps, 10) for step in range(total_steps)]
    assert stages[0] == 0
    assert is_non_decreasing(stages)
    assert all(0 <= s < 10 for s in stages)
    if total_steps >= 2:
        assert stages[-1] == 9


def test_stage_boundaries_match_the_paper_split():
    # Appendix C.3: 5000 steps in 10 stages -> a new stage every 500 steps; C.4: 10k steps -> every 1k.
    for total_steps, length in [(5000, 500), (10_000, 1000)]:
        for s in range(10):
            assert stage(s * length, total_steps, 10) == s
            assert stage(s * length + length - 1, total_steps, 10) == s


@pytest.mark.parametrize("total_steps", RUN_LENGTHS)
@pytest.mark.parametrize(
    "schedule, first, last, monotone",
    [
        (ConstantRatio(), 0.2, 0.2, is_non_decreasing),
        (StepRatio(), 0.2, 0.92, is_non_decreasing),
        (CosineRatio(), 0.2, 1.0, is_non_decreasing),
        (ReverseCosineRatio(), 1.0, 0.2, is_non_increasing),
    ],
    ids=["constant", "step", "cosine", "rcosine"],
)
def test_ratio_schedules_hit_their_endpoints_monotonically(schedule, first, last, monotone, total_steps):
    values = ratios(schedule, total_steps)
    assert math.isclose(values[0], first, abs_tol=1e-12)
    if total_steps >= 2:
        assert math.isclose(values[-1], last, abs_tol=1e-12)
    assert monotone(values)
    assert all(0.0 < v <= 1.0 for v in values)
    # steps past the end keep the end value
    assert math.isclose(schedule.ratio(total_steps + 5, total_steps), values[-1], abs_tol=1e-12)


def test_step_ratio_adds_eight_percent_every_tenth_of_the_run():
    # Appendix C.2/C.4: 20 % rising by 8 % every 500 of 5000 steps to 92 %.
    schedule = StepRatio()
    for s in range(10):
        assert math.isclose(schedule.ratio(500 * s, 5000), 0.2 + 0.08 * s, abs_tol=1e-12)
        assert math.isclose(schedule.ratio(500 * s + 499, 5000), 0.2 + 0.08 * s, abs_tol=1e-12)


@pytest.mark.parametrize("schedule_class", [CosineRatio, ReverseCosineRatio])
def test_cosine_schedules_follow_half_a_cosine(schedule_class):
    schedule = schedule_class()
    total_steps = 101
    for step in range(total_steps):
        t = step / (total_steps - 1)
        expected = schedule.start + (schedule.end - schedule.start) * (1 - math.cos(math.pi * t)) / 2
        assert math.isclose(schedule.ratio(step, total_steps), expected, abs_tol=1e-12)
    # the midpoint is halfway between the endpoints
    assert math.isclose(schedule.ratio(50, total_steps), (schedule.start + schedule.end) / 2, abs_tol=1e-12)


def test_stepped_intervals_follow_appendix_c3():
    # "increases from every 1 iteration to 90 ... increase the interval by 10, except for the first 500 iterations
    # where we increase by 9 from 1 to 10"; decremental is the same ladder downwards.
    ladder = [1, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert [IncrementalInterval().interval(500 * s, 5000) for s in range(10)] == ladder
    assert [DecrementalInterval().interval(500 * s, 5000) for s in range(10)] == ladder[::-1]


@pytest.mark.parametrize("total_steps", RUN_LENGTHS)
@pytest.mark.parametrize("max_interval", [1, 10, 90])
def test_interval_schedules_are_monotone_integers_within_bounds(total_steps, max_interval):
    incremental = intervals(IncrementalInterval(max_interval=max_interval), total_steps)
    decremental = intervals(DecrementalInterval(max_interval=max_interval), total_steps)
    for values in (incremental, decremental):
        assert all(isinstance(v, int) and 1 <= v <= max_interval for v in values)
    assert is_non_decreasing(incremental) and incremental[0] == 1
    assert is_non_increasing(decremental) and decremental[0] == max_interval
    if total_steps >= 2:
        assert incremental[-1] == max_interval and decremental[-1] == 1
    assert intervals(DenseInterval(), total_steps) == [1] * total_steps


def test_factories_map_cli_names_and_keep_paper_defaults():
    assert make_ratio_schedule("constant") == ConstantRatio(0.2)
    assert make_ratio_schedule("constant", start=0.4) == ConstantRatio(0.4)
    assert make_ratio_schedule("step") == StepRatio(0.2, 0.92, 10)
    assert make_ratio_schedule("step", num_stages=5) == StepRatio(0.2, 0.92, 5)
    assert make_ratio_schedule("cosine", num_stages=5) == CosineRatio(0.2, 1.0)  # no stages: ignored
    assert make_ratio_schedule("rcosine", end=0.3) == ReverseCosineRatio(1.0, 0.3)
    assert make_interval_schedule("dense", num_stages=5) == DenseInterval()
    assert make_interval_schedule("incremental") == IncrementalInterval(90, 10)
    assert make_interval_schedule("decremental", max_interval=10, num_stages=4) == DecrementalInterval(10, 4)


@pytest.mark.parametrize(
    "build, flag",
    [
        (lambda: make_ratio_schedule("linear"), "INTOptions.ratio "),
        (lambda: make_interval_schedule("sparse"), "INTOptions.interval "),
        (lambda: ConstantRatio(0.0), "INTOptions.ratio_start"),
        (lambda: ConstantRatio(1.5), "INTOptions.ratio_start"),
        (lambda: StepRatio(start=-0.1), "INTOptions.ratio_start"),
        (lambda: StepRatio(end=1.01), "INTOptions.ratio_end"),
        (lambda: StepRatio(start=0.5, end=0.3), "INTOptions.ratio_end"),
        (lambda: StepRatio(num_stages=1), "INTOptions.stages"),
        (lambda: CosineRatio(start=0.9, end=0.5), "INTOptions.ratio_end"),
        (lambda: ReverseCosineRatio(start=0.5, end=0.9), "INTOptions.ratio_end"),
        (lambda: ReverseCosineRatio(end=float("nan")), "INTOptions.ratio_end"),
        (lambda: IncrementalInterval(max_interval=0), "INTOptions.max_interval"),
        (lambda: DecrementalInterval(num_stages=0), "INTOptions.stages"),
        (lambda: make_ratio_schedule("constant", end=0.5), "INTOptions.ratio_end"),
        (lambda: make_interval_schedule("dense", max_interval=5), "INTOptions.max_interval"),
    ],
)
def test_bad_values_raise_naming_the_flag(build, flag):
    with pytest.raises(ValueError) as error:
        build()
    message = str(error.value)
    assert flag in message and "\n" not in message


@pytest.mark.parametrize("step, total_steps", [(-1, 10), (0, 0)])
def test_bad_steps_raise(step, total_steps):
    with pytest.raises(ValueError):
        progress(step, total_steps)
    with pytest.raises(ValueError):
        StepRatio().ratio(step, total_steps)
    with pytest.raises(ValueError):
        DenseInterval().interval(step, total_steps)
