"""Request and answer shapes of the compatibility routes, as the original service's clients send them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator

from app.core.schemas import ApiModel, StrictRequestModel
from app.fleet.schemas import InstanceState, WebhookUrl

# The original's name rule; names it accepted with `_` never existed here (ours are letters, digits and hyphens).
ORIGINAL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"


class ByNameAction(StrictRequestModel):
    """Body of the original's `POST /api/instances/{start,stop,delete}`: the instance by its name."""

    instance_name: str = Field(pattern=ORIGINAL_NAME_PATTERN, description="the name given at create")
    webhook_url: WebhookUrl | None = Field(
        default=None, description="this instance's events are also sent here from now on (signed; needs WEBHOOK_SECRET)"
    )


class ByNameStart(ByNameAction):
    """Start by name. The original's probe settings are accepted and not used: readiness here probes every exposed
    port with the service's READINESS_* settings."""

    health_check_config: dict[str, Any] | None = Field(default=None, description="accepted, not used")
    target_port: int | None = Field(default=None, ge=1, le=65535, description="accepted, not used")


class StopAllRequest(StrictRequestModel):
    """Body of `POST /api/instances/stop-all`. Without a body it is a dry run: it lists what it would stop."""

    dry_run: bool = Field(default=True, description="list what would be stopped, stop nothing (the default)")
    confirm: str | None = Field(
        default=None, validate_default=True, description="must be 'stop-all' when dryRun is false"
    )

    @field_validator("confirm")
    @classmethod
    def _confirmed(cls, confirm: str | None, info: Any) -> str | None:
        if info.data.get("dry_run") is False and confirm != "stop-all":
            raise ValueError("stopping every instance needs confirm: 'stop-all' (or dryRun: true to preview)")
        return confirm


class StopAllItem(ApiModel):
    """One instance stop-all stops (or would stop)."""

    instance_id: str
    name: str
    state: InstanceState
    job_id: str | None = Field(None, description="the stop job; null in a dry run or when the stop was refused")
    error: str | None = None


class StopAllResult(ApiModel):
    """What stop-all did: the running instances this service manages, each with its stop job."""

    dry_run: bool
    count: int = Field(description="instances stopped (or, in a dry run, that would be)")
    failed: int
    items: list[StopAllItem]


class LastUsedRequest(StrictRequestModel):
    """Body of the original's `PUT /api/instances/{id}/last-used`."""

    last_used_at: datetime | None = Field(default=None, description="ISO 8601; now when left out; not in the future")

    @field_validator("last_used_at", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):  # strict mode takes no strings for datetimes: parse ISO 8601 here
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("lastUsedAt must be an ISO 8601 date-time, e.g. 2026-12-01T10:00:00Z") from None
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        return value
