"""Kilo tiling: split/stitch against array slicing, seams against each tile's own net, batched L-BFGS against a
per-tile loop, grouped streaming against all-at-once, nf-fit --kilo run directory and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from fitters import kilo
from fitters.cli import EXIT_INTERRUPTED, explain, main
from fitters.config import FitConfig
from fitters.image import ImageSignal, pixel_grid
from fitters.kilo import KiloLoop, KiloSignal, TileGrid, make_grid, parse_tiles, select_nets, tiled_predict
from fitters.loop import FitOutcome, LoopOptions
from fitters.media import grid_coordinates
from fitters.run_dir import RunDir
from fitters.video import VideoSignal
from nf_precond.nn import BatchedMLP
from nf_precond.optim.lbfgs import LBFGS


pytestmark = pytest.mark.usefixtures("one_thread")


def photo(height: int, width: int, channels: int = 3) -> np.ndarray:
    """A real crop of the astronaut photo as float32 in [0, 1]."""
    pixels = data.astronaut()[100 : 100 + 2 * height : 2, 200 : 200 + 2 * width : 2, :channels]
    return pixels.astype(np.float32) / 255.0


def tiles_by_slicing(array: np.ndarray, tiles: tuple[int, ...]) -> list[np.ndarray]:
    """Reference split: pad the far ends by edge repetition, then cut equal blocks in C order of the tile index."""
    tile_shape = [-(-size // count) for size, count in zip(array.shape[:-1], tiles)]
    padding = [(0, count * tile - size) for size, count, tile in zip(array.shape[:-1], tiles, tile_shape)]
    padded = np.pad(array, padding + [(0, 0)], mode="edge")
    blocks = []
    for index in np.ndindex(*tiles):
        region = tuple(slice(i * t, (i + 1) * t) for i, t in zip(index, tile_shape))
        blocks.append(padded[region].reshape(-1, array.shape[-1]))
    return blocks


@pytest.mark.parametrize("shape, tiles", [((8, 12), (2, 3)), ((9, 11), (2, 3)), ((7, 5), (3, 2)), ((6, 10, 4), (2, 3, 2))])
def test_split_matches_slicing_and_stitch_inverts_it(shape: tuple[int, ...], tiles: tuple[int, ...]) -> None:
    values = np.random.default_rng(0).random(shape + (3,), dtype=np.float32)
    grid = TileGrid(shape, tiles, tuple(range(len(shape))))
    tiled = grid.split(torch.from_numpy(values).reshape(-1, 3))
    expected = np.stack(tiles_by_slicing(values, tiles))
    torch.testing.assert_close(tiled, torch.from_numpy(expected), rtol=0, atol=0)
    torch.testing.assert_close(grid.stitch(tiled), torch.from_numpy(values).reshape(-1, 3), rtol=0, atol=0)


def test_local_coordinates_follow_the_signals_conventions() -> None:
    image = ImageSignal(photo(12, 8))
    grid = make_grid(image, "3x2")
    torch.testing.assert_close(grid.local_coords(), pixel_grid(4, 4))  # (x, y) like the image's own coordinates
    video = VideoSignal(np.zeros((4, 6, 8, 3), np.float32), fps=10.0)
    torch.testing.assert_close(make_grid(video, "2x3x4").local_coords(), grid_coordinates((2, 2, 2)))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_rows_of_the_signals_own_coordinates_are_its_rows(kind: str) -> None:
    signal = ImageSignal(photo(9, 7)) if kind == "image" else VideoSignal(np.zeros((3, 5, 7, 3), np.float32), 10.0)
    grid = make_grid(signal, "2x3" if kind == "image" else "2x2x3")
    torch.testing.assert_close(grid.rows_of(signal.coords), torch.arange(signal.num_samples))


@pytest.mark.parametrize("tiles", ["2x2", "3x2"])
def test_stitched_output_equals_each_tiles_own_net(tiles: str) -> None:
    """Seams: every pixel of the stitched reconstruction is its tile's net (the ``.net(i)`` twin) at that pixel's
    local coordinate; padding never leaks in."""
    pixels = photo(10, 8)
    signal = KiloSignal(ImageSignal(pixels), make_grid(ImageSignal(pixels), tiles))
    grid = signal.grid
    model = BatchedMLP(grid.num_tiles, 2, 3, hidden=8, layers=2)
    stitched = signal.stitched_predict(tiled_predict(model, chunk=7))(signal.base.coords).numpy().reshape(10, 8, 3)
    local = grid.local_coords()
    th, tw = grid.tile_shape
    padded = np.zeros((grid.tiles[0] * th, grid.tiles[1] * tw, 3), np.float32)
    for index, (row, column) in enumerate(np.ndindex(*grid.tiles)):
        with torch.no_grad():
            own = model.net(index)(local).numpy().reshape(th, tw, 3)
        padded[row * th : (row + 1) * th, column * tw : (column + 1) * tw] = own
    np.testing.assert_allclose(stitched, padded[:10, :8], rtol=1e-5, atol=1e-6)


def tile_loop_lbfgs(signal: KiloSignal, initial: BatchedMLP, steps: int) -> list[torch.Tensor]:
    """Reference: one ``LBFGS`` per tile on its own points, one tile after the other (flat final weights)."""
    finals = []
    for index in range(signal.grid.num_tiles):
        net = initial.net(index)
        optimizer = LBFGS(net.parameters(), lr=1.0, history_size=kilo.LBFGS_HISTORY)
        coords, target = signal.coords[index], signal.targets[index]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (net(coords) - target).square().mean()
            loss.backward()
            return loss.detach()

        for _ in range(steps):
            optimizer.step(closure)
        finals.append(torch.cat([torch.cat([l.weight.t().reshape(-1), l.bias]) for l in net.linears]))
    return finals


def test_batched_lbfgs_over_tiles_matches_a_per_tile_loop() -> None:
    pixels = photo(12, 10, channels=1)
    base = ImageSignal(pixels)
    grid = make_grid(base, "2x2")  # 6x5 tiles
    field = kilo.FieldOptions(hidden=8, layers=2, optim="lbfgs", seed=3)
    loop = KiloLoop(base, grid, field, LoopOptions(steps=6, log_every=6))
    expected = tile_loop_lbfgs(KiloSignal(base, grid), kilo.build_field(field, grid.num_tiles, 2, 1), steps=6)
    loop.run()
    model = loop._single.model
    for index, flat in enumerate(expected):
        got = torch.cat([torch.cat([w[index].reshape(-1), b[index, 0]]) for w, b in zip(model.weights, model.biases)])
        torch.testing.assert_close(got, flat, rtol=1e-4, atol=1e-5)


def test_grouped_streaming_equals_all_at_once(tmp_path: Path) -> None:
    base = ImageSignal(photo(11, 9))  # 3x2 tiles of 4x5 with padding on both axes
    grid = make_grid(base, "3x2")
    field = kilo.FieldOptions(hidden=8, layers=2, optim="lbfgs")
    outputs = {}
    for name, group in (("all", None), ("groups", 4)):
        run_dir = RunDir(tmp_path / name)
        run_dir.prepare(resume=False)
        loop = KiloLoop(base, grid, field, LoopOptions(steps=5, log_every=5), group=group, run_dir=run_dir)
        outcome = loop.run()
        outputs[name] = (outcome, iio.imread(run_dir.path / "reconstruction.png"), run_dir.load_checkpoint(torch.device("cpu")))
    (all_outcome, all_image, all_state), (group_outcome, group_image, group_state) = outputs["all"], outputs["groups"]
    assert len(loop.groups) == 2 and group_outcome.step == 2 * all_outcome.step
    np.testing.assert_array_equal(group_image, all_image)
    for metric in ("psnr", "ssim"):
        assert group_outcome.final_metrics[metric] == pytest.approx(all_outcome.final_metrics[metric], rel=1e-5)
    for key, value in all_state["model"].items():
        torch.testing.assert_close(group_state["model"][key], value, rtol=1e-5, atol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "groups" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    assert {r.get("group") for r in records} == {0, 1, None}  # the last record scores the whole image


def test_select_nets_copies_the_chosen_nets() -> None:
    model = BatchedMLP(5, 2, 1, hidden=4, layers=2)
    chosen = select_nets(model, torch.tensor([3, 1]), torch.device("cpu"))
    points = torch.rand(2, 6, 2)
    with torch.no_grad():
        torch.testing.assert_close(chosen(points)[0], model.net(3)(points[0]))
        torch.testing.assert_close(chosen(points)[1], model.net(1)(points[1]))


# -- nf-fit --kilo ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kilo") / "tiny.png"
    iio.imwrite(path, data.astronaut()[100:132:2, 200:232:2])  # 16x16 RGB
    return path


def fit(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clean_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("group", [None, 3])
def test_nf_fit_kilo_writes_the_run_directory(tmp_path: Path, tiny_png: Path, group: int | None,
                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    out = tmp_path / "run"
    extra = [] if group is None else ["--kilo-group", group]
    code, stdout, err = fit([tiny_png, "--kilo", "2x2", "--optim", "lbfgs", "--steps", "6", "--hidden", "8",
                             "--layers", "2", "--out", out, *extra], capsys)  # fmt: skip
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.json", "reconstruction.png", "checkpoint.pt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles"] == 4 and summary["kilo"] == "2x2" and summary["steps"] == (6 if group is None else 12)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "time_s", "loss", "closure_evals", "psnr"} <= set(records[-1])
    assert summary["psnr"] == pytest.approx(records[-1]["psnr"], rel=1e-5)
    assert records[-1]["psnr"] > records[0]["psnr"] + 3  # L-BFGS on 8x8 tiles learns within six steps
    assert iio.imread(out / "reconstruction.png").shape == (16, 16, 3)


def test_nf_fit_kilo_resumes_a_single_group_run(tmp_path: Path, tiny_png: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    common = [tiny_png, "--kilo", "2x2", "--optim", "lbfgs", "--hidden", "8", "--layers", "2", "--out", out]
    assert fit([*common, "--steps", "3"], capsys)[0] == 0
    code, _, err = fit([tiny_png, "--out", out, "--resume", "--steps", "6"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_grouped_runs_are_not_told_to_resume(tmp_path: Path, tiny_png: Path, capsys: pytest.CaptureFixture) -> None:
    """A --kilo-group run writes its checkpoint only after the last group: a diverged or interrupted one has none."""
    out = tmp_path / "run"
    code, _, err = fit([tiny_png, "--kilo", "2x2", "--kilo-group", "2", "--optim", "sgd", "--lr", "1e12", "--steps", "20",
                        "--log-every", "1", "--hidden", "8", "--layers", "2", "--out", out], capsys)  # fmt: skip
    assert code == 3
    assert_one_clean_line(err, "NaN/inf", "lower --lr", "no checkpoint", "--overwrite")
    assert "Kept the last good checkpoint" not in err
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert not (out / "checkpoint.pt").exists()
    code, message = explain(FitOutcome("interrupted", 7, 0.1, 7), FitConfig(path=tiny_png, out=out), RunDir(out))
    assert code == EXIT_INTERRUPTED and "continue with" not in message and "cannot --resume" in message


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--kilo", "2x"], ["--kilo '2x'", "ROWSxCOLUMNS"]),
        (["--kilo", "0x2"], ["every tile count must be >= 1"]),
        (["--kilo", "two"], ["expected tile counts"]),
        (["--kilo", "2x2x2"], ["needs 2 tile counts"]),
        (["--kilo", "12x2"], ["only padding", "at most 8"]),
        (["--kilo", "17x1"], ["only padding"]),
        (["--kilo", "2x2", "--optim", "shampoo"], ["--kilo works with --optim lbfgs"]),
        (["--kilo", "2x2", "--batch-size", "32"], ["drop --batch-size"]),
        (["--kilo", "2x2", "--kilo-group", "0"], ["--kilo-group must be >= 1"]),
        (["--kilo-group", "4"], ["applies only to --kilo"]),
    ],
)
def test_bad_kilo_input_is_one_clear_line(tmp_path: Path, tiny_png: Path, args: list, needles: list,
                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    out = tmp_path / "run"
    code, _, err = fit([tiny_png, "--steps", "2", "--out", out, *args], capsys)
    assert code == 2
    assert_one_clean_line(err, *needles)
    assert not out.exists()


def test_kilo_refuses_signals_without_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wav = Path(__file__).resolve().parents[1] / "data" / "front_center.wav"
    code, _, err = fit([wav, "--kilo", "4x4", "--signal.max-seconds", "0.01", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "--kilo tiles images and videos")


def test_too_large_full_batch_advises_kilo_or_batch_size(tmp_path: Path, tiny_png: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(kilo, "memory_available", lambda device: 1000)  # pretend a machine with 1 kB
    code, _, err = fit([tiny_png, "--optim", "lbfgs", "--steps", "2", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "--kilo", "--batch-size")
    code, _, err = fit([tiny_png, "--kilo", "2x2", "--optim", "lbfgs", "--steps", "2", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_clean_line(err, "smaller --kilo-group")


def test_nf_fit_kilo_video(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = Path(__file__).resolve().parents[1] / "data" / "bikes.mp4"
    out = tmp_path / "run"
    code, _, err = fit([clip, "--signal.frames", "0", "4", "--signal.resize", "12", "16", "--kilo", "2x2x2",
                        "--layers", "3", "--hidden", "8", "--optim", "lbfgs", "--steps", "4", "--out", out], capsys)  # fmt: skip
    assert code == 0, err
    assert (out / "reconstruction.mp4").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles"] == 8 and summary["tile_shape"] == [2, 6, 8]


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parents[2] / "configs" / "kilo").glob("*.yaml")))
def test_kilo_presets_run(tmp_path: Path, tiny_png: Path, preset: Path, capsys: pytest.CaptureFixture) -> None:
    """Each preset parses and drives a (shortened) fit; video presets get tile counts an image can take."""
    tiles = "2x2"
    code, _, err = fit([tiny_png, "--config", preset, "--kilo", tiles, "--steps", "2", "--hidden", "8",
                        "--out", tmp_path / "run"], capsys)  # fmt: skip
    assert code == 0, err
