"""Metrics against their library reference: banded SSIM equals torchmetrics' whole-image SSIM."""

from __future__ import annotations

import pytest
import torch
from skimage import data
from torchmetrics.functional.image import structural_similarity_index_measure

from fitters import metrics


@pytest.mark.parametrize("band_pixels", [1, 3 * 37, 7 * 37, 2**20])
def test_banded_ssim_equals_whole_image(band_pixels: int) -> None:
    target = torch.from_numpy(data.astronaut()[100:129, 200:237]).float() / 255.0  # 29 x 37 x 3, a real photo
    generator = torch.Generator().manual_seed(0)
    pred = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    whole = structural_similarity_index_measure(
        pred.permute(2, 0, 1).unsqueeze(0), target.permute(2, 0, 1).unsqueeze(0), data_range=1.0
    )
    assert metrics.ssim(pred, target, band_pixels=band_pixels) == pytest.approx(float(whole), abs=1e-6)
