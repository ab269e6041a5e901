"""Loopback helpers shared by the test fixtures and the harnesses that start real processes (bench/, faults/)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, probe: Callable[[], bool], timeout_seconds: float, interval: float = 0.01) -> float:
    """Poll `probe` until true; return the monotonic time it first was. Raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout_seconds:g} s waiting for {what}")
