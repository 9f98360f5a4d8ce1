"""Quality metrics (from torchmetrics, not hand-rolled) and the curve arithmetic ``nf-bench`` reports.

A *curve* is the list of metrics.jsonl records of one run: dicts with at least ``step``, ``time_s`` and the
headline metric, in increasing step order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR in dB of ``pred`` against ``target`` (any matching shapes); inf for a perfect reconstruction."""
    if torch.equal(pred, target):
        return math.inf
    return float(peak_signal_noise_ratio(pred, target, data_range=data_range))


SSIM_WINDOW_RADIUS = 5  # torchmetrics' default 11-pixel Gaussian window


def ssim(pred_hwc: torch.Tensor, target_hwc: torch.Tensor, data_range: float = 1.0, band_pixels: int = 2**20) -> float:
    """SSIM of two H x W x C images (Gaussian window, the torchmetrics defaults).

    torchmetrics needs ~1.5 kB per pixel (48 GB at 8192²), so the SSIM map is computed in bands of about
    ``band_pixels`` pixels, each read with a halo of the window's radius: the mean equals the whole-image value."""
    height, width, channels = pred_hwc.shape
    as_batch = lambda image: image.permute(2, 0, 1).unsqueeze(0).float()  # noqa: E731 - NCHW view
    rows_per_band = max(1, band_pixels // width)
    total = 0.0
    for top in range(0, height, rows_per_band):
        bottom = min(height, top + rows_per_band)
        first, last = max(0, top - SSIM_WINDOW_RADIUS), min(height, bottom + SSIM_WINDOW_RADIUS)
        _, similarity = structural_similarity_index_measure(
            as_batch(pred_hwc[first:last]), as_batch(target_hwc[first:last]), data_range=data_range,
            return_full_image=True,
        )  # fmt: skip
        total += float(similarity[..., top - first : bottom - first, :].sum(dtype=torch.float64))
    return total / (height * width * channels)


def first_crossing(curve: Sequence[dict[str, Any]], metric: str, target: float, axis: str) -> float | None:
    """The ``axis`` value ("time_s" or "step") at which ``metric`` first reaches ``target``, linearly interpolated
    between the two logged records around the crossing; None when the curve never reaches it."""
    previous: dict[str, Any] | None = None
    for record in curve:
        value = record.get(metric)
        if value is not None and value >= target:
            if previous is None or previous[metric] >= value:
                return float(record[axis])
            fraction = (target - previous[metric]) / (value - previous[metric])
            return float(previous[axis] + fraction * (record[axis] - previous[axis]))
        if value is not None and math.isfinite(value):
            previous = record
    return None


def value_at(curve: Sequence[dict[str, Any]], metric: str, axis: str, position: float) -> float | None:
    """The last logged ``metric`` at or before ``position`` on ``axis`` (what the run had reached by then)."""
    reached = [record[metric] for record in curve if record[axis] <= position + 1e-9 and metric in record]
    return float(reached[-1]) if reached else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference
