"""Typed errors of the Novita client, and the mapping from an HTTP answer to them.

Novita answers errors as ``{"code", "reason", "message", "metadata"}`` (reference §1.8), but any field may be
missing and a proxy in front of it may answer with an HTML page, so parsing never trusts the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar

import httpx

# Longest upstream message kept in an error: enough to read, short enough for a log line or a problem+json body.
_MAX_MESSAGE_CHARS = 300

# Only Novita's own error body says a resource does not exist: a reason ending in this suffix (RESOURCE_NOT_FOUND,
# TEMPLATE_NOT_FOUND...), sent as 400 or 404. A 404 without it is a wrong route or a proxy, not a deleted instance.
_NOT_FOUND_REASON_SUFFIX = "_NOT_FOUND"
# Reasons that mean our key was refused; Novita's console sees the first two as HTTP 400 (reference section 2).
_AUTH_REASONS = frozenset({"INVALID_USER_TOKEN", "BANNED_USER", "FAILED_TO_AUTH"})
_STATE_CONFLICT_REASONS = frozenset({"CONFLICT", "DEPENDENT_RESOURCE_STATE"})
# No capacity for this request here, or this place cannot take it (quota per GPU type, CUDA too old on the free
# nodes, a cluster or node out of service): placement tries the next offer rather than failing the create.
_INSUFFICIENT_RESOURCE_REASONS = frozenset(
    {
        "INSUFFICIENT_RESOURCE",
        "MIGRATE_INSUFFICIENT_RESOURCE",
        "CREATE_GPU_NUM_LIMIT",
        "CUDA_VERSION_INCOMPATIBLE",
        "CLUSTER_STATUS",
        "NODE_STATUS",
    }
)
# The only observed text of Novita's answer to start/stop on an instance in the wrong state (reference §1.6).
_STATE_CONFLICT_MESSAGE = "invalid state change"


class NovitaError(Exception):
    """Base of every error the Novita client raises; ``str()`` never contains the API key."""

    kind: ClassVar[str] = "error"  # short label for metrics and health output
    retry_in_client: ClassVar[bool] = False  # whether the client's own retry loop may repeat the call

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        parts = [str(self.status) if self.status is not None else None, self.reason]
        prefix = " ".join(part for part in parts if part)
        return f"{prefix}: {self.message}" if prefix else self.message


class NovitaAuthError(NovitaError):
    """Novita refused the API key: 401/403, or a refusal reason such as ``INVALID_USER_TOKEN`` or ``BANNED_USER``
    (sent as 400). Never retried: the same key would be refused again."""

    kind = "auth"


class NovitaBadRequest(NovitaError):
    """Novita rejected the request itself (a 4xx that no narrower class covers), e.g. a field error."""

    kind = "bad_request"


class NovitaNotFound(NovitaError):
    """The instance, template or job does not exist: Novita's error body names a ``*_NOT_FOUND`` reason."""

    kind = "not_found"


class NovitaStateConflict(NovitaError):
    """The action is not allowed in the resource's current state (400 "invalid state change" and similar)."""

    kind = "state_conflict"


class NovitaInsufficientResource(NovitaError):
    """No capacity for this product/cluster right now; placement should move on to the next candidate."""

    kind = "insufficient_resource"


class NovitaRateLimited(NovitaError):
    """Novita kept answering 429 after the client's retries; ``retry_after`` is its last hint in seconds."""

    kind = "rate_limited"
    retry_in_client = True

    def __init__(
        self, message: str, *, status: int | None = 429, reason: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after


class NovitaUnavailable(NovitaError):
    """Novita failed (5xx, network error) even after the client's retries.

    ``request_sent`` is False only when the request provably never reached Novita (connection refused or
    connect timeout): then even a create can be re-sent without looking for its result first.
    """

    kind = "unavailable"
    retry_in_client = True

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None, request_sent: bool = True
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.request_sent = request_sent


class NovitaTimeout(NovitaUnavailable):
    """A call timed out on every attempt."""

    kind = "timeout"


class NovitaCircuitOpen(NovitaUnavailable):
    """The circuit breaker is open: the client failed fast without calling Novita."""

    kind = "circuit_open"
    retry_in_client = False

    def __init__(self, message: str = "circuit breaker open: Novita recently failed repeatedly") -> None:
        super().__init__(message, reason="CIRCUIT_OPEN", request_sent=False)


class NovitaCreateOutcomeUnknown(NovitaUnavailable):
    """A create failed ambiguously and the lookup by name that should settle it failed too.

    The instance may or may not exist: the caller must look it up by name before creating again.
    """

    kind = "outcome_unknown"
    retry_in_client = False


def error_from_response(response: httpx.Response, redact: Callable[[str], str]) -> NovitaError:
    """Map a non-2xx Novita answer to the narrowest typed error; ``redact`` scrubs secrets from upstream text."""
    status = response.status_code
    reason, message = _parse_error_body(response)
    message = redact(message)
    reason = redact(reason) if reason else None
    if status == 429:
        return NovitaRateLimited(message, reason=reason, retry_after=parse_retry_after(response.headers))
    if status >= 500:
        return NovitaUnavailable(message, status=status, reason=reason)
    if status in (401, 403) or reason in _AUTH_REASONS:
        return NovitaAuthError(message, status=status, reason=reason)
    if reason is not None and reason.endswith(_NOT_FOUND_REASON_SUFFIX):
        return NovitaNotFound(message, status=status, reason=reason)
    if status == 404:
        # No Novita reason: a routing error at Novita or a proxy. Treated like a 5xx (retried, counted by the
        # breaker), so that no caller ever reads it as "this instance is gone".
        return NovitaUnavailable(message, status=status, reason=reason or "UNROUTED_404")
    if reason in _INSUFFICIENT_RESOURCE_REASONS:
        return NovitaInsufficientResource(message, status=status, reason=reason)
    if status == 409 or reason in _STATE_CONFLICT_REASONS or _STATE_CONFLICT_MESSAGE in message.lower():
        return NovitaStateConflict(message, status=status, reason=reason)
    return NovitaBadRequest(message, status=status, reason=reason)


def _parse_error_body(response: httpx.Response) -> tuple[str | None, str]:
    """Return ``(reason, message)`` from any body: JSON envelope, JSON of another shape, text or HTML."""
    text = response.text
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = body.get("reason")
        message = body.get("message") or body.get("msg") or body.get("error")
        return (
            str(reason) if reason else None,
            _shorten(str(message)) if message else f"HTTP {response.status_code} without a message",
        )
    if not text.strip():
        return None, f"HTTP {response.status_code} with an empty body"
    content_type = response.headers.get("content-type", "unknown type").split(";")[0]
    return None, f"HTTP {response.status_code} non-JSON answer ({content_type}): {_shorten(_strip_markup(text))}"


def _strip_markup(text: str) -> str:
    without_scripts = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.IGNORECASE | re.DOTALL)
    return re.sub(r"<[^>]+>", " ", without_scripts)


def _shorten(text: str) -> str:
    collapsed = " ".join(text.split())
    return collapsed if len(collapsed) <= _MAX_MESSAGE_CHARS else collapsed[: _MAX_MESSAGE_CHARS - 1] + "…"


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or invalid."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)
