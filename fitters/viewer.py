"""Live viser viewer for ``nf-fit --viewer``: the reconstruction beside the target, a metric-vs-time plot and the
step/time/metric text, served on loopback.

Written against viser 0.2.7 (the version nerfstudio 1.1.5 pins). The training thread only calls :meth:`Viewer.update`,
which stores references under a lock and returns; a background thread pushes the newest state to the browsers at most
once per ``refresh_s`` and skips anything that did not change, so a fast loop never waits on encoding or sockets and
stale frames are simply dropped.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import viser

DISPLAY_MAX_SIDE = 512
"""Images larger than this (either side) are block-averaged down before they are sent: browsers need no more."""
DISPLAY_MIN_SIDE = 256
"""Smaller images are enlarged by pixel repetition, so the browser's linear texture filter keeps pixels sharp."""
PLOT_MAX_POINTS = 1000
"""The plot shows at most this many (evenly strided) points; the full history stays on the server."""

# The two images stand in the world XZ plane, seen from a camera on the -Y axis with +Z (viser's default) up. viser
# draws an image in its local frame the OpenCV way (x right, y down, seen looking along +z), so rotating by -90
# degrees about X (wxyz below) maps local y to world -Z and the viewing direction to world +Y.
_IMAGE_GAP = 0.1
_FACING_MINUS_Y = (math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0)
_FRAMING_MARGIN = 1.6
"""Visible width/height over the images' extent, when a browser connects."""
_PANEL_SHIFT = 0.28
"""Fraction of the visible half-width by which the images sit left of center, clear of viser's floating panel."""


