"""Input ns-train cannot use ends the run with one line `ns-train: error: ...`, before the run folder exists (or
with the folder removed again), not with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nerfstudio")

from nerfstudio_plugin.methods import configure  # noqa: E402
from nerfstudio_plugin.trainer import remove_unused_run_folder  # noqa: E402

BIN = Path(sys.executable).parent


def assert_one_line_error(exit_info: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exit_info.value.code)
    assert message.startswith("ns-train: error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def scene_with(tmp_path: Path, name: str, content: bytes) -> Path:
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    (scene / name).write_bytes(content)
    return scene


BAD_FILES = {
    "empty poses_bounds.npy": ("poses_bounds.npy", b"", "poses_bounds.npy is empty"),
    "garbage poses_bounds.npy": ("poses_bounds.npy", b"\x00\xffnot numpy" * 4, "cannot read poses_bounds.npy"),
    "empty transforms.json": ("transforms.json", b"", "transforms.json is not valid JSON"),
    "garbage transforms.json": ("transforms.json", b"\xff\xfe\x00garbage", "transforms.json is not valid JSON"),
    "no layout": ("notes.txt", b"hello", "unknown dataset layout"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_dataset_stops_before_the_run_folder_is_created(tmp_path: Path, case: str) -> None:
    """ns-train writes config.yml (save_config) before building the trainer: the dataset is checked first."""
    name, content, fragment = BAD_FILES[case]
    scene = scene_with(tmp_path, name, content)
    config = configure("gauss-esgd", scene, tmp_path / "out", iterations=2)
    config.set_timestamp()
    with pytest.raises(SystemExit) as exit_info:
        config.save_config()
    assert_one_line_error(exit_info, str(scene), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flag, port", [("websocket_port", 99999), ("websocket_port", 0), ("websocket_port_default", -1)]
)
def test_viewer_port_out_of_range_is_one_line(llff_scene, tmp_path: Path, flag: str, port: int) -> None:
    config = configure("gauss-esgd", llff_scene.root, tmp_path / "out", iterations=2, vis="viewer")
    setattr(config.viewer, flag, port)
    config.set_timestamp()
    with pytest.raises(SystemExit) as exit_info:
        config.save_config()
    assert_one_line_error(exit_info, f"--viewer.{flag.replace('_', '-')} {port}", "1-65535")
    assert not (tmp_path / "out").exists()


def test_failed_setup_removes_the_run_folder_it_created(llff_scene, copy_scene, tmp_path: Path) -> None:
    """A dataset that breaks between save_config and setup: the run folder (config.yml only) and the empty folders
    above it go; what was already in the output folder stays."""
    scene = copy_scene(llff_scene)
    output = tmp_path / "out"
    (output / "earlier").mkdir(parents=True)
    (output / "earlier" / "keep.txt").write_text("an earlier run")
    config = configure("gauss-esgd", scene, output, iterations=2)
    config.set_timestamp()
    config.save_config()
    assert (config.get_base_dir() / "config.yml").is_file()
    (scene / "poses_bounds.npy").write_bytes(b"")
    trainer = config.setup(local_rank=0, world_size=1)
    with pytest.raises(SystemExit) as exit_info:
        trainer.setup()
    assert_one_line_error(exit_info, "poses_bounds.npy is empty")
    assert sorted(path.relative_to(output).as_posix() for path in output.rglob("*")) == ["earlier", "earlier/keep.txt"]


def test_unknown_layout_at_setup_exits_with_one_line_naming_the_folder(tmp_path) -> None:
    scene = tmp_path / "not_a_scene"
    scene.mkdir()
    config = configure("gauss-esgd", scene, tmp_path / "out", iterations=2)
    trainer = config.setup(local_rank=0, world_size=1)
    with pytest.raises(SystemExit) as exit_info:
        trainer.setup()
    assert_one_line_error(exit_info, str(scene), "poses_bounds.npy")
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def test_run_folder_with_results_is_kept(tmp_path: Path) -> None:
    run = tmp_path / "out" / "scene" / "gauss-esgd" / "stamp"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text("config")
    remove_unused_run_folder(run, tmp_path / "out")
    assert not run.exists() and (tmp_path / "out").is_dir() and not any((tmp_path / "out").iterdir())

    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text("config")
    (run / "nerfstudio_models" / "step-000000001.ckpt").write_bytes(b"weights")
    remove_unused_run_folder(run, tmp_path / "out")
    assert (run / "nerfstudio_models" / "step-000000001.ckpt").is_file() and (run / "config.yml").is_file()


@pytest.mark.slow
@pytest.mark.nerfstudio
@pytest.mark.parametrize("case", ["empty poses_bounds.npy", "viewer port 99999"])
def test_ns_train_prints_one_line_and_leaves_no_run_folder(llff_scene, copy_scene, tmp_path: Path, case: str) -> None:
    """The commands a user types: exit code non-zero, one error line, no traceback, nothing under --output-dir."""
    if case == "empty poses_bounds.npy":
        scene, extra = scene_with(tmp_path, "poses_bounds.npy", b""), []
    else:
        scene, extra = copy_scene(llff_scene), ["--vis", "viewer", "--viewer.websocket-port", "99999"]
    output = tmp_path / "out"
    result = subprocess.run(
        [str(BIN / "ns-train"), "gauss-esgd", "--data", str(scene), "--output-dir", str(output), *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ns-train: error: "), result.stderr[-3000:]
    assert ("poses_bounds.npy is empty" if "npy" in case else "99999") in last_line
    assert not output.exists()
    if "npy" not in case:
        assert np.load(scene / "poses_bounds.npy").shape[1] == 17  # the good dataset is untouched
