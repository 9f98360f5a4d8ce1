"""What every signal (image, audio, video, occupancy) gives the generic fit loop."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

Predict = Callable[[torch.Tensor], torch.Tensor]
"""Evaluates the field on coordinates [P, in_features] -> [P, out_features], in chunks, without a graph."""


class SignalError(ValueError):
    """A signal cannot be loaded or used as asked; the message names the problem and the fix."""


class Signal(abc.ABC):
    """Coordinates in [-1, 1]^d with their targets, and how to score and save a reconstruction.

    ``coords``/``targets`` are the training samples (full batch); samplers draw mini-batches or INT subsets from
    them by index. ``loss`` is per-sample-averaged so full-batch and mini-batch losses are comparable.
    """

    kind: ClassVar[str]
    """"image", "audio", "video" or "occupancy": the key ``load_signal`` dispatches on."""
    metric: ClassVar[str]
    """Name of the headline metric in metrics.jsonl ("psnr" or "iou"); higher is better."""

    coords: torch.Tensor
    targets: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.coords.shape[-1]

    @property
    def out_features(self) -> int:
        return self.targets.shape[-1]

    @property
    def num_samples(self) -> int:
        return self.coords.shape[0]

    def to(self, device: torch.device | str) -> "Signal":
        self.coords = self.coords.to(device)
        self.targets = self.targets.to(device)
        return self

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error; occupancy overrides with binary cross-entropy on logits."""
        return torch.nn.functional.mse_loss(pred, target)

    def per_sample_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """How wrong the field is at each sample [P], what INT ranks by: |∂loss/∂pred| summed over channels.

        For the mean squared error that is |pred - target| (up to a constant factor, which does not change the
        ranking); a signal with another loss overrides this with its own gradient's magnitude.
        """
        return (pred - target).abs().reshape(pred.shape[0], -1).sum(dim=1)

    @abc.abstractmethod
    def evaluate(self, predict: Predict) -> dict[str, float]:
        """Metrics of the current field, the headline ``metric`` among them."""

    @abc.abstractmethod
    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        """Write the reconstruction (PNG/WAV/MP4/PLY) atomically into ``out_dir`` and return its path."""

    def final_metrics(self, predict: Predict) -> dict[str, float]:
        """Metrics for summary.json: ``evaluate`` plus any that are too costly to log every time (image SSIM)."""
        return self.evaluate(predict)

    def preview(self, predict: Predict) -> np.ndarray | None:
        """An HxWx3 uint8 picture of the reconstruction for the viewer, or None when there is nothing to show."""
        return None

    def target_preview(self) -> np.ndarray | None:
        """An HxWx3 uint8 picture of the target for the viewer (beside ``preview``), or None."""
        return None


@dataclass
class SignalOptions:
    """How a file becomes a signal; ``nf-fit`` exposes these as ``--signal.*`` flags."""

    resize: tuple[int, ...] | None = None
    """Resample to this size before fitting: (H, W) for images and video frames; None keeps the file's size."""
    frames: tuple[int, int] | None = None
    """Video only: the half-open frame range [start, stop) to fit; None fits every frame."""
    max_seconds: float | None = None
    """Audio only: fit at most this many seconds from the start; None fits the whole recording."""
    num_points: int = 100_000
    """Occupancy only: training points sampled around the mesh (paper 1: 100k; paper 2: 1M)."""
    surface_fraction: float = 0.5
    """Occupancy only: share of points drawn near the surface; the rest are uniform in the bounding box."""
    seed: int = 0
    """Seed for any sampling the loader does (occupancy points), so reruns see the same signal."""


Loader = Callable[[Path, SignalOptions], Signal]
"""Each signal module (``fitters.image``, ``.audio``, ``.video``, ``.occupancy``) exposes ``load(path, options)``."""
