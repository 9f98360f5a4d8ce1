"""Coordinate networks: activations (sine, Gaussian, Gabor wavelet, ReLU, Fourier positional encoding),
``CoordinateMLP``, and ``BatchedMLP`` (thousands of independent tiny MLPs, one ``baddbmm`` per layer)."""

from nf_precond.nn.activations import ACTIVATIONS, FourierFeatures, GaborWavelet, Gaussian, Sine
from nf_precond.nn.batched import BatchedMLP
from nf_precond.nn.compiled import AUTO_MIN_POINT_STEPS, CompiledField, compiled_field
from nf_precond.nn.mlp import INITS, ActivationName, CoordinateMLP, FieldConfig

__all__ = [
    "ACTIVATIONS",
    "AUTO_MIN_POINT_STEPS",
    "ActivationName",
    "INITS",
    "BatchedMLP",
    "CompiledField",
    "compiled_field",
    "CoordinateMLP",
    "FieldConfig",
    "FourierFeatures",
    "GaborWavelet",
    "Gaussian",
    "Sine",
]
