"""What every signal (image, audio, video, occupancy) gives the generic fit loop."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

Predict = Callable[[torch.Tensor], torch.Tensor]
"""Evaluates the field on coordinates [P, in_features] -> [P, out_features], in chunks, without a graph."""


class SignalError(ValueError):
    """A signal cannot be loaded or used as asked; the message names the problem and the fix."""


EVAL_BLOCK = 1 << 18
"""Samples whose coordinates, targets and predictions exist at once while a metric sweeps the whole signal: memory
stays flat whatever the signal's size."""
PROGRESS_SAMPLES = 1 << 16
"""Samples in the fixed random subset the progress metric is measured on; a signal with no more evaluation samples
than this is measured whole at every log."""


class Signal(abc.ABC):
    """Coordinates in [-1, 1]^d with their targets, and how to score and save a reconstruction.

    Samplers pick training samples by index; ``batch(indices)`` builds their coordinates and targets on demand, so a
    signal stores its targets compactly (8-bit where the file is 8-bit) and a grid signal generates coordinates
    instead of storing one float per coordinate and sample. ``loss`` is per-sample-averaged so full-batch and
    mini-batch losses are comparable.

    The base class serves signals that store both as tensors (``coords``/``targets`` assigned by the subclass, as
    tiled Kilo signals do); grid signals override ``make_coords``, ``make_targets`` and the sizes.
    """

    kind: ClassVar[str]
    """"image", "audio", "video" or "occupancy": the key ``load_signal`` dispatches on."""
    metric: ClassVar[str]
    """Name of the headline metric in metrics.jsonl ("psnr" or "iou"); higher is better."""
    least_squares: ClassVar[bool] = True
    """The loss is the mean square of ``residuals``, so least-squares optimizers (Levenberg–Marquardt) apply."""

    _coords: torch.Tensor | None = None
    _targets: torch.Tensor | None = None

    # -- samples --------------------------------------------------------------------------------------------------
    @property
    def coords(self) -> torch.Tensor:
        """Every sample's coordinates [N, d]. A grid signal builds them on first use and keeps them; code that can
        work on blocks of samples should call ``coords_at`` instead."""
        if self._coords is None:
            self._coords = self.make_coords(torch.arange(self.num_samples, device=self.device))
        return self._coords

    @coords.setter
    def coords(self, value: torch.Tensor) -> None:
        """Assigned coordinates replace the generated ones (e.g. float64 copies for a curvature study)."""
        self._coords = value

    @property
    def targets(self) -> torch.Tensor:
        """Every sample's targets [N, C] as floats, decoded from the compact storage on each access."""
        if self._targets is not None:
            return self._targets
        return self.make_targets(torch.arange(self.num_samples, device=self.device))

    @targets.setter
    def targets(self, value: torch.Tensor) -> None:
        """Assigned float targets replace the compact storage."""
        self._targets = value

    def make_coords(self, indices: torch.Tensor) -> torch.Tensor:
        """Coordinates of the samples ``indices`` when none were assigned; grid signals compute them."""
        raise NotImplementedError(f"{type(self).__name__} stores no coordinates and generates none")

    def make_targets(self, indices: torch.Tensor) -> torch.Tensor:
        """Float targets of the samples ``indices`` when none were assigned; signals decode their storage."""
        raise NotImplementedError(f"{type(self).__name__} stores no targets")

    def coords_at(self, indices: torch.Tensor) -> torch.Tensor:
        """Coordinates [len(indices), d] of the samples ``indices``."""
        return self._coords[indices] if self._coords is not None else self.make_coords(indices)

    def targets_at(self, indices: torch.Tensor) -> torch.Tensor:
        """Float targets [len(indices), C] of the samples ``indices``."""
        return self._targets[indices] if self._targets is not None else self.make_targets(indices)

    def batch(self, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(coordinates, targets) of the samples ``indices``; None = every sample (the full batch)."""
        if indices is None:
            return self.coords, self.targets
        return self.coords_at(indices), self.targets_at(indices)

    @property
    def in_features(self) -> int:
        return self.coords.shape[-1]

    @property
    def out_features(self) -> int:
        return self.targets.shape[-1]

    @property
    def num_samples(self) -> int:
        return self.coords.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the samples live (and the field should run): those the signal stores (grid signals override this)."""
        stored = self._coords if self._coords is not None else self._targets
        if stored is None:
            raise NotImplementedError(f"{type(self).__name__} stores no samples; it must say where they live (device)")
        return stored.device

    def to(self, device: torch.device | str) -> "Signal":
        if self._coords is not None:
            self._coords = self._coords.to(device)
        if self._targets is not None:
            self._targets = self._targets.to(device)
        return self

    # -- evaluation -----------------------------------------------------------------------------------------------
    @property
    def num_eval_samples(self) -> int:
        """Samples ``evaluate`` measures: the training samples, unless the signal holds out others (occupancy)."""
        return self.num_samples

    def blocks(self, count: int, size: int | None = None) -> Iterator[torch.Tensor]:
        """Index ranges [start, stop) of at most ``size`` (default ``EVAL_BLOCK``) samples covering ``range(count)``,
        on the signal's device."""
        size = size or EVAL_BLOCK
        for start in range(0, count, size):
            yield torch.arange(start, min(start + size, count), device=self.device)

    def progress_indices(self, seed: int = 0) -> torch.Tensor | None:
        """A fixed, sorted random subset of ``PROGRESS_SAMPLES`` evaluation samples for the progress metric; None when
        the signal is small enough to evaluate whole at every log."""
        count = self.num_eval_samples
        if count <= PROGRESS_SAMPLES:
            return None
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(count, generator=generator)[:PROGRESS_SAMPLES].sort().values.to(self.device)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error; occupancy overrides with binary cross-entropy on logits."""
        return torch.nn.functional.mse_loss(pred, target)

    def residuals(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The residuals whose mean square is ``loss`` (for optimizers that want residuals, not a loss)."""
        if not self.least_squares:
            raise ValueError(f"{self.kind} signals do not train with a mean squared error; no residuals to fit")
        return pred - target

    def per_sample_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """How wrong the field is at each sample [P], what INT ranks by: |∂loss/∂pred| summed over channels.

        For the mean squared error that is |pred - target| (up to a constant factor, which does not change the
        ranking); a signal with another loss overrides this with its own gradient's magnitude.
        """
        return (pred - target).abs().reshape(pred.shape[0], -1).sum(dim=1)

    def per_sample_errors(self, predict: Predict) -> torch.Tensor:
        """``per_sample_error`` of every training sample [N], block by block (what INT ranks)."""
        errors = torch.empty(self.num_samples, device=self.device)
        for indices in self.blocks(self.num_samples):
            coords, targets = self.batch(indices)
            errors[indices] = self.per_sample_error(predict(coords), targets)
        return errors

    @abc.abstractmethod
    def evaluate(self, predict: Predict, indices: torch.Tensor | None = None) -> dict[str, float]:
        """Metrics of the current field, the headline ``metric`` among them: over every evaluation sample, or over the
        evaluation samples ``indices`` (the progress subset)."""

    @abc.abstractmethod
    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        """Write the reconstruction (PNG/WAV/MP4/PLY) atomically into ``out_dir`` and return its path."""

    def final_metrics(self, predict: Predict) -> dict[str, float]:
        """Metrics for summary.json: ``evaluate`` plus any that are too costly to log every time (image SSIM)."""
        return self.evaluate(predict)

    def finish(self, predict: Predict, out_dir: Path | None) -> dict[str, float]:
        """What a run does last: ``final_metrics``, and the reconstruction written into ``out_dir`` when given. Signals
        whose metrics and reconstruction need the same predictions override it to predict once."""
        metrics = self.final_metrics(predict)
        if out_dir is not None:
            self.save_reconstruction(predict, out_dir)
        return metrics

    def preview(self, predict: Predict) -> np.ndarray | None:
        """An HxWx3 uint8 picture of the reconstruction for the viewer, or None when there is nothing to show."""
        return None

    def target_preview(self) -> np.ndarray | None:
        """An HxWx3 uint8 picture of the target for the viewer (beside ``preview``), or None."""
        return None


class GridSignal(Signal):
    """Samples on a regular grid (image pixels, audio samples, video voxels): coordinates are computed from the sample
    index, and targets are stored compactly (``storage``: uint8 divided by 255, or floats as they are).

    ``shape`` is the grid in array order (row k of the signal is element k of an array of ``shape`` in C order);
    coordinate column i runs along array axis ``coord_axes[i]``, from -1 at the first sample to 1 at the last
    (an axis of length 1 sits at -1), the values of ``torch.linspace(-1, 1, size)``.
    """

    def __init__(self, shape: tuple[int, ...], coord_axes: tuple[int, ...], storage: torch.Tensor) -> None:
        if storage.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"targets are stored as uint8 or float32, got {storage.dtype}")
        self.shape, self.coord_axes = tuple(shape), tuple(coord_axes)
        self.storage = storage.reshape(math.prod(self.shape), -1)
        self._axes = self._axis_values(self.storage.device)

    def _axis_values(self, device: torch.device | str) -> list[torch.Tensor]:
        return [torch.linspace(-1.0, 1.0, size, device=device) for size in self.shape]

    @property
    def num_samples(self) -> int:
        return self.storage.shape[0]

    @property
    def in_features(self) -> int:
        return len(self.coord_axes)

    @property
    def out_features(self) -> int:
        return self.storage.shape[1]

    @property
    def device(self) -> torch.device:
        return self.storage.device

    def make_coords(self, indices: torch.Tensor) -> torch.Tensor:
        position = torch.unravel_index(indices, self.shape)
        return torch.stack([self._axes[axis][position[axis]] for axis in self.coord_axes], dim=-1)

    def make_targets(self, indices: torch.Tensor) -> torch.Tensor:
        values = self.storage[indices]
        return values.float() / 255.0 if values.dtype == torch.uint8 else values

    def to(self, device: torch.device | str) -> "GridSignal":
        super().to(device)
        self.storage = self.storage.to(device)
        self._axes = self._axis_values(device)
        return self


@dataclass
class SignalOptions:
    """How a file becomes a signal; ``nf-fit`` exposes these as ``--signal.*`` flags."""

    resize: tuple[int, ...] | None = None
    """Resample to this size before fitting: (H, W) for images and video frames; None keeps the file's size (or
    applies --signal.max-side)."""
    max_side: int | None = None
    """Images and video, without --signal.resize: shrink (anti-aliased, aspect ratio kept) so the longer side has at
    most this many pixels; 0 keeps the file's size. None: nf-fit uses the signal type's default
    (``fitters.signals.defaults``), a loader called directly keeps the size."""
    frames: tuple[int, int] | None = None
    """Video only: the half-open frame range [start, stop) to fit; None fits every frame (up to --signal.max-samples)."""
    max_samples: int | None = None
    """Video only: fit at most this many samples (frames x height x width after resizing), keeping the first frames
    that fit; 0 = no limit. None: nf-fit uses the signal type's default (``fitters.signals.defaults``), a loader
    called directly keeps every frame."""
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
