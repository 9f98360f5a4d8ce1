"""Fixtures shared by the fitter tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, restored afterwards (``--threads`` in a test may change it).

    Tiny fits gain nothing from threads, and on a busy shared CPU two threads stall each other (~30x slower).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
