"""Images: PNG/JPEG (8- or 16-bit, gray, gray+alpha, RGB, RGBA) read with imageio, fitted as (x, y) -> color.

Coordinates are pixel centers on a [-1, 1] grid (x along columns, y along rows), targets are intensities in
[0, 1]. Alpha is dropped (the color channels are fitted as stored), so RGBA becomes RGB and gray+alpha gray.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import imageio.v3 as iio
import numpy as np
import torch
from skimage.transform import resize as resize_image
from torchmetrics.image import PeakSignalNoiseRatio

from fitters import metrics
from fitters.memory import CONVERTED_BYTES, check_signal_fits
from nf_precond.atomic import atomic_path
from fitters.signals import Predict, SignalError, SignalOptions
from fitters.signals.base import GridSignal
from fitters.signals.media import shrunk_size

SUFFIXES = (".png", ".jpg", ".jpeg")


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """[H*W, 2] (x, y) coordinates of the pixel centers in [-1, 1], row-major like ``image.reshape(-1, C)``."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def to_unit_float(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Integer or float pixels as float32 in [0, 1], H x W x C with C in {1, 3} (alpha dropped)."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise SignalError(f"{path}: unsupported image layout {pixels.shape}; expected gray, RGB or RGBA pixels")
    pixels = pixels[..., :1] if pixels.shape[-1] == 2 else pixels[..., :3]
    if np.issubdtype(pixels.dtype, np.integer):
        values = pixels.astype(np.float32) / np.iinfo(pixels.dtype).max
    elif np.issubdtype(pixels.dtype, np.floating):
        values = pixels.astype(np.float32)
    else:
        raise SignalError(f"{path}: unsupported pixel type {pixels.dtype}; save the image as 8- or 16-bit PNG/JPEG")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise SignalError(f"{path}: pixel values outside [0, 1] after scaling; save the image as 8- or 16-bit PNG")
    return values


