"""What the lifecycle automations share: their Valkey key prefix and the wall clock their decisions read.

Each automation does its work once across replicas through `app.core.redis.Lease`.
"""
from __future__ import annotations

import time
from collections.abc import Callable

KEY_PREFIX = "ngpu:lifecycle:"

# Wall-clock time in Unix seconds. Records carry `time.time()` timestamps, so decisions compare against the same
# scale; tests pass a manual clock so that nothing waits for minutes.
WallClock = Callable[[], float]
SYSTEM_CLOCK: WallClock = time.time
