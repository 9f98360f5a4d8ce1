"""Field weights as safetensors: a round trip gives back the same network, foreign files are refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fitters.weights import load_field, read_metadata, save_field
from nf_precond.nn import CoordinateMLP, FieldConfig


CONFIGS = [FieldConfig(hidden=8, layers=2, omega0=(30.0, 10.0)),
           FieldConfig(hidden=6, layers=1, activation="relu-pe", pe_frequencies=3)]


@pytest.mark.parametrize("config", CONFIGS)
def test_round_trip_gives_back_the_same_field(tmp_path: Path, config: FieldConfig) -> None:
    model = CoordinateMLP(2, 3, config)
    path = save_field(model, tmp_path / "field.safetensors")
    loaded = load_field(path)
    assert (loaded.config, loaded.in_features, loaded.out_features) == (config, 2, 3)
    coords = torch.rand(50, 2) * 2 - 1
    torch.testing.assert_close(loaded(coords), model(coords), rtol=0, atol=0)
    metadata = read_metadata(path)
    assert json.loads(metadata["field_config"])["hidden"] == config.hidden
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_foreign_and_missing_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="holds no nf-precond field"):
        load_field(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_field(garbage)
    with pytest.raises(ValueError, match="no such field file"):
        load_field(tmp_path / "missing.safetensors")
