"""Scale-out on a real local Ray runtime (2 CPUs, no mocks): dataset groups, Kilo tile groups and nf-bench runs as
Ray tasks give what the local run gives, and a worker killed mid-run is replaced without losing or repeating work."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data

from fitters.cli.bench import main as bench_main
from fitters.cli.fit import main
from fitters.config import FitConfig
from fitters.dataset import BOOKKEEPING, GroupResult, GroupTask, fit_group, run_dataset
from fitters.distributed import RayEngine
from fitters.weights import WEIGHTS_NAME
from nf_precond.nn import FieldConfig
from safetensors.torch import load_file

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SMALL = ["--hidden", "12", "--layers", "2", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    """One local Ray runtime for the module; tasks defined here travel by value (workers cannot import tests)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def photos(folder: Path, count: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image = data.coffee()
    paths = []
    for index in range(count):
        top, left = 40 + 31 * index, 100 + 27 * index
        path = folder / f"cup{index}.png"
        iio.imwrite(path, image[top : top + 2 * size : 2, left : left + 2 * size : 2])
        paths.append(path)
    return paths


def fields(out: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads((out / "summary.json").read_text())["fields"]}


def weights(out: Path, name: str) -> dict:
    return load_file(str(out / name / WEIGHTS_NAME))


def test_nf_fit_dir_on_ray_equals_the_local_run(tmp_path: Path, capsys) -> None:
    photos(tmp_path / "photos", 5)
    args = [str(tmp_path / "photos"), "--optim", "lbfgs", "--steps", "8", "--group", "2", *SMALL]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    assert "fitted 5 of 5 signals" in capsys.readouterr().out
    local, remote = fields(tmp_path / "local"), fields(tmp_path / "ray")
    assert sorted(local) == sorted(remote) == [f"cup{i}" for i in range(5)]
    for name in local:
        assert abs(remote[name]["psnr"] - local[name]["psnr"]) <= 1e-4
        for key, value in weights(tmp_path / "local", name).items():
            np.testing.assert_array_equal(weights(tmp_path / "ray", name)[key].numpy(), value.numpy())
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["ray"] == "local"


def crash_once(task: GroupTask) -> GroupResult:
    """``fit_group``, except that the worker running group 2 dies (os._exit) on the first attempt, halfway through
    writing its folders; every attempt is counted in a file beside the output folder."""
    attempts = task.out.parent / "attempts"
    attempts.mkdir(exist_ok=True)
    with open(attempts / str(task.index), "a", encoding="utf-8") as log:
        log.write("attempt\n")
    crashed = attempts / "crashed"
    if task.index == 2 and not crashed.exists():
        crashed.touch()
        half_written = task.out / BOOKKEEPING / "partial" / f"{task.index:05d}" / task.names[0]
        half_written.mkdir(parents=True)
        (half_written / "metrics.jsonl").write_text('{"step": 0')
        os._exit(1)
    return fit_group(task)


def test_a_killed_worker_is_retried_and_every_signal_is_fitted_once(tmp_path: Path) -> None:
    photos(tmp_path / "photos", 4)
    config = FitConfig(path=tmp_path / "photos", optim="lbfgs", steps=6, group=1, threads=1, ray="local",
                       field=FieldConfig(hidden=12, layers=2), out=tmp_path / "ray")  # fmt: skip
    result = run_dataset(config, RayEngine(threads=1), task=crash_once)
    attempts = {path.name: path.read_text().count("attempt") for path in (tmp_path / "attempts").iterdir()
                if path.name != "crashed"}  # fmt: skip
    assert attempts == {"0": 1, "1": 1, "2": 2, "3": 1}
    assert result.status == "completed" and result.fitted == 4
    assert sorted(s["name"] for s in result.summaries) == [f"cup{i}" for i in range(4)]
    assert not (tmp_path / "ray" / BOOKKEEPING / "partial").exists()
    local = run_dataset(dataclasses.replace(config, ray=None, out=tmp_path / "local"))
    for mine, theirs in zip(result.summaries, local.summaries):
        assert mine["name"] == theirs["name"] and abs(mine["psnr"] - theirs["psnr"]) <= 1e-4
        records = (tmp_path / "ray" / mine["name"] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in records] == [0, 1, 2, 3, 4, 5, 6]


def test_kilo_tile_groups_on_ray_equal_the_local_run(tmp_path: Path) -> None:
    image = tmp_path / "coffee.png"
    iio.imwrite(image, data.coffee()[100:164:2, 200:264:2])
    args = [str(image), "--kilo", "4x4", "--kilo-group", "5", "--optim", "lbfgs", "--steps", "6", "--hidden", "8",
            "--layers", "2", "--threads", "1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    remote = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert remote["psnr"] == local["psnr"] and remote["steps"] == local["steps"] == 6 * 4  # 4 groups of up to 5
    np.testing.assert_array_equal(iio.imread(tmp_path / "ray" / "reconstruction.png"),
                                  iio.imread(tmp_path / "local" / "reconstruction.png"))  # fmt: skip


def test_nf_bench_runs_on_ray_equal_the_local_race(tmp_path: Path) -> None:
    image = tmp_path / "crop.png"
    iio.imwrite(image, data.coffee()[100:132, 200:232])
    args = [str(image), "--optims", "adam@1e-2,lbfgs", "--steps", "5", "--batch-size", "0", *SMALL]
    reports = {}
    for mode in ("local", "ray"):
        extra = ["--ray"] if mode == "ray" else []
        assert bench_main([*args, *extra, "--results-dir", str(tmp_path / mode), "--name", "race"]) == 0
        reports[mode] = json.loads((tmp_path / mode / "race.json").read_text())
    for local, remote in zip(reports["local"]["runs"], reports["ray"]["runs"]):
        assert remote["label"] == local["label"]
        assert abs(remote["final"]["psnr"] - local["final"]["psnr"]) <= 1e-4
        assert [r["step"] for r in remote["curve"]] == [r["step"] for r in local["curve"]]
