"""The machine facts a results file records, so its times can be read correctly (never the host name)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

MAX_LOAD = 2.0
"""A 1-minute load average above this means other work shared the CPU: timings are not evidence."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    """The facts a results file needs to be read correctly: hardware, software, and how busy the machine was."""
    facts = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    facts["quiet"] = facts["load_average_1min"] <= MAX_LOAD
    return facts
