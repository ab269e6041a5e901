"""What can be asked of an instance, and the job kind that carries out each request on the queue."""

from __future__ import annotations

from typing import Literal

Action = Literal["start", "stop", "restart", "delete"]

CREATE_JOB = "instance.create"
ACTION_JOBS: dict[Action, str] = {
    "start": "instance.start",
    "stop": "instance.stop",
    "restart": "instance.restart",
    "delete": "instance.delete",
}
READINESS_JOB = "instance.readiness"
