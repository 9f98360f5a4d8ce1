"""nf-curvature: the eigen-analysis against autograd's dense Hessian, the ReLU-vs-sine prediction on a real photo
crop, the dense-Hessian size guard, and the CLI end to end on a tiny image."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch.func import functional_call

from fitters import curvature
from fitters.cli import EXIT_USAGE
from fitters.cli import curvature as curvature_cli
from fitters.curvature import CurvatureConfig, NetworkSpec, analyse, check_sizes, hessian_bytes, parameter_count
from nf_precond.nn import CoordinateMLP, FieldConfig


@pytest.fixture
def crop_png(tmp_path: Path, camera_crop: tuple[torch.Tensor, torch.Tensor]) -> Path:
    """The 32x32 cameraman crop written as an 8-bit PNG, so the CLI reads a real photo."""
    _, gray = camera_crop
    path = tmp_path / "crop.png"
    iio.imwrite(path, (gray.reshape(32, 32).numpy() * 255).round().astype(np.uint8))
    return path


def reference_eigenvalues(model: torch.nn.Module, coords: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """eigvalsh of ``torch.autograd.functional.hessian`` of the loss as a function of all parameters, flattened."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, [math.prod(shape) for shape in shapes])
        params = {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return torch.nn.functional.mse_loss(functional_call(model, params, (coords,)), targets)

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))


