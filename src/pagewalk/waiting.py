"""Waiting on a process without outliving it."""

from __future__ import annotations

import time

from .errors import ProcessGone
from .procfs import process_state

__all__ = ["sleep_watching"]


def sleep_watching(pid: int, seconds: float, *, poll: float = 0.1) -> None:
    """Sleep `seconds`, raising `ProcessGone` as soon as `pid` exits (or becomes a zombie)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            state = process_state(pid)[0]
        except ProcessGone:
            state = "X"
        if state in ("Z", "X"):
            raise ProcessGone(f"process {pid} exited during the measurement", pid)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(poll, remaining))
