"""The original service's routes that client scripts call (sontl/novita-ai-api), at its paths: thin, over
`CompatService`. Deliberate differences (README "Migrating from novita-ai-api"): actions answer 202 with a job
instead of blocking until Novita answered, stop-all is a dry run unless confirmed, and the API key is required."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response, status

from app.access.auth import OperateCaller, authenticate
from app.access.principal import Principal
from app.compat.schemas import ByNameAction, ByNameStart, LastUsedRequest, StopAllRequest, StopAllResult
from app.compat.service import CompatService
from app.core.deps import provide
from app.core.openapi import AUTHENTICATED_RESPONSES, accepted_response, problem
from app.fleet.actions import Action
from app.fleet.schemas import AcceptedResponse, HeartbeatView
from app.instances.service import InstanceService

router = APIRouter(
    prefix="/api/instances", tags=["compat"], dependencies=[Depends(authenticate)], responses=AUTHENTICATED_RESPONSES
)

_BY_NAME_RESPONSES = {
    **accepted_response("queued: follow the job at `Location`"),
    404: problem("no live instance with this name"),
    409: problem("several instances have this name, or its state does not allow the action"),
}


async def get_compat_service(instances: Annotated[InstanceService, Depends(provide(InstanceService))]) -> CompatService:
    """The compatibility layer over the running app's instance service."""
    return CompatService(instances)


Service = Annotated[CompatService, Depends(get_compat_service)]


async def _by_name(
    service: CompatService, body: ByNameAction, action: Action, response: Response, caller: Principal
) -> AcceptedResponse:
    accepted = await service.action_by_name(body.instance_name, action, body.webhook_url, caller)
    response.headers["Location"] = f"/api/jobs/{accepted.job_id}"
    return accepted


@router.post(
    "/start", status_code=status.HTTP_202_ACCEPTED, response_model=AcceptedResponse, responses=_BY_NAME_RESPONSES
)
async def start_by_name(
    body: ByNameStart, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue a start of the instance named `instanceName` (the original's `POST /api/instances/start`)."""
    return await _by_name(service, body, "start", response, caller)


@router.post(
    "/stop", status_code=status.HTTP_202_ACCEPTED, response_model=AcceptedResponse, responses=_BY_NAME_RESPONSES
)
async def stop_by_name(
    body: ByNameAction, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue a stop of the instance named `instanceName` (the original's `POST /api/instances/stop`)."""
    return await _by_name(service, body, "stop", response, caller)


@router.post(
    "/delete", status_code=status.HTTP_202_ACCEPTED, response_model=AcceptedResponse, responses=_BY_NAME_RESPONSES
)
async def delete_by_name(
    body: ByNameAction, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue the deletion of the instance named `instanceName` (the original's `POST /api/instances/delete`)."""
    return await _by_name(service, body, "delete", response, caller)


@router.post("/stop-all", response_model=StopAllResult)
async def stop_all(
    service: Service, caller: OperateCaller, body: Annotated[StopAllRequest | None, Body()] = None
) -> StopAllResult:
    """Stop every running instance of the key's team (every one this service manages, for an admin). A dry run
    (what would stop) unless the body says `{"dryRun": false, "confirm": "stop-all"}`; each stop is a job, listed
    with its instance."""
    return await service.stop_all(caller, dry_run=(body or StopAllRequest()).dry_run)


@router.put(
    "/{instance_id}/last-used",
    response_model=HeartbeatView,
    responses={404: problem("no instance with this id"), 409: problem("the instance is deleted")},
)
async def update_last_used(
    instance_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
    service: Service,
    caller: OperateCaller,
    body: Annotated[LastUsedRequest | None, Body()] = None,
) -> HeartbeatView:
    """The original's heartbeat: the instance was in use at `lastUsedAt` (now when left out); idle auto-stop
    counts from the latest one. Same as `POST /api/instances/{id}/heartbeat`, with a timestamp."""
    at = body.last_used_at.timestamp() if body is not None and body.last_used_at is not None else None
    return await service.last_used(instance_id, at, caller)
