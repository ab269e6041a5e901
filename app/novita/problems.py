"""What our client sees when a Novita call fails: each client error as one of the API's problems.

`app.core.errors` renders the problem; this module decides which one, so the rendering stays in one place and knows
nothing of Novita.
"""

from __future__ import annotations

import logging

from app.core.errors import AppError, Conflict, NotFound, RateLimited, UpstreamError, UpstreamRejected
from app.novita.errors import (
    NovitaAuthError,
    NovitaBadRequest,
    NovitaCircuitOpen,
    NovitaError,
    NovitaInsufficientResource,
    NovitaNotFound,
    NovitaRateLimited,
    NovitaStateConflict,
    NovitaTimeout,
)

logger = logging.getLogger(__name__)


def novita_error_to_app_error(error: NovitaError) -> AppError:
    """Translate a Novita client error into what our client should see, keeping Novita's reason (logged once)."""
    logger.warning("novita call failed", extra={"novitaError": error.kind, "reason": error.reason})
    detail = f"Novita: {error.message}"
    if isinstance(error, NovitaNotFound):
        return NotFound(detail, extra={"reason": error.reason} if error.reason else None)
    if isinstance(error, NovitaStateConflict):
        return Conflict(detail, extra={"reason": error.reason} if error.reason else None)
    if isinstance(error, NovitaRateLimited):
        return RateLimited(detail, retry_after=error.retry_after, reason=error.reason)
    if isinstance(error, NovitaBadRequest):
        return UpstreamRejected(detail, reason=error.reason)
    if isinstance(error, NovitaInsufficientResource | NovitaCircuitOpen):
        return UpstreamError(detail, status=503, reason=error.reason)
    if isinstance(error, NovitaTimeout):
        return UpstreamError(detail, status=504, reason=error.reason or "TIMEOUT")
    if isinstance(error, NovitaAuthError):
        # Our own Novita key was refused: the client cannot fix that, so it is a bad gateway, not a 401.
        return UpstreamError(detail, status=502, reason=error.reason or "FAILED_TO_AUTH")
    return UpstreamError(detail, status=502, reason=error.reason)
