"""Tiny rendered scenes (numpy ray tracer, no downloads), rendered once per test session.

Tests that change a scene must copy it first (`copy_scene`): the session folders are shared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nerfstudio_plugin.scene import RenderedViews, render_blender, render_llff

TINY_LLFF = {"num_views": 8, "height": 32, "width": 40}
TINY_BLENDER = {"num_views": 6, "height": 24, "width": 24, "num_val_views": 2, "num_test_views": 2}


@pytest.fixture(scope="session")
def llff_scene(tmp_path_factory: pytest.TempPathFactory) -> RenderedViews:
    """8 forward-facing views at 32x40 in the LLFF layout (images/, images_4/, images_8/, poses_bounds.npy)."""
    return render_llff(tmp_path_factory.mktemp("llff_scene"), **TINY_LLFF)


@pytest.fixture(scope="session")
def blender_scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RenderedViews]:
    """6 train / 2 val / 2 test RGBA views at 24x24 in the Blender layout (transforms_{split}.json)."""
    return render_blender(tmp_path_factory.mktemp("blender_scene"), **TINY_BLENDER)


@pytest.fixture
def copy_scene(tmp_path: Path):
    """Copy a session scene into this test's own folder (to modify it) and return the copy's root."""

    def copy(views: RenderedViews | dict[str, RenderedViews]) -> Path:
        destination = tmp_path / "scene"
        root = views.root if isinstance(views, RenderedViews) else views["train"].root
        shutil.copytree(root, destination)
        return destination

    return copy
