"""Samplers: full batch, random mini-batches, and INT (nonparametric teaching) top-k selection."""

from nf_precond.sampling.base import ErrorFn, FullBatch, RandomBatches, Sampler

__all__ = ["ErrorFn", "FullBatch", "RandomBatches", "Sampler"]
