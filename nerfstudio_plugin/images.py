"""Image files of a dataset: 8-bit PNGs written atomically and LLFF-style downscaled copies (`images_N/`).

Shared by the dataparsers (which write missing `images_N/` folders into a user's dataset) and the scene generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nf_precond.atomic import atomic_path


def write_png(path: Path, image: np.ndarray | Image.Image) -> None:
    """Write a float [0, 1] (H, W, 3|4) array or a PIL image as an 8-bit PNG, atomically."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8))
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")


def downscaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) of an image shrunk by `factor`, rounded like LLFF's percentage resize, at least 1 pixel."""
    return max(1, round(height / factor)), max(1, round(width / factor))


def write_downscaled(source: Path, destination: Path, factor: float) -> None:
    """Write `source` shrunk by `factor` with a box filter (the mean of each block of pixels) to `destination`."""
    with Image.open(source) as image:
        height, width = downscaled_size(image.height, image.width, factor)
        write_png(destination, image.resize((width, height), Image.Resampling.BOX))
