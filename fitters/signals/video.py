"""Video signal: RGB frames over (t, y, x) coordinates in [-1, 1]^3 (paper 1 supp. Sec. 4.2; paper 2 supp. Sec. 3.6)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import imageio.v2 as imageio
import numpy as np
import torch
from skimage.transform import resize as resize_image

from fitters import metrics
from fitters.memory import UINT8_BYTES, check_signal_fits
from fitters.signals.base import EVAL_BLOCK, GridSignal
from fitters.signals.media import shrunk_size
from nf_precond.atomic import atomic_path
from fitters.signals import Predict, SignalError, SignalOptions

RECONSTRUCTION_NAME = "reconstruction.mp4"
ENCODER_ARGS = ["-crf", "12"]
"""x264 quality for the written reconstruction: visually lossless, so the file shows the field, not the codec."""


class VideoSignal(GridSignal):
    """Coordinates (t, y, x) in [-1, 1]^3 and RGB targets in [0, 1], frame-major order; targets stored as 8 bits."""

    kind: ClassVar[str] = "video"
    metric: ClassVar[str] = "psnr"

    def __init__(self, frames: np.ndarray, fps: float, name: str = "video") -> None:
        """``frames`` is [T, H, W, 3] RGB, uint8 or floats in [0, 1] (rounded to 8 bits, what the file held: the
        error against the unrounded floats is far below any PSNR a field reaches); ``fps`` is the rate the
        reconstruction is written at."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
            raise SignalError(f"{name}: expected RGB frames [T, H, W, 3], got shape {frames.shape}")
        self.name = name
        self.fps = float(fps)
        self.frame_shape: tuple[int, int, int] = tuple(frames.shape[:3])  # type: ignore[assignment]
        codes = frames if frames.dtype == np.uint8 else np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
        super().__init__(self.frame_shape, (0, 1, 2), torch.from_numpy(np.ascontiguousarray(codes)))

    @property
    def num_frames(self) -> int:
        return self.frame_shape[0]

    @property
    def frame_pixels(self) -> int:
        return self.frame_shape[1] * self.frame_shape[2]

    def frame_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first frame, sample rows) of consecutive whole frames, about ``EVAL_BLOCK`` samples at a time."""
        per_block = max(1, EVAL_BLOCK // self.frame_pixels)
        for first in range(0, self.num_frames, per_block):
            stop = min(first + per_block, self.num_frames)
            yield first, torch.arange(first * self.frame_pixels, stop * self.frame_pixels, device=self.device)

    def _frames(self, predict: Predict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The field's frames [n, H, W, 3] at ``rows`` (whole frames) clipped to [0, 1], and the target frames."""
        coords, targets = self.batch(rows)
        shape = (-1, *self.frame_shape[1:], 3)
        return predict(coords).clamp(0.0, 1.0).reshape(shape), targets.reshape(shape)

    def frame_psnr(self, predict: Predict) -> list[float]:
        """PSNR of every frame (data range 1), in frame order."""
        values: list[float] = []
        for _, rows in self.frame_blocks():
            pred, target = self._frames(predict, rows)
            values += [metrics.psnr(frame, target_frame) for frame, target_frame in zip(pred, target)]
        return values

    def evaluate(self, predict: Predict, indices: torch.Tensor | None = None) -> dict[str, float]:
        """``psnr``: the mean of the per-frame PSNRs; ``psnr_worst_frame``: the lowest of them. Over the samples
        ``indices``, each frame's PSNR comes from its samples among them (the worst frame is left out: a few hundred
        pixels do not say which frame is worst)."""
        if indices is None:
            per_frame = self.frame_psnr(predict)
            return {"psnr": float(np.mean(per_frame)), "psnr_worst_frame": float(min(per_frame))}
        coords, targets = self.batch(indices)
        squared = (predict(coords).clamp(0.0, 1.0) - targets).double().square().sum(dim=1)
        frame = torch.div(indices, self.frame_pixels, rounding_mode="floor")
        error = torch.zeros(self.num_frames, dtype=torch.float64, device=self.device).index_add_(0, frame, squared)
        count = torch.bincount(frame, minlength=self.num_frames).double() * 3
        seen = count > 0
        per_frame = 10.0 * torch.log10(count[seen] / error[seen])  # data range 1: PSNR = 10 log10(1 / MSE)
        return {"psnr": float(per_frame.mean())}

    def finish(self, predict: Predict, out_dir: Path | None) -> dict[str, float]:
        """The metrics of ``evaluate``, measured on the frames as they are written (one pass over the clip)."""
        if out_dir is None:
            return self.final_metrics(predict)
        per_frame: list[float] = []
        self._write(predict, out_dir, per_frame)
        return {"psnr": float(np.mean(per_frame)), "psnr_worst_frame": float(min(per_frame))}

    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        return self._write(predict, out_dir)

    def _write(self, predict: Predict, out_dir: Path, per_frame: list[float] | None = None) -> Path:
        """Write ``reconstruction.mp4`` (H.264, yuv420p) at the input's frame rate, a block of frames at a time, and
        append each frame's PSNR to ``per_frame`` when given.

        yuv420p needs even sizes, so an odd height or width gets one replicated edge row or column.
        """
        _, height, width = self.frame_shape
        final = Path(out_dir) / RECONSTRUCTION_NAME
        with atomic_path(final) as temporary:
            writer = imageio.get_writer(
                temporary,
                format="ffmpeg",
                fps=self.fps,
                codec="libx264",
                pixelformat="yuv420p",
                quality=None,
                macro_block_size=1,
                ffmpeg_params=ENCODER_ARGS,
                ffmpeg_log_level="error",
            )
            with writer:
                for _, rows in self.frame_blocks():
                    pred, target = self._frames(predict, rows)
                    if per_frame is not None:
                        per_frame += [metrics.psnr(frame, target_frame) for frame, target_frame in zip(pred, target)]
                    frames = _to_uint8(pred)
                    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
                    for frame in frames:
                        writer.append_data(frame)
        return final

    def _middle_frame_rows(self) -> torch.Tensor:
        first = self.num_frames // 2 * self.frame_pixels
        return torch.arange(first, first + self.frame_pixels, device=self.device)

    def preview(self, predict: Predict) -> np.ndarray:
        """The reconstructed middle frame."""
        return _to_uint8(self._frames(predict, self._middle_frame_rows())[0][0])

    def target_preview(self) -> np.ndarray:
        """The target's middle frame, what the viewer shows beside ``preview``."""
        return _to_uint8(self.targets_at(self._middle_frame_rows()).reshape(*self.frame_shape[1:], 3))


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames * 255.0).round().to(torch.uint8).cpu().numpy()


