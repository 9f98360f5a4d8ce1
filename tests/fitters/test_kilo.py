"""Kilo tiling: split/stitch against array slicing, seams against each tile's own net, batched L-BFGS against a
per-tile loop, grouped streaming against all-at-once (``nf-fit --kilo`` itself is tested in test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from fitters import kilo
from fitters.signals.image import ImageSignal, pixel_grid
from fitters.kilo import KiloLoop, KiloSignal, TileGrid, initial_field, make_grid, tiled_predict
from fitters.loop import LoopOptions
from fitters.signals.media import grid_coordinates
from fitters.run_dir import RunDir
from fitters.signals.video import VideoSignal
from nf_precond.nn import BatchedMLP, FieldConfig
from nf_precond.optim import OPTIMIZERS
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
    model = BatchedMLP(grid.num_tiles, 2, 3, FieldConfig(hidden=8, layers=2))
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
        optimizer = LBFGS(net.parameters(), lr=1.0, history_size=OPTIMIZERS["lbfgs"].batched.defaults["history_size"])
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
    field = FieldConfig(hidden=8, layers=2)
    loop = KiloLoop(base, grid, field, LoopOptions(steps=6, log_every=6), optim="lbfgs", seed=3)
    expected = tile_loop_lbfgs(KiloSignal(base, grid), initial_field(field, grid.num_tiles, 2, 1, seed=3), steps=6)
    loop.run()
    model = loop._single.model
    for index, flat in enumerate(expected):
        got = torch.cat([torch.cat([w[index].reshape(-1), b[index, 0]]) for w, b in zip(model.weights, model.biases)])
        torch.testing.assert_close(got, flat, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_tiles_follow_the_eager_tiles(capsys: pytest.CaptureFixture) -> None:
    """The compiled field (training closure and evaluation) is a twin of the eager one: same L-BFGS path to float
    rounding, and line-search trials over a subset of the tiles still run (eagerly) beside it."""
    base = ImageSignal(photo(12, 10))
    grid = make_grid(base, "2x2")
    field = FieldConfig(hidden=8, layers=2)
    runs = {}
    for compile in (False, True):
        loop = KiloLoop(base, grid, field, LoopOptions(steps=6, log_every=2), optim="lbfgs", seed=3, compile=compile)
        runs[compile] = (loop.run(), loop._single.model)
    (eager, eager_model), (compiled, compiled_model) = runs[False], runs[True]
    assert compiled_model.compile_s > 0 and "compiled the field in" in capsys.readouterr().out
    assert compiled.step == eager.step
    losses = [[record["loss"] for record in outcome.history if record["loss"] is not None] for outcome in (compiled, eager)]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    for key, value in eager_model.state_dict().items():
        torch.testing.assert_close(compiled_model.state_dict()[key], value, rtol=1e-3, atol=1e-5)


def test_grouped_streaming_equals_all_at_once(tmp_path: Path) -> None:
    base = ImageSignal(photo(11, 9))  # 3x2 tiles of 4x5 with padding on both axes
    grid = make_grid(base, "3x2")
    field = FieldConfig(hidden=8, layers=2)
    outputs = {}
    for name, group in (("all", None), ("groups", 4)):
        run_dir = RunDir(tmp_path / name)
        run_dir.prepare(resume=False)
        loop = KiloLoop(base, grid, field, LoopOptions(steps=5, log_every=5), optim="lbfgs", group=group, run_dir=run_dir)
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


def test_groups_share_the_time_budget_by_tiles() -> None:
    base = ImageSignal(photo(12, 10))
    options = LoopOptions(steps=5, time_budget=60.0, wall_budget=90.0)
    loop = KiloLoop(base, make_grid(base, "2x2"), FieldConfig(hidden=4, layers=1), options, group=3)
    shares = [loop.group_options(ids) for ids in loop.groups]  # 3 tiles, then 1
    assert [(o.time_budget, o.wall_budget) for o in shares] == [(45.0, 67.5), (15.0, 22.5)]
    assert all(o.steps == 5 for o in shares)


def test_select_copies_the_chosen_nets() -> None:
    model = BatchedMLP(5, 2, 1, FieldConfig(hidden=4, layers=2))
    chosen = model.select(torch.tensor([3, 1]))
    points = torch.rand(2, 6, 2)
    with torch.no_grad():
        torch.testing.assert_close(chosen(points)[0], model.net(3)(points[0]))
        torch.testing.assert_close(chosen(points)[1], model.net(1)(points[1]))


# -- nf-fit --kilo ---------------------------------------------------------------------------------------------------
