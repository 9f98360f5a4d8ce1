"""The image signal: decoding (bit depths, channel layouts), the coordinate grid, metrics, saving."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fitters.signals import base, image
from fitters.signals import SignalError, SignalOptions
from fitters.signals import load_signal


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 24x20 RGB crop of a real photo (non-square to catch height/width mix-ups)."""
    return data.astronaut()[100:148:2, 200:240:2].copy()


def write(path: Path, pixels: np.ndarray) -> Path:
    iio.imwrite(path, pixels)
    return path


def test_rgb_png_targets_and_grid(tmp_path: Path, photo: np.ndarray) -> None:
    signal = image.load(write(tmp_path / "a.png", photo), SignalOptions())
    assert (signal.height, signal.width, signal.channels) == (24, 20, 3)
    assert signal.coords.shape == (24 * 20, 2) and signal.targets.shape == (24 * 20, 3)
    torch.testing.assert_close(signal.targets, torch.from_numpy(photo.reshape(-1, 3) / 255.0).float())
    # pixel (row r, col c) sits at x = -1 + 2c/(W-1), y = -1 + 2r/(H-1)
    row, col = 5, 7
    x, y = signal.coords[row * 20 + col].tolist()
    assert x == pytest.approx(-1 + 2 * col / 19) and y == pytest.approx(-1 + 2 * row / 23)
    assert signal.coords.min() == -1 and signal.coords.max() == 1


def test_16bit_gray_png(tmp_path: Path) -> None:
    pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    signal = image.load(write(tmp_path / "g16.png", pixels), SignalOptions())
    assert signal.channels == 1
    torch.testing.assert_close(signal.targets[:, 0], torch.from_numpy(pixels.reshape(-1) / 65535.0).float())


def test_rgba_becomes_rgb_and_gray_alpha_becomes_gray(tmp_path: Path, photo: np.ndarray) -> None:
    alpha = np.full(photo.shape[:2] + (1,), 128, np.uint8)
    rgba = image.load(write(tmp_path / "rgba.png", np.concatenate([photo, alpha], -1)), SignalOptions())
    torch.testing.assert_close(rgba.targets, torch.from_numpy(photo.reshape(-1, 3) / 255.0).float())
    gray = photo[..., 0]
    la = image.load(write(tmp_path / "la.png", np.stack([gray, alpha[..., 0]], -1)), SignalOptions())
    assert la.channels == 1
    torch.testing.assert_close(la.targets[:, 0], torch.from_numpy(gray.reshape(-1) / 255.0).float())


