"""Video signal: RGB frames over (t, y, x) coordinates in [-1, 1]^3 (paper 1 supp. Sec. 4.2; paper 2 supp. Sec. 3.6)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import imageio.v2 as imageio
import numpy as np
import torch
from skimage.transform import resize as resize_image

from fitters import metrics
from fitters.signals.media import grid_coordinates
from nf_precond.atomic import atomic_path
from fitters.signals import Predict, Signal, SignalError, SignalOptions

RECONSTRUCTION_NAME = "reconstruction.mp4"
ENCODER_ARGS = ["-crf", "12"]
"""x264 quality for the written reconstruction: visually lossless, so the file shows the field, not the codec."""


class VideoSignal(Signal):
    """``coords`` [T*H*W, 3] as (t, y, x) in [-1, 1], ``targets`` [T*H*W, 3] RGB in [0, 1], frame-major order."""

    kind: ClassVar[str] = "video"
    metric: ClassVar[str] = "psnr"

    def __init__(self, frames: np.ndarray, fps: float, name: str = "video") -> None:
        """``frames`` is [T, H, W, 3] RGB in [0, 1]; ``fps`` is the rate the reconstruction is written at."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
            raise SignalError(f"{name}: expected RGB frames [T, H, W, 3], got shape {frames.shape}")
        self.name = name
        self.fps = float(fps)
        self.frame_shape: tuple[int, int, int] = tuple(frames.shape[:3])  # type: ignore[assignment]
        self.coords = grid_coordinates(self.frame_shape)
        self.targets = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32).reshape(-1, 3))

    @property
    def num_frames(self) -> int:
        return self.frame_shape[0]

    def _reconstruct(self, predict: Predict, coords: torch.Tensor | None = None) -> torch.Tensor:
        """The field's frames [T, H, W, 3] clipped to [0, 1], as they will be written."""
        coords = self.coords if coords is None else coords
        return predict(coords).clamp(0.0, 1.0).reshape(-1, *self.frame_shape[1:], 3)

    def frame_psnr(self, predict: Predict) -> list[float]:
        """PSNR of every frame (data range 1), in frame order."""
        pred = self._reconstruct(predict)
        target = self.targets.reshape(pred.shape)
        return [metrics.psnr(frame, target_frame) for frame, target_frame in zip(pred, target)]

    def evaluate(self, predict: Predict) -> dict[str, float]:
        """``psnr``: the mean of the per-frame PSNRs; ``psnr_worst_frame``: the lowest of them."""
        per_frame = self.frame_psnr(predict)
        return {"psnr": float(np.mean(per_frame)), "psnr_worst_frame": float(min(per_frame))}

    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        """Write ``reconstruction.mp4`` (H.264, yuv420p) at the input's frame rate.

        yuv420p needs even sizes, so an odd height or width gets one replicated edge row or column.
        """
        frames = _to_uint8(self._reconstruct(predict))
        _, height, width = self.frame_shape
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
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
                for frame in frames:
                    writer.append_data(frame)
        return final

    def _middle_frame_rows(self) -> slice:
        pixels = self.frame_shape[1] * self.frame_shape[2]
        middle = self.num_frames // 2
        return slice(middle * pixels, (middle + 1) * pixels)

    def preview(self, predict: Predict) -> np.ndarray:
        """The reconstructed middle frame."""
        frame = self._reconstruct(predict, self.coords[self._middle_frame_rows()])[0]
        return _to_uint8(frame)

    def target_preview(self) -> np.ndarray:
        """The target's middle frame, what the viewer shows beside ``preview``."""
        return _to_uint8(self.targets[self._middle_frame_rows()].reshape(self.frame_shape[1:] + (3,)))


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


def _decoder_reason(error: Exception) -> str:
    """The last line ffmpeg wrote (e.g. "Invalid data found when processing input"), not its whole log."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def load(path: Path, options: SignalOptions) -> VideoSignal:
    """Decode an MP4/AVI/MOV clip with ffmpeg; ``options.frames`` picks [start, stop), ``options.resize`` (H, W)."""
    path = Path(path)
    _check_options(path, options)
    if not path.is_file():
        raise SignalError(f"{path}: no such file; check the path")
    start, stop = options.frames if options.frames is not None else (0, math.inf)
    frames: list[np.ndarray] = []
    count = 0
    try:
        with imageio.get_reader(path, format="ffmpeg") as reader:
            fps = float(reader.get_meta_data().get("fps") or 0.0)
            for frame in reader:
                if count >= stop:
                    break
                if count >= start:
                    frames.append(_to_float_rgb(frame, options.resize))
                count += 1
    except (OSError, RuntimeError, ValueError, IndexError) as error:
        raise SignalError(
            f"{path}: cannot decode this video ({_decoder_reason(error)}); give an uncorrupted MP4/AVI/MOV file"
        ) from error
    if count == 0:
        raise SignalError(f"{path}: the video has no frames; give a clip with at least one frame")
    if options.frames is not None and count < stop:
        raise SignalError(
            f"{path}: --signal.frames {start} {stop} lies outside the clip, which has {count} frames; "
            f"pick a range within [0, {count})"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise SignalError(f"{path}: the video declares no frame rate; re-encode it with one (e.g. ffmpeg -r 25)")
    return VideoSignal(np.stack(frames), fps, name=path.name)


def _to_float_rgb(frame: np.ndarray, size: tuple[int, ...] | None) -> np.ndarray:
    """One decoded uint8 frame as float32 RGB in [0, 1], anti-aliased down to ``size`` (H, W) if given."""
    rgb = frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=-1)
    if size is None:
        return rgb.astype(np.float32) / 255.0
    return resize_image(rgb, tuple(size), anti_aliasing=True).astype(np.float32)
