"""Fixtures shared by the command-line tests."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import pytest
from skimage import data


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16x16 RGB crop of the astronaut photo."""
    path = tmp_path_factory.mktemp("img") / "crop.png"
    iio.imwrite(path, data.astronaut()[100:148:3, 200:248:3])
    return path
