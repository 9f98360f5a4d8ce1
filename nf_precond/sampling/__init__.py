"""Samplers: full batch, random mini-batches, and INT (nonparametric teaching) top-k selection."""

from nf_precond.sampling.base import ErrorFn, FullBatch, RandomBatches, Sampler
from nf_precond.sampling.int_teaching import INTOptions, INTSampler, chunked_errors, top_k_indices
from nf_precond.sampling.schedules import (
    ConstantRatio,
    CosineRatio,
    DecrementalInterval,
    DenseInterval,
    IncrementalInterval,
    IntervalSchedule,
    RatioSchedule,
    ReverseCosineRatio,
    StepRatio,
    make_interval_schedule,
    make_ratio_schedule,
)

__all__ = [
    "ConstantRatio",
    "CosineRatio",
    "DecrementalInterval",
    "DenseInterval",
    "ErrorFn",
    "FullBatch",
    "INTOptions",
    "INTSampler",
    "IncrementalInterval",
    "IntervalSchedule",
    "RandomBatches",
    "RatioSchedule",
    "ReverseCosineRatio",
    "Sampler",
    "StepRatio",
    "chunked_errors",
    "make_interval_schedule",
    "make_ratio_schedule",
    "top_k_indices",
]