def test_jpeg_and_resize(tmp_path: Path, photo: np.ndarray) -> None:
    path = tmp_path / "a.jpg"
    iio.imwrite(path, photo, quality=95)
    signal = image.load(path, SignalOptions())
    assert (signal.height, signal.width, signal.channels) == (24, 20, 3)
    assert (signal.targets - torch.from_numpy(photo.reshape(-1, 3) / 255.0).float()).abs().mean() < 0.05
    small = image.load(path, SignalOptions(resize=(12, 10)))
    assert (small.height, small.width) == (12, 10) and 0 <= small.targets.min() and small.targets.max() <= 1


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"", ".png", "cannot read image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ".png", "cannot read image"),
        (b"not a jpeg at all", ".jpg", "cannot read image"),
    ],
)
def test_corrupt_files_raise_signal_error(tmp_path: Path, content: bytes, suffix: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(SignalError, match=message):
        load_signal(path)


def test_truncated_png_raises(tmp_path: Path, photo: np.ndarray) -> None:
    good = write(tmp_path / "good.png", photo).read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(SignalError, match="truncated.png"):
        load_signal(bad)


def test_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(SignalError, match="no such file"):
        load_signal(tmp_path / "missing.png")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(SignalError, match="unsupported file type '.txt'"):
        load_signal(other)
    with pytest.raises(SignalError, match="not a file"):
        load_signal(tmp_path)


def test_metrics_match_scikit_image(tmp_path: Path) -> None:
    # 256x256: torchmetrics and scikit-image differ slightly in how the 11x11 Gaussian window meets the borders
    # (about 0.01 SSIM here, 0.06 on a 24x20 crop), so the cross-check allows 0.02
    photo = data.astronaut()[::2, ::2].copy()
    signal = image.load(write(tmp_path / "a.png", photo), SignalOptions())
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.05, signal.targets.shape)).float()
    prediction = (signal.targets + noise).clamp(0, 1)
    metrics = signal.final_metrics(lambda coords: prediction)
    truth = photo / 255.0
    noisy = prediction.reshape(256, 256, 3).numpy().astype(np.float64)
    assert metrics["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, noisy, data_range=1.0), abs=1e-3)
    reference_ssim = structural_similarity(
        truth, noisy, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert metrics["ssim"] == pytest.approx(reference_ssim, abs=0.02)


def test_perfect_reconstruction_round_trip(tmp_path: Path, photo: np.ndarray) -> None:
    signal = image.load(write(tmp_path / "a.png", photo), SignalOptions())
    perfect = lambda coords: signal.targets  # noqa: E731
    assert signal.evaluate(perfect)["psnr"] == float("inf")
    out = signal.save_reconstruction(perfect, tmp_path / "run")
    assert out.name == "reconstruction.png"
    np.testing.assert_array_equal(iio.imread(out), photo)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["reconstruction.png"]  # no temp files left
    assert signal.preview(perfect).shape == (24, 20, 3) and signal.target_preview().dtype == np.uint8


def test_8_bit_files_are_kept_as_bytes_with_the_same_targets(tmp_path: Path, photo: np.ndarray) -> None:
    signal = load_signal(write(tmp_path / "p.png", photo), SignalOptions())
    assert signal.storage.dtype == torch.uint8 and signal.storage.numel() == photo.size
    assert torch.equal(signal.targets, torch.from_numpy(photo.reshape(-1, 3).astype(np.float32) / np.float32(255)))
    assert torch.equal(signal.coords, image.pixel_grid(24, 20))  # generated, the same values as a stored grid
    deep = load_signal(write(tmp_path / "d.png", (photo[..., 0].astype(np.uint16) * 257)), SignalOptions())
    assert deep.storage.dtype == torch.float32  # 16-bit values have no exact byte


def test_max_side_shrinks_keeping_the_aspect_ratio(tmp_path: Path, photo: np.ndarray) -> None:
    path = write(tmp_path / "p.png", photo)
    small = load_signal(path, SignalOptions(max_side=10))
    assert (small.height, small.width) == (10, 8)  # 24x20 scaled by 10/24
    assert (load_signal(path, SignalOptions(max_side=100)).height, load_signal(path, SignalOptions(max_side=0)).height) == (24, 24)
    assert load_signal(path, SignalOptions(max_side=10, resize=(6, 6))).height == 6  # an exact size wins


def test_psnr_in_blocks_equals_the_whole_image(tmp_path: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    signal = load_signal(write(tmp_path / "p.png", photo), SignalOptions())
    field = lambda coords: 0.5 + 0.4 * torch.sin(5 * coords[:, :1] + torch.arange(3) * coords[:, 1:])  # noqa: E731
    expected = peak_signal_noise_ratio(signal.targets.numpy(), field(signal.coords).clamp(0, 1).numpy(), data_range=1.0)
    monkeypatch.setattr(base, "EVAL_BLOCK", 7)  # 69 blocks, the last one short
    assert signal.evaluate(field)["psnr"] == pytest.approx(expected, rel=1e-5)
    assert signal.final_metrics(field)["psnr"] == pytest.approx(expected, rel=1e-5)
    subset = torch.tensor([3, 50, 100])
    assert signal.evaluate(field, subset)["psnr"] == pytest.approx(peak_signal_noise_ratio(
        signal.targets[subset].numpy(), field(signal.coords[subset]).clamp(0, 1).numpy(), data_range=1.0), rel=1e-5)


def test_finish_scores_the_image_it_writes_in_one_pass(tmp_path: Path, photo: np.ndarray) -> None:
    signal = load_signal(write(tmp_path / "p.png", photo), SignalOptions())
    rows: list[int] = []
    field = lambda coords: rows.append(len(coords)) or 0.5 + 0.4 * torch.sin(5 * coords[:, :1])  # noqa: E731
    final = signal.finish(field, tmp_path)
    assert sum(rows) == signal.num_samples and set(final) == {"psnr", "ssim"}
    assert final["psnr"] == pytest.approx(signal.evaluate(field)["psnr"], rel=1e-5)
    assert iio.imread(tmp_path / "reconstruction.png").shape == photo.shape
