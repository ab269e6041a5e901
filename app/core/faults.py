"""Fault injection for the container tests (`FAULT_INJECTION=true`, refused in production by the settings).

The composition root includes this router behind the admin scope (core knows no principals)."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/debug", tags=["debug"])


@router.post("/block-loop")
async def block_event_loop(seconds: Annotated[float, Query(gt=0, le=3600)]) -> dict[str, float]:
    """Block the event loop with a synchronous sleep: the wedged process the container probe must detect and kill."""
    logger.warning("fault injection: blocking the event loop", extra={"seconds": seconds})
    time.sleep(seconds)  # deliberately blocking: that is the fault being simulated
    return {"blockedSeconds": seconds}
