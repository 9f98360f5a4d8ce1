"""nf_precond: curvature-aware optimizers, activations and fields for neural fields.

The core imports only torch and numpy; fitters and the nerfstudio plugin build on it.
"""

__version__ = "0.1.0"