@pytest.mark.parametrize("activation", ["sine", "gauss", "wavelet", "relu", "relu-pe"])
def test_spectrum_matches_autograd_hessian(activation: str, camera_crop: tuple[torch.Tensor, torch.Tensor]) -> None:
    coords, targets = (t[::8].double() for t in camera_crop)
    init = curvature.resolve_init("paper", activation)
    model = CoordinateMLP(2, 1, FieldConfig(hidden=5, layers=2, activation=activation, init=init, pe_frequencies=2)).double()
    loss_fn = lambda: torch.nn.functional.mse_loss(model(coords), targets)  # noqa: E731
    window = 0.05
    measured = analyse(loss_fn, list(model.parameters()), epsilon=1e-6, window=window, hvp_atol=0.0, generator=None)
    expected = reference_eigenvalues(model, coords, targets)
    magnitudes = expected.abs()
    assert measured["count"] == expected.numel()
    torch.testing.assert_close(measured["min"], float(expected.min()), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(measured["max"], float(expected.max()), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(measured["largest_abs"], float(magnitudes.max()), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(measured["smallest_abs"], float(magnitudes.min()), rtol=1e-5, atol=1e-12)
    assert measured["zero_fraction"] == float((magnitudes <= 1e-6).double().mean())
    counts, _ = np.histogram(expected.numpy(), bins=np.linspace(-window, window, curvature.HISTOGRAM_BINS + 1))
    assert measured["histogram"] == counts.tolist()


def test_default_tolerance_is_the_numerical_rank_rule() -> None:
    eigenvalues = torch.tensor([-2.0, 1e-20, 3e-16, 1e-3, 4.0], dtype=torch.float64)
    statistics = curvature.spectrum_statistics(eigenvalues, epsilon=None, window=0.01)
    tolerance = 5 * torch.finfo(torch.float64).eps * 4.0
    assert statistics["epsilon"] == tolerance
    assert statistics["zero_fraction"] == 2 / 5  # 1e-20 and 3e-16 are below 5 · 2.2e-16 · 4
    assert statistics["condition_number"] == 4.0 / 1e-20
    assert statistics["negative_fraction"] == 1 / 5


@pytest.mark.slow
def test_relu_has_zero_eigenvalues_and_sine_none_on_a_photo(crop_png: Path, tmp_path: Path) -> None:
    """Paper 1, Prop. 4.2 / supp. Fig. 1: ReLU Hessians are rank deficient, sine Hessians are not."""
    config = CurvatureConfig(
        crop_png, out=tmp_path / "out", activations=("sine", "relu"), shapes=("3x8",), iterations=2, every=2,
        size=(32, 32), max_hessian_gb=1.0,
    )  # fmt: skip
    report = curvature.run(config, [], progress=False)
    by_activation = {network["activation"]: network for network in report["networks"]}
    sine, relu = by_activation["sine"], by_activation["relu"]
    assert [s["iteration"] for s in sine["snapshots"]] == [0, 2]
    assert all(s["zero_fraction"] == 0 for s in sine["snapshots"])
    assert all(s["smallest_abs"] > s["epsilon"] for s in sine["snapshots"])
    assert relu["summary"]["zero_fraction"] > 0
    assert relu["summary"]["hvp_sparsity"] > 0 and sine["summary"]["hvp_sparsity"] == 0  # paper 2, Thms. 4.2/4.3
    assert relu["summary"]["final_loss"] < relu["snapshots"][0]["loss"]  # L-BFGS really trained it


def test_size_guard_names_the_largest_width_that_fits() -> None:
    spec = NetworkSpec("sine", 4, 64, "siren")
    budget = 0.5e9
    assert hessian_bytes(parameter_count(spec, 2, 3)) > budget
    with pytest.raises(ValueError, match=r"largest width that fits at depth 4 is (\d+)") as info:
        check_sizes([spec], 2, 3, budget)
    width = int(re.search(r"largest width that fits at depth 4 is (\d+)", str(info.value)).group(1))
    fits = lambda w: hessian_bytes(parameter_count(NetworkSpec("sine", 4, w, "siren"), 2, 3)) <= budget  # noqa: E731
    assert fits(width) and not fits(width + 1)
    check_sizes([NetworkSpec("sine", 4, width, "siren")], 2, 3, budget)  # the advice itself passes


def test_parameter_count_matches_the_model() -> None:
    for activation in ("sine", "relu-pe"):
        model = CoordinateMLP(3, 4, FieldConfig(hidden=7, layers=3, activation=activation))
        expected = sum(p.numel() for p in model.parameters())
        assert parameter_count(NetworkSpec(activation, 3, 7, "default"), 3, 4) == expected


def test_cli_writes_json_and_plot(crop_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    argv = [str(crop_png), "--out", str(out), "--name", "curv", "--size", "12", "12", "--shapes", "2x4",
            "--activations", "sine", "relu", "--iterations", "2", "--every", "1", "--max-hessian-gb", "1"]
    assert curvature_cli.main(argv) == 0
    report = json.loads((out / "curv.json").read_text())
    assert report["signal"]["samples"] == 144
    assert [n["label"] for n in report["networks"]] == ["sine 2x4 siren", "relu 2x4 kaiming"]
    for network in report["networks"]:
        assert [s["iteration"] for s in network["snapshots"]] == [0, 1, 2]
        for snapshot in network["snapshots"]:
            assert sum(snapshot["histogram"]) <= snapshot["count"] == network["parameters"]
            assert 0 <= snapshot["hvp_sparsity"] <= 1
    assert iio.imread(out / "curv.png").ndim == 3
    assert "sine 2x4 siren" in capsys.readouterr().out
    assert not list(out.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shapes", "4by16"], "LAYERSxWIDTH"),
        (["--activations", "tanh"], "unknown activation"),
        (["--every", "0"], "--every"),
        (["--shapes", "4x512", "--max-hessian-gb", "0.01"], "largest width that fits at depth 4"),
    ],
)
def test_cli_bad_input_is_one_line(
    extra: list[str], message: str, crop_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert curvature_cli.main([str(crop_png), "--out", str(out), *extra]) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert error.startswith("nf-curvature: error:") and message in error and "\n" not in error
    assert not out.exists()


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert curvature_cli.main([str(tmp_path / "nope.png")]) == EXIT_USAGE
    assert "no such file" in capsys.readouterr().err
