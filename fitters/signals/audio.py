"""Audio signal: a WAV/FLAC recording as samples over time coordinates in [-1, 1] (paper 1, supp. Sec. 4.1)."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile
import torch
from torchmetrics.image import PeakSignalNoiseRatio

from fitters.signals.base import GridSignal
from fitters.signals.media import render_figure
from nf_precond.atomic import atomic_path
from fitters.signals import Predict, SignalError, SignalOptions

RECONSTRUCTION_NAME = "reconstruction.wav"
PREVIEW_POINTS = 4000
"""Most waveform points drawn in the preview; a plot cannot show more and drawing them all is slow."""


class AudioSignal(GridSignal):
    """One recording: time coordinates [N, 1] in [-1, 1], targets [N, channels] amplitudes scaled into [-1, 1].

    ``scale`` is the file's peak amplitude: ``targets * scale`` is the recording, so the written reconstruction has
    the loudness of the original.
    """

    kind: ClassVar[str] = "audio"
    metric: ClassVar[str] = "psnr"

    def __init__(self, waveform: np.ndarray, sample_rate: int, subtype: str = "PCM_16", name: str = "audio") -> None:
        """``waveform`` is [frames, channels] in the file's units (floats, full scale 1); ``subtype`` is how the
        reconstruction is encoded (the input's own when WAV can hold it)."""
        if waveform.ndim != 2 or waveform.shape[0] == 0 or waveform.shape[1] == 0:
            raise SignalError(f"{name}: no audio samples (shape {waveform.shape}); give a recording with sound in it")
        peak = float(np.abs(waveform).max())
        if not math.isfinite(peak):
            raise SignalError(f"{name}: the recording contains NaN or infinite samples; re-export it")
        if peak == 0.0:
            raise SignalError(f"{name}: the recording is silent (every sample is 0); nothing to fit")
        self.name = name
        self.sample_rate = int(sample_rate)
        self.subtype = subtype if soundfile.check_format("WAV", subtype) else "FLOAT"
        self.scale = peak
        super().__init__((waveform.shape[0],), (0,), torch.from_numpy((waveform / peak).astype(np.float32)))

    def _reconstruct(self, predict: Predict) -> torch.Tensor:
        """The field's waveform clipped to the representable range, as it will be written, built block by block."""
        waveform = torch.empty(self.num_samples, self.out_features, device=self.device)
        for indices in self.blocks(self.num_samples):
            waveform[indices] = predict(self.coords_at(indices)).clamp(-1.0, 1.0)
        return waveform

    def evaluate(self, predict: Predict, indices: torch.Tensor | None = None) -> dict[str, float]:
        """``psnr`` over a peak-to-peak range of 2 (targets live in [-1, 1]) and ``snr`` in dB, all channels (over the
        samples ``indices`` when given). SNR is torchmetrics' formula, 10 log10(Σ target² / Σ error²), summed block
        by block."""
        psnr = PeakSignalNoiseRatio(data_range=2.0).to(self.device)
        signal_power = noise_power = 0.0
        for block in [indices] if indices is not None else self.blocks(self.num_samples):
            coords, targets = self.batch(block)
            pred = predict(coords).clamp(-1.0, 1.0)
            psnr.update(pred, targets)
            signal_power += float(targets.double().square().sum())
            noise_power += float((targets.double() - pred.double()).square().sum())
        eps = torch.finfo(torch.float32).eps
        return {"psnr": float(psnr.compute()), "snr": 10.0 * math.log10((signal_power + eps) / (noise_power + eps))}

    def save_reconstruction(self, predict: Predict, out_dir: Path) -> Path:
        """Write ``reconstruction.wav`` with the input's sample rate, channels and loudness."""
        samples = (self._reconstruct(predict) * self.scale).clamp(-1.0, 1.0).cpu().numpy()
        final = Path(out_dir) / RECONSTRUCTION_NAME
        with atomic_path(final) as temporary:
            soundfile.write(temporary, samples, self.sample_rate, subtype=self.subtype, format="WAV")
        return final

    def preview(self, predict: Predict) -> np.ndarray:
        """The first channel's target and reconstructed waveforms over time, one plot."""
        stride = max(1, self.num_samples // PREVIEW_POINTS)
        rows = torch.arange(0, self.num_samples, stride, device=self.device)
        seconds = rows.cpu().numpy() / self.sample_rate
        coords, targets = self.batch(rows)
        target = targets[:, 0].cpu().numpy()
        pred = predict(coords).clamp(-1.0, 1.0)[:, 0].cpu().numpy()

        def draw(axes) -> None:
            axes.plot(seconds, target, linewidth=0.8, label="target")
            axes.plot(seconds, pred, linewidth=0.8, label="field", alpha=0.8)
            axes.set_xlabel("time [s]")
            axes.set_ylim(-1.05, 1.05)
            axes.legend(loc="upper right", fontsize="small")

        return render_figure(draw, size_px=(480, 200))


def _missing_wav_bytes(path: Path) -> int:
    """How many bytes of the WAV ``data`` chunk the header declares but the file lacks (0 if complete or not WAV).

    libsndfile silently reads a cut-off WAV up to where it ends, so a truncated download would be fitted as a
    shorter clip; the RIFF header is the one place that says how long the audio was meant to be.
    """
    with open(path, "rb") as stream:
        header = stream.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        file_size = path.stat().st_size
        while True:
            chunk = stream.read(8)
            if len(chunk) < 8:
                return 0
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mean "length unknown" (streamed writers, RF64): nothing to check against.
                if chunk_size in (0, 0xFFFFFFFF):
                    return 0
                return max(0, chunk_size - (file_size - stream.tell()))
            stream.seek(chunk_size + (chunk_size & 1), 1)


def load(path: Path, options: SignalOptions) -> AudioSignal:
    """Read a WAV/FLAC file (any sample rate, mono or stereo); ``options.max_seconds`` keeps only the start."""
    path = Path(path)
    for option in ("resize", "frames"):
        if getattr(options, option) is not None:
            raise SignalError(f"{path}: --signal.{option} applies to other signals, not audio; drop it")
    if not path.is_file():
        raise SignalError(f"{path}: no such file; check the path")
    if options.max_seconds is not None and not (math.isfinite(options.max_seconds) and options.max_seconds > 0):
        raise SignalError(f"{path}: --signal.max-seconds must be a positive number, got {options.max_seconds}")
    if path.stat().st_size == 0:
        raise SignalError(f"{path}: the file is empty (0 bytes); re-export or re-download it")
    try:
        missing = _missing_wav_bytes(path)
        if missing:
            raise SignalError(
                f"{path}: the WAV file is truncated ({missing} bytes of audio missing); re-export or re-download it"
            )
        with soundfile.SoundFile(path) as recording:
            frames = recording.frames
            if options.max_seconds is not None:
                frames = min(frames, max(1, round(options.max_seconds * recording.samplerate)))
            waveform = recording.read(frames, dtype="float32", always_2d=True)
            sample_rate, subtype = recording.samplerate, recording.subtype
        if len(waveform) < frames:
            raise SignalError(
                f"{path}: the file is truncated (read {len(waveform)} of {frames} samples); re-export or re-download it"
            )
    except soundfile.SoundFileError as error:
        raise SignalError(
            f"{path}: cannot decode this audio file ({error}); give an uncorrupted WAV or FLAC file"
        ) from error
    return AudioSignal(waveform, sample_rate, subtype=subtype, name=path.name)