class ImageSignal(GridSignal):
    """An H x W x C image; headline metric PSNR (data range 1), SSIM in the summary.

    ``pixels`` are uint8 (kept as they are: an 8-bit file costs one byte per value) or floats in [0, 1].
    """

    kind: ClassVar[str] = "image"
    metric: ClassVar[str] = "psnr"

    def __init__(self, pixels: np.ndarray, name: str = "image"):
        self.height, self.width, self.channels = pixels.shape
        self.name = name
        values = pixels if pixels.dtype == np.uint8 else pixels.astype(np.float32)
        super().__init__((self.height, self.width), (1, 0), torch.from_numpy(np.ascontiguousarray(values)))

    def _reconstruct(self, predict: Predict) -> torch.Tensor:
        """H x W x C prediction clamped to the displayable range [0, 1], built block by block."""
        image = torch.empty(self.num_samples, self.channels, device=self.device)
        for indices in self.blocks(self.num_samples):
            image[indices] = predict(self.coords_at(indices)).clamp(0, 1)
        return image.reshape(self.height, self.width, self.channels)

    def _target_image(self) -> torch.Tensor:
        return self.targets.reshape(self.height, self.width, self.channels)

    def evaluate(self, predict: Predict, indices: torch.Tensor | None = None) -> dict[str, float]:
        if indices is not None:
            coords, targets = self.batch(indices)
            return {"psnr": metrics.psnr(predict(coords).clamp(0, 1), targets)}
        psnr = PeakSignalNoiseRatio(data_range=1.0).to(self.device)
        for block in self.blocks(self.num_samples):
            coords, targets = self.batch(block)
            psnr.update(predict(coords).clamp(0, 1), targets)
        return {"psnr": float(psnr.compute())}

    def final_metrics(self, predict: Predict) -> dict[str, float]:
        return self._scores(self._reconstruct(predict))

    def _scores(self, image: torch.Tensor) -> dict[str, float]:
        target = self._target_image()
        return {"psnr": metrics.psnr(image, target), "ssim": metrics.ssim(image, target)}

    def finish(self, predict: Predict, out_dir: Path | None) -> dict[str, float]:
        """Scores and writes one reconstruction."""
        image = self._reconstruct(predict)
        if out_dir is not None:
            self._write(image, out_dir)
        return self._scores(image)

    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        return self._write(self._reconstruct(predict), out_dir)

    def _write(self, image: torch.Tensor, out_dir: Path) -> Path:
        pixels = to_uint8(image)
        final = Path(out_dir) / "reconstruction.png"
        with atomic_path(final) as temporary:
            iio.imwrite(temporary, pixels[..., 0] if self.channels == 1 else pixels)
        return final

    def preview(self, predict: Predict) -> np.ndarray:
        return as_rgb(to_uint8(self._reconstruct(predict)))

    def target_preview(self) -> np.ndarray:
        """The target as H x W x 3 uint8, what the viewer shows beside the reconstruction."""
        return as_rgb(to_uint8(self._target_image()))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def load(path: Path, options: SignalOptions) -> ImageSignal:
    """Read ``path`` as an image signal, optionally resized to ``options.resize = (H, W)`` (anti-aliased)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise SignalError(f"{path}: not a PNG/JPEG file; image signals read {', '.join(SUFFIXES)}")
    if options.resize is not None and (len(options.resize) != 2 or min(options.resize) < 2):
        raise SignalError(f"--signal.resize {options.resize}: give two sizes >= 2, height then width")
    try:
        check_decoded_size(path, iio.improps(path).shape, options.resize)  # the header only: refuse before decoding
        pixels = iio.imread(path)
    except SignalError:
        raise
    except Exception as error:  # imageio/Pillow raise many types for truncated or foreign data
        raise SignalError(
            f"cannot read image {path} ({error.__class__.__name__}: {error}); check that it is a valid PNG or JPEG"
        ) from error
    if pixels.ndim == 4:  # animated PNG: fit the first frame
        pixels = pixels[0]
    if pixels.ndim >= 2 and (pixels.shape[0] < 2 or pixels.shape[1] < 2):
        raise SignalError(f"{path}: image is {pixels.shape[0]}x{pixels.shape[1]} pixels; need at least 2x2")
    size = options.resize or shrunk_size(pixels.shape[:2], options.max_side, minimum=2)
    if size is None and pixels.dtype == np.uint8 and pixels.ndim in (2, 3):  # 8-bit: one byte per value
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if pixels.shape[-1] <= 4:
            return ImageSignal(pixels[..., :1] if pixels.shape[-1] == 2 else pixels[..., :3], name=path.stem)
    values = to_unit_float(pixels, path)
    if size is not None:
        height, width = size
        values = resize_image(values, (height, width, values.shape[-1]), anti_aliasing=True).astype(np.float32)
        values = np.clip(values, 0.0, 1.0)
    return ImageSignal(values, name=path.stem)


def check_decoded_size(path: Path, shape: tuple[int, ...], resize: tuple[int, ...] | None) -> None:
    """The memory guard on the file's header ``shape`` (H, W[, C], or frames first for an animated PNG): decoding
    needs the file's own size, fitting the resized one."""
    height, width = shape[1:3] if len(shape) == 4 else shape[:2]
    if resize is not None and resize[0] * resize[1] > height * width:
        check_signal_fits(resize[0] * resize[1], 3 * CONVERTED_BYTES, f"{path} at --signal.resize {resize[0]} {resize[1]}",
                          "give a smaller --signal.resize")  # fmt: skip
    else:
        # Upper bound: the file may be 8-bit and kept as it is (UINT8_BYTES), known only after decoding.
        check_signal_fits(height * width, 3 * CONVERTED_BYTES, f"{path} ({height}x{width} pixels)",
                          "downscale the file before fitting it (--signal.resize applies after decoding)")  # fmt: skip

