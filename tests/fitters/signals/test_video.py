"""Video signal: decoding a real clip, frame ranges and resizing, per-frame PSNR, the written MP4, and bad files."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from fitters.signals import SignalError, SignalOptions, video
from fitters.signals.media import grid_coordinates
from fitters.signals.video import VideoSignal, load

BIKES = Path(__file__).parents[2] / "data" / "bikes.mp4"


def decode(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of ``path`` as uint8 [T, H, W, 3] and its frame rate, read independently of the signal."""
    with imageio.get_reader(path, format="ffmpeg") as reader:
        return np.stack([frame for frame in reader]), reader.get_meta_data()["fps"]


@pytest.fixture(scope="module")
def bikes() -> VideoSignal:
    return load(BIKES, SignalOptions())


def test_load_real_clip(bikes: VideoSignal) -> None:
    frames, fps = decode(BIKES)
    t, h, w = frames.shape[:3]
    assert (bikes.kind, bikes.metric, bikes.fps, bikes.frame_shape) == ("video", "psnr", fps, (t, h, w))
    assert bikes.coords.shape == (t * h * w, 3) and bikes.targets.shape == (t * h * w, 3)
    torch.testing.assert_close(bikes.targets, torch.from_numpy(frames.reshape(-1, 3) / 255.0).float())
    # (t, y, x) columns, each an evenly spaced grid from -1 to 1 along its own axis.
    grid = bikes.coords.reshape(t, h, w, 3)
    for column, size in enumerate((t, h, w)):
        line = grid.movedim(column, 0)[:, 0, 0, column]
        torch.testing.assert_close(line, torch.linspace(-1, 1, size))
    assert grid[2, 5, 7, 0] == grid[2, 0, 0, 0] and grid[2, 5, 7, 1] == grid[0, 5, 0, 1]


def test_frames_range_and_resize() -> None:
    frames, _ = decode(BIKES)
    signal = load(BIKES, SignalOptions(frames=(2, 5), resize=(20, 48)))
    assert signal.frame_shape == (3, 20, 48)
    # Resizing by exactly 2 with anti-aliasing is close to 2x2 averaging of the chosen frames.
    pooled = frames[2:5].astype(np.float32).reshape(3, 20, 2, 48, 2, 3).mean(axis=(2, 4)) / 255.0
    target = signal.targets.reshape(3, 20, 48, 3).numpy()
    assert np.abs(target - pooled).mean() < 0.02


