"""RandomBatches: epochs without replacement, and a checkpoint state that does not grow with the signal."""

from __future__ import annotations

import io

import pytest
import torch

from nf_precond.sampling import INTSampler, RandomBatches
from nf_precond.sampling.schedules import DenseInterval, StepRatio


def no_errors() -> torch.Tensor:
    raise AssertionError("random batches never ask for errors")


def draw(sampler: RandomBatches, steps: range) -> list[torch.Tensor]:
    return [sampler.next_indices(step, no_errors) for step in steps]


def saved_bytes(state: dict) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def test_every_epoch_visits_each_sample_once() -> None:
    sampler = RandomBatches(100, 10, seed=1)
    first, second = torch.cat(draw(sampler, range(10))), torch.cat(draw(sampler, range(10, 20)))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(100))
    assert not torch.equal(first, second)  # reshuffled


@pytest.mark.parametrize("stop", [0, 3, 10, 14])  # before the first batch, mid-epoch, at an epoch's end, later
def test_resume_draws_the_same_batches(stop: int) -> None:
    straight = draw(RandomBatches(100, 10, seed=7), range(25))
    first = RandomBatches(100, 10, seed=7)
    draw(first, range(stop))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = RandomBatches(100, 10, seed=7)
    resumed.load_state_dict(torch.load(buffer))
    for got, want in zip(draw(resumed, range(stop, 25)), straight[stop:]):
        assert torch.equal(got, want)


def test_state_size_does_not_grow_with_the_signal() -> None:
    small, large = RandomBatches(1_000, 512), RandomBatches(4_000_000, 512)
    for sampler in (small, large):
        draw(sampler, range(3))
    # A permutation of 4M samples would be 32 MB; the state is the generator's (a few KB) and a cursor.
    assert saved_bytes(large.state_dict()) == saved_bytes(small.state_dict()) < 16_000


def test_loading_state_for_another_signal_size_raises() -> None:
    state = RandomBatches(100, 10).state_dict()
    with pytest.raises(ValueError, match="100 samples"):
        RandomBatches(101, 10).load_state_dict(state)


def test_int_state_is_one_bit_per_sample() -> None:
    num_samples = 80_000
    sampler = INTSampler(num_samples, 10, StepRatio(), DenseInterval())
    sampler.next_indices(0, lambda: torch.rand(num_samples))
    state = sampler.state_dict()
    index_list_bytes = sampler.stats()["int_ratio"] * num_samples * 8
    assert saved_bytes(state) < num_samples / 8 + 2_000 < index_list_bytes / 10
