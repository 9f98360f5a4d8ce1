"""Signals: what a file becomes for the fit loop (``base.Signal``), and which module reads it (``load_signal``).

One module per kind (``image``, ``audio``, ``video``, ``occupancy``), chosen by the file's suffix and imported only
when a file needs it; ``media`` holds the shared decoding and grid helpers.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fitters.signals.base import Predict, Signal, SignalError, SignalOptions

SIGNAL_MODULES: dict[str, str] = {
    ".png": "fitters.signals.image",
    ".jpg": "fitters.signals.image",
    ".jpeg": "fitters.signals.image",
    ".wav": "fitters.signals.audio",
    ".flac": "fitters.signals.audio",
    ".mp4": "fitters.signals.video",
    ".avi": "fitters.signals.video",
    ".mov": "fitters.signals.video",
    ".obj": "fitters.signals.occupancy",
    ".ply": "fitters.signals.occupancy",
    ".off": "fitters.signals.occupancy",
    ".stl": "fitters.signals.occupancy",
}


def signal_kind(path: Path) -> str | None:
    """The signal type a file's suffix names ("image", "audio", "video", "occupancy"), or None for other suffixes."""
    module_name = SIGNAL_MODULES.get(Path(path).suffix.lower())
    return module_name.rsplit(".", 1)[-1] if module_name else None


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


__all__ = ["SIGNAL_MODULES", "Predict", "Signal", "SignalError", "SignalOptions", "load_signal", "signal_kind"]
