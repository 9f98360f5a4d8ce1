"""Which signal module reads a file, chosen by its suffix; modules are imported only when a file needs them."""

from __future__ import annotations

import importlib
from pathlib import Path

from fitters.signal import Signal, SignalError, SignalOptions

SIGNAL_MODULES: dict[str, str] = {
    ".png": "fitters.image",
    ".jpg": "fitters.image",
    ".jpeg": "fitters.image",
    ".wav": "fitters.audio",
    ".flac": "fitters.audio",
    ".mp4": "fitters.video",
    ".avi": "fitters.video",
    ".mov": "fitters.video",
    ".obj": "fitters.occupancy",
    ".ply": "fitters.occupancy",
    ".off": "fitters.occupancy",
    ".stl": "fitters.occupancy",
}


def load_signal(path: Path, options: SignalOptions | None = None) -> Signal:
    """Load ``path`` with the module its suffix names (see ``SIGNAL_MODULES``)."""
    path = Path(path)
    if not path.exists():
        raise SignalError(f"no such file: {path}")
    if not path.is_file():
        raise SignalError(f"{path} is not a file; give the path of an image, audio, video or mesh file")
    module_name = SIGNAL_MODULES.get(path.suffix.lower())
    if module_name is None:
        supported = " ".join(sorted(SIGNAL_MODULES))
        raise SignalError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; supported: {supported}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise SignalError(f"{path}: {module_name} is not available in this installation ({error})") from error
    return module.load(path, options or SignalOptions())
