"""Audio signal: loading real recordings, metrics against their formulas, the written WAV, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fitters.signals.audio import AudioSignal, load
from fitters.signals import SignalError, SignalOptions, base

DATA = Path(__file__).parents[2] / "data"
MONO = DATA / "front_center.wav"
STEREO = DATA / "front_stereo.wav"


def perfect(signal: AudioSignal):
    return lambda coords: signal.targets.to(coords.device)


@pytest.mark.parametrize("path, channels", [(MONO, 1), (STEREO, 2)])
def test_load_real_recording(path: Path, channels: int) -> None:
    raw, rate = soundfile.read(path, dtype="float32", always_2d=True)
    signal = load(path, SignalOptions())
    assert (signal.kind, signal.metric, signal.sample_rate) == ("audio", "psnr", rate)
    assert signal.coords.shape == (len(raw), 1) and signal.targets.shape == (len(raw), channels)
    assert signal.coords[0].item() == -1.0 and signal.coords[-1].item() == 1.0
    assert torch.all(signal.coords[1:] > signal.coords[:-1])
    assert signal.targets.abs().max().item() == pytest.approx(1.0)
    torch.testing.assert_close(signal.targets * signal.scale, torch.from_numpy(raw))


def test_max_seconds_keeps_the_start() -> None:
    full = load(MONO, SignalOptions())
    cropped = load(MONO, SignalOptions(max_seconds=0.1))
    assert cropped.num_samples == round(0.1 * full.sample_rate)
    # Same file units; the crop is rescaled to its own peak.
    torch.testing.assert_close(cropped.targets * cropped.scale, full.targets[: cropped.num_samples] * full.scale)


def test_metrics_match_their_formulas() -> None:
    signal = load(STEREO, SignalOptions())
    generator = torch.Generator().manual_seed(1)
    noisy = signal.targets + 0.05 * torch.randn(signal.targets.shape, generator=generator)
    metrics = signal.evaluate(lambda coords: noisy)
    error = noisy.clamp(-1, 1) - signal.targets
    assert metrics["psnr"] == pytest.approx(10 * np.log10(4.0 / error.pow(2).mean().item()), rel=1e-5)
    assert metrics["snr"] == pytest.approx(
        10 * np.log10(signal.targets.pow(2).sum().item() / error.pow(2).sum().item()), rel=1e-4
    )
    assert signal.evaluate(perfect(signal))["psnr"] == float("inf")


@pytest.mark.parametrize("path", [MONO, STEREO])
def test_perfect_reconstruction_round_trips(path: Path, tmp_path: Path) -> None:
    raw, rate = soundfile.read(path, dtype="float32", always_2d=True)
    signal = load(path, SignalOptions())
    written = signal.save_reconstruction(perfect(signal), tmp_path)
    assert written == tmp_path / "reconstruction.wav"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.wav"]  # no temporary left behind
    info = soundfile.info(written)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (rate, raw.shape[1], len(raw), "PCM_16")
    back, _ = soundfile.read(written, dtype="float32", always_2d=True)
    np.testing.assert_allclose(back, raw, atol=1.5 / 32768)  # one 16-bit step


def test_flac_at_another_rate_writes_wav_at_that_rate(tmp_path: Path) -> None:
    raw, _ = soundfile.read(STEREO, dtype="float32", always_2d=True)
    flac = tmp_path / "clip.flac"
    soundfile.write(flac, raw[::3], 16_000, subtype="PCM_16")
    signal = load(flac, SignalOptions())
    assert (signal.sample_rate, signal.out_features, signal.num_samples) == (16_000, 2, len(raw[::3]))
    written = signal.save_reconstruction(perfect(signal), tmp_path / "run")
    assert soundfile.info(written).samplerate == 16_000


def test_preview_is_a_picture() -> None:
    signal = load(MONO, SignalOptions())
    picture = signal.preview(lambda coords: 0.5 * torch.sin(40 * coords))  # any field of time
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[-1] == 3
    assert picture.min() < picture.max()


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: write_bytes(d / "empty.wav", b""), "empty"),
        (lambda d: write_bytes(d / "header.wav", MONO.read_bytes()[:30]), "cannot decode"),
        (lambda d: write_bytes(d / "cut.wav", MONO.read_bytes()[:5000]), "truncated"),
        (lambda d: write_bytes(d / "text.wav", b"this is not audio\n"), "cannot decode"),
        (lambda d: d / "missing.wav", "no such file"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(SignalError, match=message) as caught:
        load(path, SignalOptions())
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("frames, message", [(100, "silent"), (0, "no audio samples")])
def test_silent_or_sample_free_recording_is_rejected(tmp_path: Path, frames: int, message: str) -> None:
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros((frames, 1)), 8000)
    with pytest.raises(SignalError, match=message):
        load(silent, SignalOptions())


@pytest.mark.parametrize(
    "options, message",
    [
        (SignalOptions(max_seconds=0.0), "max-seconds"),
        (SignalOptions(max_seconds=float("nan")), "max-seconds"),
        (SignalOptions(frames=(0, 2)), "frames"),
        (SignalOptions(resize=(8, 8)), "resize"),
    ],
)
def test_options_that_do_not_apply_are_rejected(options: SignalOptions, message: str) -> None:
    with pytest.raises(SignalError, match=message):
        load(MONO, options)


@pytest.mark.parametrize(
    "preset", sorted((Path(__file__).parents[3] / "configs" / "audio").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_presets_parse_and_load(preset: Path, tmp_path: Path) -> None:
    from fitters.cli.fit import parse_config
    from fitters.config import resolve

    config = resolve(parse_config([str(MONO), "--config", str(preset), "--out", str(tmp_path)]))
    assert load(config.path, config.signal).out_features == 1


def test_metrics_in_blocks_equal_the_whole_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    signal = load(STEREO, SignalOptions())
    field = lambda coords: torch.sin(50 * coords + torch.tensor([0.0, 1.0]))  # noqa: E731
    whole = signal.evaluate(field)
    error = field(signal.coords).clamp(-1, 1) - signal.targets
    assert whole["snr"] == pytest.approx(10 * np.log10(signal.targets.pow(2).sum().item() / error.pow(2).sum().item()), rel=1e-4)
    monkeypatch.setattr(base, "EVAL_BLOCK", 1000)
    assert signal.evaluate(field) == pytest.approx(whole, rel=1e-5)
    assert signal.evaluate(field, torch.arange(signal.num_samples)) == pytest.approx(whole, rel=1e-5)
