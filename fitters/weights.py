"""A fitted field's weights as a safetensors file, and back: ``save_field`` / ``load_field``.

``nf-fit DIR`` writes one ``field.safetensors`` per signal. The file holds the ``CoordinateMLP`` state dict (plain
tensors, no pickle, so a file from anywhere is safe to open) and, in its metadata, everything needed to rebuild the
network: the ``FieldConfig`` and the in/out features. Nothing else is needed to load it::

    from fitters.weights import load_field
    field = load_field("outputs/photos/lbfgs-.../astronaut/field.safetensors")   # a CoordinateMLP
    colors = field(coords)                                                       # coords in [-1, 1]^d
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from nf_precond.atomic import atomic_path
from nf_precond.nn import CoordinateMLP, FieldConfig

FORMAT = "nf-precond-field"
"""The metadata ``format`` of a field file; other safetensors files are refused by ``load_field``."""
FORMAT_VERSION = "1"
WEIGHTS_NAME = "field.safetensors"
"""The file name ``nf-fit DIR`` gives every signal's weights."""


def save_field(model: CoordinateMLP, path: Path | str) -> Path:
    """Write ``model``'s weights and architecture to ``path`` (atomically) and return the path."""
    metadata = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "field_config": json.dumps(dataclasses.asdict(model.config)),
        "in_features": str(model.in_features),
        "out_features": str(model.out_features),
    }
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The metadata of a field file; one clear error for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such field file: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        raise ValueError(f"{path} holds no nf-precond field (metadata format {found!r}, expected {FORMAT!r})")
    return metadata


def load_field(path: Path | str, device: torch.device | str = "cpu") -> CoordinateMLP:
    """The ``CoordinateMLP`` stored in ``path`` by ``save_field`` (on ``device``, in eval mode)."""
    metadata = read_metadata(path)
    config = FieldConfig(**json.loads(metadata["field_config"]))
    model = CoordinateMLP(int(metadata["in_features"]), int(metadata["out_features"]), config)
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path}: the weights do not match the stored architecture ({reason})") from error
    return model.to(device).eval()
