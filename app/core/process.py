"""What this process has reached on its way up and down, which the health endpoints and the server's drain report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ProcessState:
    """Start-up and shutdown progress of one app process."""

    started_at: float = field(default_factory=time.monotonic)
    index_ready: bool = False  # the instance list index exists (built from older records if needed)
    ready_once: bool = False  # Valkey answered and the worker started, at least once since the process began
    shutting_down: bool = False

    @property
    def uptime_seconds(self) -> float:
        """Seconds since the app was built."""
        return time.monotonic() - self.started_at
