"""The live viewer: `ns-train gauss-esgd --data <scene> --vis viewer` serves nerfstudio's viser client, and headless
Chromium renders it (more than a blank page)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nerfstudio")

pytestmark = [pytest.mark.nerfstudio, pytest.mark.slow]

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 240
"""nerfstudio's imports alone take a minute on two busy cores."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ns-train exited with {process.returncode} before serving the viewer")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1.0)
    raise AssertionError(f"the viewer did not open port {port} within {timeout} s")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")


def test_viewer_renders_in_headless_chromium(llff_scene, tmp_path: Path) -> None:
    browser = chromium()
    port = free_port()
    log = (tmp_path / "ns-train.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "ns-train"), "gauss-esgd", "--data", str(llff_scene.root), "--output-dir", str(tmp_path / "runs"),
         "--vis", "viewer", "--viewer.websocket-port", str(port), "--max-num-iterations", "100000",
         "--pipeline.datamanager.train-num-rays-per-batch", "16", "--pipeline.model.num-samples", "8",
         "--pipeline.model.num-importance-samples", "8",
         "--pipeline.model.field.layers", "2", "--pipeline.model.field.hidden", "16"],  # fmt: skip
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        wait_for_port(port, process, STARTUP_TIMEOUT_S)
        screenshot = tmp_path / "viewer.png"
        headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000"]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        subprocess.run([*headless, "--window-size=1024,768", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        dom = subprocess.run([*headless, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        assert process.poll() is None, "ns-train stopped while the page loaded"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    # The client connected to the training process over the websocket: its GUI came from the server.
    assert "Connected" in dom and "Pause Training" in dom, "the viser client did not connect to ns-train"
    assert screenshot.is_file(), "Chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    # A blank page is one color; the viser client draws a control panel, text and the 3D canvas.
    assert pixels.std() > 5.0, f"the viewer page looks blank (pixel std {pixels.std():.2f})"
    assert len(np.unique(pixels)) > 20
