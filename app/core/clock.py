"""The wall clock that decisions about instances read (timeouts, idle time, billing).

Records carry `time.time()` timestamps, so decisions compare against the same scale; tests pass a manual clock so
that nothing waits for minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Wall-clock time in Unix seconds.
WallClock = Callable[[], float]
SYSTEM_CLOCK: WallClock = time.time
