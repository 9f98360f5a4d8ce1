"""A scene folder ns-train cannot use ends the run with one line, before any training, not a traceback."""

from __future__ import annotations

import pytest

pytest.importorskip("nerfstudio")

from nerfstudio_plugin.methods import configure  # noqa: E402


def test_unknown_layout_exits_with_one_line_naming_the_folder(tmp_path):
    scene = tmp_path / "not_a_scene"
    scene.mkdir()
    config = configure("gauss-esgd", scene, tmp_path / "out", iterations=2)
    trainer = config.setup(local_rank=0, world_size=1)
    with pytest.raises(SystemExit) as exit_info:
        trainer.setup()
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert str(scene) in message and "poses_bounds.npy" in message
    assert not list((tmp_path / "out").rglob("*.ckpt"))
