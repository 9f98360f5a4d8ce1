"""The live viewer: display helpers against plain numpy/scikit-image math, and one real server on a free loopback
port, checked over HTTP and with a websocket client speaking viser's own protocol."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.request

import imageio.v3 as iio
import msgspec
import numpy as np
import pytest
from skimage.transform import downscale_local_mean
from websockets.sync.client import connect

from fitters.viewer import PLOT_MAX_POINTS, Viewer, check_image, check_port_free, decimate, to_display


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---- display helpers ---------------------------------------------------------------------------------------------


def test_to_display_shrinks_big_images_by_block_mean() -> None:
    image = random_image(1024, 768, seed=0)
    shown = to_display(image, max_side=512, min_side=256)
    expected = downscale_local_mean(image.astype(np.float64), (2, 2, 1)).round().astype(np.uint8)
    assert shown.shape == (512, 384, 3)
    np.testing.assert_array_equal(shown, expected)


def test_to_display_enlarges_small_images_by_pixel_repetition() -> None:
    image = random_image(32, 20, seed=1)
    shown = to_display(image, max_side=512, min_side=256)
    np.testing.assert_array_equal(shown, np.kron(image, np.ones((8, 8, 1), dtype=np.uint8)))


def test_to_display_keeps_mid_sized_images() -> None:
    image = random_image(300, 200, seed=2)
    assert to_display(image, max_side=512, min_side=256) is image


@pytest.mark.parametrize("n", [0, 1, 5, PLOT_MAX_POINTS, PLOT_MAX_POINTS + 1, 12_345])
def test_decimate_keeps_order_the_newest_point_and_a_bounded_count(n: int) -> None:
    xs = [float(i) for i in range(n)]
    ys = [2.0 * x for x in xs]
    kept_x, kept_y = decimate(xs, ys, PLOT_MAX_POINTS)
    assert len(kept_x) <= PLOT_MAX_POINTS + 1
    assert kept_y == [2.0 * x for x in kept_x]
    assert kept_x == sorted(set(kept_x))
    if n:
        assert kept_x[0] == 0.0 and kept_x[-1] == xs[-1]
    if n <= PLOT_MAX_POINTS:
        assert kept_x == xs


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32), [[0, 0, 0]]],
)
def test_check_image_rejects_what_is_not_hxwx3_uint8(bad: object) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        check_image(bad, "image")  # type: ignore[arg-type]


# ---- a real server ---------------------------------------------------------------------------------------------------


def broadcast_count(viewer: Viewer) -> int:
    """How many messages the viewer has queued for browsers so far (viser 0.2.7's broadcast buffer)."""
    return viewer._server._websock_server._broadcast_buffer.message_counter


def queued_image_id(viewer: Viewer) -> int:
    """Id of the newest queued reconstruction image message; a re-sent image gets a new one."""
    return viewer._server._websock_server._broadcast_buffer.id_from_redundancy_key["ImageMessage_/reconstruction"]


def viser_state(url: str, wanted: set[str], timeout_s: float = 5.0) -> dict[str, dict]:
    """Connect like the viser client does and collect the newest message per (type, name/id) key until every key in
    ``wanted`` has arrived."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    # max_size=None: the first window carries plotly.min.js (several MB), as it does for browsers.
    with connect(url.replace("http://", "ws://"), open_timeout=timeout_s, max_size=None) as websocket:
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            try:
                raw = websocket.recv(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            for message in msgspec.msgpack.decode(raw):
                seen[message["type"] + ":" + str(message.get("name", message.get("id", "")))] = message
    return seen


def plotly_array(value: list | dict) -> np.ndarray:
    """A plotly JSON array: a plain list, or plotly >= 6's typed-array form {"dtype", "bdata" (base64)}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


@pytest.fixture
def viewer():
    with Viewer(random_image(24, 32, seed=3), port=free_port(), title="test-run", refresh_s=60.0) as live:
        yield live  # refresh_s=60: the test pushes by hand, so what browsers see is deterministic


def test_viewer_serves_the_viser_client_and_the_latest_state(viewer: Viewer) -> None:
    frames = [random_image(24, 32, seed=10 + i) for i in range(3)]
    for step, frame in enumerate(frames):
        viewer.update(step, time_s=0.5 * step, metric_name="psnr", metric=20.0 + step, image=frame)
    viewer.update(3, time_s=1.5, metric_name="psnr", metric=23.25, image=None)  # None keeps the last image
    viewer.push()

    with urllib.request.urlopen(viewer.url, timeout=5) as response:
        assert response.status == 200
        html = response.read().decode()
    assert "Viser client" in html and '<div id="root">' in html

    wanted = {"ImageMessage:/target", "ImageMessage:/reconstruction"}
    state = viser_state(viewer.url, wanted)
    assert wanted <= state.keys()
    # Only the newest frame reaches the browser (stale ones are dropped), pixel-exact after display resizing.
    shown = iio.imread(io.BytesIO(state["ImageMessage:/reconstruction"]["data"]))
    np.testing.assert_array_equal(shown, to_display(frames[-1]))

    gui_updates = [m["updates"] for k, m in state.items() if k.startswith("GuiUpdateMessage")]
    markdown = [u["markdown"] for u in gui_updates if "markdown" in u]
    assert any("**step** 3" in text and "23.250" in text for text in markdown)
    plot = json.loads(next(u["plotly_json_str"] for u in gui_updates if "plotly_json_str" in u))
    trace = plot["data"][0]
    assert plotly_array(trace["x"]).tolist() == [0.0, 0.5, 1.0, 1.5]
    assert plotly_array(trace["y"]).tolist() == [20.0, 21.0, 22.0, 23.25]


def test_push_sends_nothing_when_nothing_changed(viewer: Viewer) -> None:
    viewer.update(0, time_s=0.1, metric_name="psnr", metric=15.0, image=random_image(24, 32, seed=4))
    viewer.push()
    after_first, image_id = broadcast_count(viewer), queued_image_id(viewer)
    viewer.push()
    assert broadcast_count(viewer) == after_first
    viewer.update(1, time_s=0.2, metric_name="psnr", metric=16.0, image=None)
    viewer.push()
    assert broadcast_count(viewer) > after_first  # new text and plot...
    assert queued_image_id(viewer) == image_id  # ...but the unchanged image is not encoded and sent again


def test_update_rejects_a_float_image(viewer: Viewer) -> None:
    with pytest.raises(ValueError, match="uint8"):
        viewer.update(0, 0.0, "psnr", 10.0, np.zeros((24, 32, 3), np.float32))


def test_close_releases_the_port_and_a_taken_port_names_the_flag() -> None:
    port = free_port()
    with Viewer(None, port=port) as first:
        with pytest.raises(OSError, match="--viewer-port"):
            Viewer(None, port=port)
        first.update(0, 0.0, "psnr", 10.0, None)
    check_port_free("127.0.0.1", port)  # raises if the listening socket survived close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2)
    first.close()  # a second close is harmless


def test_background_thread_pushes_without_being_asked() -> None:
    with Viewer(None, port=free_port(), refresh_s=0.05) as live:
        live.update(7, 1.0, "psnr", 30.0, random_image(24, 32, seed=5))
        state = viser_state(live.url, {"ImageMessage:/reconstruction"})
    assert "ImageMessage:/reconstruction" in state