def to_display(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """An HxWx3 uint8 image resized by an integer factor so its longer side lies in [min_side, max_side] if possible.

    Shrinking averages k x k blocks (cropping the remainder); enlarging repeats pixels.
    """
    longer = max(image.shape[0], image.shape[1])
    if longer > max_side:
        k = math.ceil(longer / max_side)
        h, w = image.shape[0] // k, image.shape[1] // k
        blocks = image[: h * k, : w * k].reshape(h, k, w, k, 3).astype(np.float32)
        return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    if longer < min_side:
        k = min(math.ceil(min_side / longer), max_side // longer)
        return image.repeat(k, axis=0).repeat(k, axis=1)
    return image


def decimate(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """Every k-th point, k chosen so at most ``max_points`` (+1) remain, always ending with the newest point."""
    stride = max(1, math.ceil(len(xs) / max_points))
    kept_x, kept_y = xs[::stride], ys[::stride]
    if xs and (len(xs) - 1) % stride:
        kept_x, kept_y = kept_x + xs[-1:], kept_y + ys[-1:]
    return kept_x, kept_y


def check_image(image: np.ndarray, name: str) -> None:
    """Raise a one-line ValueError unless ``image`` is an HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(
            f"viewer {name} must be an HxWx3 uint8 array, got {got}; convert with "
            "(np.clip(x, 0, 1) * 255).round().astype(np.uint8) and stack gray images to 3 channels"
        )


def check_port_free(host: str, port: int) -> None:
    """Raise a one-line OSError if ``host:port`` cannot be bound (viser would silently move to the next port)."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # Same option asyncio's server uses, so a port that only has TIME_WAIT leftovers counts as free, as it is for viser.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as error:
        raise OSError(
            f"viewer port {port} on {host} is not available ({error.strerror}); pick another with --viewer-port"
        ) from None
    finally:
        probe.close()


@dataclass
class _Latest:
    """What the training thread reported; guarded by ``Viewer._lock``. ``version`` counts updates."""

    version: int = 0
    step: int = 0
    time_s: float = 0.0
    metric_name: str = ""
    metric: float = float("nan")
    image: np.ndarray | None = None
    times: list[float] = field(default_factory=list)
    metrics: list[float] = field(default_factory=list)


class Viewer:
    """A viser server on ``host:port`` showing a training run live. Use as a context manager or call :meth:`close`.

    ``target`` (HxWx3 uint8, or None for signals that are not images) is shown on the left, the latest
    reconstruction on the right. ``refresh_s`` bounds how often browsers are updated.
    """

    def __init__(
        self,
        target: np.ndarray | None,
        host: str = "127.0.0.1",
        port: int = 8080,
        title: str = "nf-fit",
        refresh_s: float = 0.5,
    ) -> None:
        if target is not None:
            check_image(target, "target")
        if not refresh_s > 0:
            raise ValueError(f"viewer refresh_s must be > 0, got {refresh_s}")
        check_port_free(host, port)
        # Imported here so that runs without --viewer never pay for importing viser.
        import viser

        self.url = f"http://{host}:{port}"
        self._refresh_s = refresh_s
        self._target_shape = None if target is None else target.shape[:2]
        self._server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        if self._server.get_port() != port:  # lost a race for the port after the check above
            self._server.stop()
            raise OSError(f"viewer port {port} on {host} was taken while starting; pick another with --viewer-port")

        self._lock = threading.Lock()
        self._latest = _Latest()
        self._pushed_version = 0
        self._pushed_image: np.ndarray | None = None
        self._pushed_points = 0
        self._build_gui(title)
        if target is not None:
            self._show_image("/target", "target", target, x_sign=-1.0)
        self._server.on_client_connect(self._aim_camera)

        self._closing = threading.Event()
        self._pusher = threading.Thread(target=self._push_loop, name="nf-fit-viewer", daemon=True)
        self._pusher.start()

    # ---- called from the training thread -------------------------------------------------------------------------

    def update(self, step: int, time_s: float, metric_name: str, metric: float, image: np.ndarray | None) -> None:
        """Record the newest state; returns at once. ``image`` (HxWx3 uint8) is kept by reference, not copied:
        pass a fresh array each time (as ``tensor.cpu().numpy()`` gives). ``None`` keeps the previous image."""
        if image is not None:
            check_image(image, "image")
        with self._lock:
            latest = self._latest
            latest.version += 1
            latest.step, latest.time_s, latest.metric_name, latest.metric = step, time_s, metric_name, metric
            latest.times.append(time_s)
            latest.metrics.append(metric)
            if image is not None:
                latest.image = image

    def close(self) -> None:
        """Stop pushing, stop the server and release the port. Safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._pusher.join()
        self._stop_server()

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # ---- background thread ----------------------------------------------------------------------------------------

    def _push_loop(self) -> None:
        while not self._closing.wait(self._refresh_s):
            self.push()

    def push(self) -> None:
        """Send whatever changed since the last push to the browsers (the background thread calls this)."""
        with self._lock:
            latest = self._latest
            if latest.version == self._pushed_version:
                return
            self._pushed_version = latest.version
            step, time_s, metric_name, metric, image = (
                latest.step, latest.time_s, latest.metric_name, latest.metric, latest.image,
            )
            points = len(latest.times)
            plot = decimate(latest.times, latest.metrics, PLOT_MAX_POINTS) if points != self._pushed_points else None

        self._status.content = (
            f"**step** {step} &nbsp; **time** {time_s:.1f} s &nbsp; **{metric_name}** {metric:.3f}"
        )
        if plot is not None:
            self._pushed_points = points
            self._show_plot(*plot, metric_name)
        if image is not None and image is not self._pushed_image:
            self._pushed_image = image
            self._show_image("/reconstruction", f"reconstruction (step {step})", image, x_sign=1.0)

    # ---- viser plumbing -----------------------------------------------------------------------------------------------

    def _build_gui(self, title: str) -> None:
        import plotly.graph_objects as go

        gui = self._server.gui
        # Leave show_share_button at its default: in viser 0.2.7 hiding it breaks React's hook order and the whole
        # page goes blank (seen in headless Chromium). Nothing is shared unless someone clicks it.
        gui.configure_theme(control_width="large")
        self._status = gui.add_markdown(f"**{title}**: waiting for the first step")
        self._figure = go.Figure(go.Scatter(x=[], y=[], mode="lines"))  # NaN metrics leave gaps in the line
        self._figure.update_layout(
            xaxis_title="time (s)", yaxis_title="metric", margin=dict(l=50, r=10, t=10, b=40), showlegend=False
        )
        self._plot = gui.add_plotly(self._figure, aspect=0.6)

    def _show_plot(self, times: list[float], metrics: list[float], metric_name: str) -> None:
        # One Figure, refilled with numpy arrays: plotly validates those in bulk (~6 ms for 1000 points, sent as
        # binary), where building a new Figure from lists checks every point in Python (~70 ms, holding the GIL).
        trace = self._figure.data[0]
        trace.x, trace.y = np.asarray(times, dtype=np.float64), np.asarray(metrics, dtype=np.float64)
        self._figure.layout.yaxis.title.text = metric_name
        self._plot.figure = self._figure

    def _show_image(self, name: str, label: str, image: np.ndarray, x_sign: float) -> None:
        """Place ``image`` as a unit-wide plane left (x_sign=-1) or right (+1) of the origin, with a label above."""
        shown = to_display(image)
        height = image.shape[0] / image.shape[1]
        x = x_sign * (0.5 + _IMAGE_GAP / 2)
        scene = self._server.scene
        scene.add_image(
            name, shown, render_width=1.0, render_height=height, format="png",
            wxyz=_FACING_MINUS_Y, position=(x, 0.0, 0.0),
        )
        scene.add_label(f"{name}_label", label, position=(x, 0.0, height / 2 + 0.08))

    def _aim_camera(self, client: "viser.ClientHandle") -> None:
        """Point a new browser's camera straight at the two images, both fully in view."""
        height = 1.0 if self._target_shape is None else self._target_shape[0] / self._target_shape[1]
        half_width, half_height = 1.0 + _IMAGE_GAP / 2, height / 2 + 0.15
        camera = client.camera
        tan_half_vertical = math.tan(camera.fov / 2)
        tan_half_horizontal = tan_half_vertical * camera.aspect
        distance = _FRAMING_MARGIN * max(half_width / tan_half_horizontal, half_height / tan_half_vertical)
        shift = _PANEL_SHIFT * distance * tan_half_horizontal
        with client.atomic():
            # Position first: viser's position setter drags look_at along by the same offset.
            camera.position = (shift, -distance, 0.0)
            camera.look_at = (shift, 0.0, 0.0)
            camera.up_direction = (0.0, 0.0, 1.0)

    def _stop_server(self) -> None:
        server = self._server._websock_server
        ws_server = server._ws_server
        self._server.stop()
        if ws_server is not None:
            # websockets' close() schedules the socket shutdown on viser's event loop from this thread without
            # waking it; wake it and wait so the port is free when close() returns.
            ws_server.get_loop().call_soon_threadsafe(lambda: None)
            deadline = time.monotonic() + 5.0
            while ws_server.is_serving() and time.monotonic() < deadline:
                time.sleep(0.01)