def test_psnr_is_the_mean_of_per_frame_psnr(bikes: VideoSignal) -> None:
    generator = torch.Generator().manual_seed(1)
    noise_level = torch.linspace(0.01, 0.1, bikes.num_frames).repeat_interleave(bikes.num_samples // bikes.num_frames)
    noisy = bikes.targets + noise_level[:, None] * torch.randn(bikes.targets.shape, generator=generator)
    error = (noisy.clamp(0, 1) - bikes.targets).reshape(bikes.num_frames, -1)
    expected = 10 * torch.log10(1.0 / error.pow(2).mean(dim=1))
    per_frame = bikes.frame_psnr(lambda coords: noisy)
    np.testing.assert_allclose(per_frame, expected.numpy(), rtol=1e-5)
    metrics = bikes.evaluate(lambda coords: noisy)
    assert metrics["psnr"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics["psnr_worst_frame"] == pytest.approx(expected.min().item(), rel=1e-5)
    assert bikes.evaluate(lambda coords: bikes.targets)["psnr"] == float("inf")


@pytest.mark.parametrize("size", [None, (21, 33)])
def test_perfect_reconstruction_round_trips(size: tuple[int, int] | None, tmp_path: Path) -> None:
    signal = load(BIKES, SignalOptions(frames=(1, 6), resize=size))
    t, h, w = signal.frame_shape
    written = signal.save_reconstruction(lambda coords: signal.targets, tmp_path)
    assert written == tmp_path / "reconstruction.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.mp4"]  # no temporary left behind
    frames, fps = decode(written)
    # yuv420p needs even sizes: an odd side gains one replicated edge line.
    assert frames.shape == (t, h + h % 2, w + w % 2, 3) and fps == signal.fps
    decoded = torch.from_numpy(frames[:, :h, :w].astype(np.float32) / 255.0)
    original = signal.targets.reshape(t, h, w, 3)
    # The codec is lossy (4:2:0 chroma), so the file is near, not equal to, the field; frames in the wrong
    # order or orientation would be far off.
    psnr = 10 * torch.log10(1.0 / (decoded - original).pow(2).mean())
    shuffled = 10 * torch.log10(1.0 / (decoded.roll(1, dims=0) - original).pow(2).mean())
    assert psnr > 30.0 and psnr > shuffled + 10.0


def test_preview_is_the_middle_frame(bikes: VideoSignal) -> None:
    t, h, w = bikes.frame_shape
    picture = bikes.preview(lambda coords: bikes.targets[(t // 2) * h * w : (t // 2 + 1) * h * w])
    expected = (bikes.targets.reshape(t, h, w, 3)[t // 2] * 255).round().to(torch.uint8).numpy()
    assert picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, expected)
    np.testing.assert_array_equal(bikes.target_preview(), expected)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, options, message",
    [
        (lambda d: write_bytes(d / "text.mp4", b"not a video\n"), SignalOptions(), "cannot decode"),
        (lambda d: write_bytes(d / "empty.mp4", b""), SignalOptions(), "cannot decode"),
        (lambda d: write_bytes(d / "cut.mp4", BIKES.read_bytes()[:3000]), SignalOptions(), "cannot decode"),
        (lambda d: d / "missing.mp4", SignalOptions(), "no such file"),
        (lambda d: BIKES, SignalOptions(frames=(0, 9)), r"outside the clip, which has 8 frames"),
        (lambda d: BIKES, SignalOptions(frames=(8, 10)), r"outside the clip"),
        (lambda d: BIKES, SignalOptions(frames=(5, 5)), "START < STOP"),
        (lambda d: BIKES, SignalOptions(resize=(0, 10)), "resize"),
        (lambda d: BIKES, SignalOptions(max_seconds=1.0), "max-seconds"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path: Path, make, options: SignalOptions, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(SignalError, match=message) as caught:
        load(path, options)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "preset", sorted((Path(__file__).parents[3] / "configs" / "video").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_presets_parse_and_load(preset: Path, tmp_path: Path) -> None:
    from fitters.cli.fit import parse_config
    from fitters.config import resolve

    argv = [str(BIKES), "--config", str(preset), "--out", str(tmp_path), "--signal.frames", "0", "2"]
    config = resolve(parse_config(argv))
    signal = load(config.path, config.signal)
    assert signal.frame_shape[1:] == tuple(config.signal.resize or signal.frame_shape[1:])


def smooth_field(coords: torch.Tensor) -> torch.Tensor:
    """A field that depends on where it is asked (as a real one does), so block order mistakes show."""
    return (0.5 + 0.4 * torch.sin(3 * coords.sum(dim=-1, keepdim=True) + torch.arange(3) * coords[:, :1])).float()


def test_targets_are_bytes_and_coordinates_are_generated(bikes: VideoSignal) -> None:
    frames, _ = decode(BIKES)
    assert bikes.storage.dtype == torch.uint8 and bikes.storage.numel() == frames.size  # one byte per value
    indices = torch.tensor([0, 5, 999, bikes.num_samples - 1])
    coords, targets = bikes.batch(indices)
    assert torch.equal(coords, grid_coordinates(bikes.frame_shape)[indices])  # the same grid as a stored one
    assert torch.equal(targets, torch.from_numpy(frames.reshape(-1, 3)[indices.numpy()] / np.float32(255.0)))


def test_metrics_in_blocks_equal_the_whole_clip(bikes: VideoSignal, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = bikes.evaluate(smooth_field)
    pred = smooth_field(bikes.coords).clamp(0, 1).reshape(bikes.num_frames, -1)
    expected = 10 * torch.log10(1.0 / (pred - bikes.targets.reshape(bikes.num_frames, -1)).pow(2).mean(dim=1))
    assert whole["psnr"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert whole["psnr_worst_frame"] == pytest.approx(float(expected.min()), rel=1e-5)
    monkeypatch.setattr(video, "EVAL_BLOCK", bikes.frame_pixels)  # one frame per block
    assert bikes.evaluate(smooth_field) == pytest.approx(whole)
    everything = torch.arange(bikes.num_samples)
    assert bikes.evaluate(smooth_field, everything)["psnr"] == pytest.approx(whole["psnr"], rel=1e-6)


def test_written_clip_in_blocks_has_every_frame(bikes: VideoSignal, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(video, "EVAL_BLOCK", 3 * bikes.frame_pixels)  # blocks of 3, 3 and 2 frames
    frames, _ = decode(bikes.save_reconstruction(smooth_field, tmp_path))
    expected = (smooth_field(bikes.coords).clamp(0, 1) * 255).round().reshape(frames.shape).numpy()
    assert frames.shape[0] == bikes.num_frames and np.abs(frames - expected).mean() < 3  # H.264 at crf 12


def test_max_side_and_sample_budget() -> None:
    shrunk = load(BIKES, SignalOptions(max_side=48))
    assert shrunk.frame_shape == (8, 20, 48)  # 40x96 halved: the aspect ratio is kept
    assert load(BIKES, SignalOptions(max_side=0)).frame_shape == (8, 40, 96)  # 0 keeps the size
    budget = load(BIKES, SignalOptions(max_side=48, max_samples=3 * 20 * 48 + 5))
    assert budget.frame_shape == (3, 20, 48)  # the first frames that fit
    window = load(BIKES, SignalOptions(frames=(4, 8), max_samples=2 * 40 * 96))
    assert window.num_frames == 2
    torch.testing.assert_close(window.targets, load(BIKES, SignalOptions(frames=(4, 6))).targets)
    with pytest.raises(SignalError, match="max-side"):
        load(BIKES, SignalOptions(max_side=-1))


def test_finish_scores_the_frames_it_writes_in_one_pass(bikes: VideoSignal, tmp_path: Path) -> None:
    rows: list[int] = []
    counted = lambda coords: rows.append(len(coords)) or smooth_field(coords)  # noqa: E731
    final = bikes.finish(counted, tmp_path)
    assert sum(rows) == bikes.num_samples  # every sample predicted once, for the metrics and the file alike
    assert final == pytest.approx(bikes.evaluate(smooth_field)) and (tmp_path / "reconstruction.mp4").is_file()
