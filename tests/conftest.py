"""Shared fixtures: small real signals (scikit-image ships photos) and deterministic seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine extra threads stall (~100x slower)."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def camera_crop() -> tuple[torch.Tensor, torch.Tensor]:
    """A 32x32 crop of scikit-image's cameraman photo as (coords in [-1, 1] [1024, 2], gray values [1024, 1])."""
    from skimage import data

    image = data.camera()[200:264:2, 200:264:2].astype(np.float32) / 255.0
    h, w = image.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    coords = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    return coords, torch.from_numpy(image).reshape(-1, 1)