def _check_options(path: Path, options: SignalOptions) -> None:
    if options.max_seconds is not None:
        raise SignalError(f"{path}: --signal.max-seconds applies to audio, not video; drop it")
    if options.frames is not None:
        start, stop = options.frames
        if not (0 <= start < stop):
            raise SignalError(
                f"{path}: --signal.frames must be a range START STOP with 0 <= START < STOP, got {start} {stop}"
            )
    if options.resize is not None and (len(options.resize) != 2 or min(options.resize) < 1):
        raise SignalError(f"{path}: --signal.resize must be two positive sizes H W, got {options.resize}")


def _check_memory(path: Path, meta: dict, options: SignalOptions) -> None:
    """The memory guard before decoding: the frames to keep (the clip's length from its header, when it declares
    one) times their size."""
    width, height = meta["size"] if options.resize is None else options.resize[::-1]
    declared = meta.get("nframes", math.inf)
    if not math.isfinite(declared):  # ffmpeg often declares no frame count, but the duration
        declared = math.ceil((meta.get("fps") or 0) * (meta.get("duration") or 0)) or math.inf
    start, stop = options.frames if options.frames is not None else (0, declared)
    count = min(stop, declared) - start
    if math.isfinite(count) and count > 0:
        # Frames stay 8-bit throughout; the list of frames and its stacked copy coexist once.
        check_signal_fits(count * height * width, 2 * 3 * UINT8_BYTES, f"{path} ({count} frames of {height}x{width})",
                          "fit fewer frames (--signal.frames START STOP) or smaller ones (--signal.resize H W)")  # fmt: skip


def _decoder_reason(error: Exception) -> str:
    """The last line ffmpeg wrote (e.g. "Invalid data found when processing input"), not its whole log."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def load(path: Path, options: SignalOptions) -> VideoSignal:
    """Decode an MP4/AVI/MOV clip with ffmpeg; ``options.frames`` picks [start, stop), ``options.resize`` (H, W) or
    ``options.max_side`` the frame size, ``options.max_samples`` how many frames fit the sample budget."""
    path = Path(path)
    _check_options(path, options)
    if not path.is_file():
        raise SignalError(f"{path}: no such file; check the path")
    start, stop = options.frames if options.frames is not None else (0, math.inf)
    frames: list[np.ndarray] = []
    count = 0
    try:
        with imageio.get_reader(path, format="ffmpeg") as reader:
            meta = reader.get_meta_data()
            fps = float(meta.get("fps") or 0.0)
            width, height = meta["size"]
            size = tuple(options.resize) if options.resize is not None else shrunk_size((height, width), options.max_side)
            kept = frame_budget(options.max_samples, size or (height, width))
            last = min(stop, start + kept)
            _check_memory(path, meta, dataclasses.replace(
                options, resize=size, frames=(start, last) if math.isfinite(last) else None))  # fmt: skip
            for frame in reader:
                if count >= last:
                    break
                if count >= start:
                    frames.append(_to_rgb(frame, size))
                count += 1
    except SignalError:
        raise
    except (OSError, RuntimeError, ValueError, IndexError) as error:
        raise SignalError(
            f"{path}: cannot decode this video ({_decoder_reason(error)}); give an uncorrupted MP4/AVI/MOV file"
        ) from error
    if count == 0:
        raise SignalError(f"{path}: the video has no frames; give a clip with at least one frame")
    if options.frames is not None and count < last:
        raise SignalError(
            f"{path}: --signal.frames {start} {stop} lies outside the clip, which has {count} frames; "
            f"pick a range within [0, {count})"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise SignalError(f"{path}: the video declares no frame rate; re-encode it with one (e.g. ffmpeg -r 25)")
    return VideoSignal(np.stack(frames), fps, name=path.name)


def frame_budget(max_samples: int | None, size: tuple[int, ...]) -> float:
    """Frames of ``size`` (H, W) within --signal.max-samples (at least one); inf without a budget."""
    if max_samples is not None and max_samples < 0:
        raise SignalError(f"--signal.max-samples must be >= 0 (0 = every frame), got {max_samples}")
    if not max_samples:
        return math.inf
    return max(1, max_samples // (size[0] * size[1]))


def _to_rgb(frame: np.ndarray, size: tuple[int, ...] | None) -> np.ndarray:
    """One decoded uint8 frame as uint8 RGB, anti-aliased down to ``size`` (H, W) if given (rounded back to 8 bits)."""
    rgb = frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=-1)
    if size is None:
        return np.ascontiguousarray(rgb)
    return np.rint(resize_image(rgb, tuple(size), anti_aliasing=True) * 255.0).astype(np.uint8)
